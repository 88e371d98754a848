"""Scaling: standardization statistics of the training rows, and the affine map they give.

One variance merge serves every path: ``Moments`` merges per-chunk counts, means and
summed squared deviations with Chan et al.'s parallel algorithm, so the in-memory load (one
chunk), the streamed scan (one chunk per record batch), ``huberfit eval`` and the scores
of several processes all compute a variance the same way, without the cancellation of
running sums of squares. Values whose moments overflow float64, or whose standardized
values overflow the training dtype, are located errors (no NumPy warnings). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from huberfit.errors import DataError


@dataclass
class Scaling:
    """Per-column affine maps: standardized = (original - mean) / scale.

    ``x_mean``/``x_scale`` have one entry per feature; a zero-variance feature keeps scale 1.
    Without standardization every mean is 0 and every scale 1.
    """

    x_mean: list[float]
    x_scale: list[float]
    y_mean: float
    y_scale: float

    def to_original(self, weight: list[float], bias: float) -> tuple[list[float], float]:
        """Map coefficients fitted on standardized data back to original units."""
        w = [self.y_scale * wi / si for wi, si in zip(weight, self.x_scale, strict=True)]
        b = (
            self.y_mean
            + self.y_scale * bias
            - sum(wi * mi for wi, mi in zip(w, self.x_mean, strict=True))
        )
        return w, b

    def apply_x(self, X: np.ndarray) -> np.ndarray:
        return (X - np.asarray(self.x_mean)) / np.asarray(self.x_scale)

    def shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column (the features, then the target): ``(value - shift) / scale``."""
        return np.array([*self.x_mean, self.y_mean]), np.array([*self.x_scale, self.y_scale])

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Standardize ``rows (n, f + 1)``: the features, then the target."""
        shift, scale = self.shift_scale()
        return (rows - shift) / scale

    def as_dict(self) -> dict[str, list[float] | float]:
        return {
            "x_mean": self.x_mean,
            "x_scale": self.x_scale,
            "y_mean": self.y_mean,
            "y_scale": self.y_scale,
        }


@dataclass
class Moments:
    """Count, mean and summed squared deviations (``m2``) per column, merged chunk by
    chunk with Chan et al.'s parallel algorithm."""

    n: int = 0
    mean: np.ndarray | float = 0.0
    m2: np.ndarray | float = 0.0

    @classmethod
    def of(cls, a: np.ndarray) -> Moments:
        """The moments of one chunk ``a (n,)`` or ``(n, columns)``."""
        if len(a) == 0:
            return cls()
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: see scaling_from
            mean = a.mean(axis=0)
            # numpy sums along axis 0 one row after another (error ~ n eps); one corrected
            # pass makes a constant column's mean exact, and its variance exactly 0
            mean = mean + (a - mean).mean(axis=0)
            return cls(len(a), mean, ((a - mean) ** 2).sum(axis=0))

    def add(self, a: np.ndarray) -> None:
        self.merge(Moments.of(a))

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        total = self.n + other.n
        with np.errstate(over="ignore", invalid="ignore"):
            delta = other.mean - self.mean
            self.mean = self.mean + delta * (other.n / total)
            self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / total)
        self.n = total

    @property
    def std(self) -> np.ndarray | float:
        """The population standard deviation (``ddof=0``, as ``np.std``)."""
        return np.sqrt(self.m2 / self.n)


_ROUNDING = 16 * np.finfo(np.float64).eps  # relative spread that rounding alone produces


def fit_scaling(
    X: np.ndarray, y: np.ndarray, standardize: bool, center: bool = True,
    names: list[str] | None = None, where: str = "",
) -> tuple[Scaling, list[tuple[int, str]]]:  # fmt: skip
    """Standardization statistics from the training rows ``X (n, f)``, ``y (n,)``;
    ``names`` (the features' and the target's) and ``where`` (the data) locate errors."""
    if not standardize:
        return scaling_from(None, X.shape[1], False, center)
    if center:
        return scaling_from((Moments.of(X), Moments.of(y)), X.shape[1], True, True, names, where)
    with np.errstate(over="ignore"):
        squares = (Moments.of(X * X), Moments.of(y * y))
    return scaling_from(squares, X.shape[1], True, False, names, where)


def scaling_from(
    moments: tuple[Moments, Moments] | None, n_features: int, standardize: bool, center: bool,
    names: list[str] | None = None, where: str = "",
) -> tuple[Scaling, list[tuple[int, str]]]:  # fmt: skip
    """The ``Scaling`` of the features' and the target's moments (of their squares when
    ``center`` is off: root-mean-square scaling introduces no intercept), and a note per
    zero-variance feature, which keeps scale 1. Moments that overflowed float64 (values
    near 1e308, or spreads beyond ~1e154) are an error naming the column (``names``:
    the features' and the target's)."""
    f = n_features
    if not standardize or moments is None:
        return Scaling([0.0] * f, [1.0] * f, 0.0, 1.0), []
    mx, my = moments
    with np.errstate(over="ignore", invalid="ignore"):
        if center:
            x_mean, x_std = np.asarray(mx.mean), np.asarray(mx.std)
            y_mean, y_std = float(my.mean), float(my.std)
        else:
            x_mean, x_std = np.zeros(f), np.sqrt(np.asarray(mx.mean))
            y_mean, y_std = 0.0, float(np.sqrt(my.mean))
    stats = np.array([*x_mean, y_mean, *x_std, y_std])
    if not np.isfinite(stats).all():
        bad = int(np.flatnonzero(~np.isfinite(stats))[0]) % (f + 1)
        name = names[bad] if names else ("the target" if bad == f else f"feature {bad + 1}")
        raise DataError(
            f"{where + ': ' if where else ''}column {name!r} is too large to standardize: its variance overflows float64; "
            "rescale the column (divide it by a power of ten)"
        )
    # A constant column's computed std is rounding, not 0 (0.1 repeated 1000 times: 1.4e-17):
    # dividing by it would blow the column up to +-1 and its coefficient to ~1e17. A spread
    # within a few ulps of the mean is no spread at all.
    varies = x_std > _ROUNDING * np.abs(x_mean)
    x_scale = np.where(varies, x_std, 1.0)
    notes = [
        (int(i), "has zero variance in the training rows; left unscaled, coefficient 0")
        for i in np.flatnonzero(~varies)
    ]
    scaling = Scaling(
        [float(v) for v in x_mean],
        [float(v) for v in x_scale],
        y_mean,
        y_std if y_std > _ROUNDING * abs(y_mean) else 1.0,
    )
    return scaling, notes


def check_range(
    low: np.ndarray, high: np.ndarray, scaling: Scaling, names: list[str], dtype: str,
    where: str = "", n_rows: int = 1,
) -> None:  # fmt: skip
    """The values of every column (``low``/``high``: per-column extremes of the features,
    then the target), as training sees them, must fit the training ``dtype`` (float32
    holds up to 3.4e38); a column left unscaled (``data.standardize: false``, or the
    target of your own loss) must keep the squares of its values summed over ``n_rows``
    finite, as every loss and gradient sums them. A located error with advice otherwise.
    """
    mean = np.array([*scaling.x_mean, scaling.y_mean])
    scale = np.array([*scaling.x_scale, scaling.y_scale])
    with np.errstate(over="ignore", invalid="ignore"):
        reach = np.maximum(np.abs(high - mean), np.abs(low - mean)) / scale
    limit = float(np.finfo(np.float32 if dtype == "float32" else np.float64).max)
    unscaled = (scale == 1) & (mean == 0)
    squares = np.sqrt(limit / max(n_rows, 1))
    over = np.flatnonzero(~(reach <= np.where(unscaled, squares, limit)))
    if not len(over):
        return
    i = int(over[0])
    at = f"{where + ': ' if where else ''}column {names[i]!r} reaches {float(reach[i]):.3g}"
    advice = ("data.standardize: true, " if unscaled[i] else "") + (
        "dtype: float64, " if dtype == "float32" else ""
    )  # fmt: skip
    advice = f"set {advice}or rescale the column" if advice else "rescale the column"
    if unscaled[i] and reach[i] <= limit:
        raise DataError(
            f"{at} unscaled: its squares summed over {n_rows:,} rows overflow {dtype}; {advice}"
        )
    scaled = "" if unscaled[i] else " once scaled"
    raise DataError(f"{at}{scaled}, beyond {dtype}'s range ({limit:.3g}); {advice}")
