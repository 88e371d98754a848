"""Reference optima: the exact minimizer of each loss's own objective, with a certificate.

Used to report how far a run got from its loss's optimum (the optimality gap), so that a
comparison of losses is not a comparison of how well one learning rate suits each. In
float64 numpy and SciPy, independent of torch and of the training code. Each solver
returns an ``Optimum`` whose ``certificate`` says why it is one; a solver that cannot
certify its answer raises instead of returning it.

- MSE: least squares (``numpy.linalg.lstsq``); certified by the gradient ``A.T r / n``
  being at rounding level (see ``_gradient_certificate``).
- Huber: Newton's method on standardized columns, with a backtracking line search; on a
  fixed set of rows in the quadratic zone the objective is a quadratic, whose Newton step
  is exact, so it ends when that set stops changing. Certified like MSE.
- Quantile (pinball) and L1: the linear program ``min (tau 1.u + (1 - tau) 1.v) / n`` with
  ``A beta + u - v = y``, solved by HiGHS (``scipy.optimize.linprog``, as scikit-learn's
  ``QuantileRegressor`` does; here through its dual, see ``_highs``), then made exact: an
  optimal vertex passes through ``p`` rows, so ``beta`` is solved from them in float64. Certified by LP duality: the dual point of
  that basis, ``z`` with ``A.T z = 0``, must lie in the box ``[-(1 - tau)/n, tau/n]``; then
  ``y.z`` equals the objective (up to rounding) and bounds every other ``beta``'s from below.

Objectives are means over rows, in the target's own units: MSE ``mean(r**2)``, Huber
``mean(huber_delta(r))``, L1 ``mean(|r|)``, quantile ``mean(r * (tau - [r < 0]))``.
``losses.LOSSES`` declares which objective and solver belong to which loss; this room does
not know the losses by name. numpy and SciPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS = np.finfo(np.float64).eps


class NotCertified(RuntimeError):
    """A reference solver could not certify its answer (e.g. rank-deficient columns)."""


@dataclass
class Optimum:
    """An exact minimizer ``beta`` (intercept last when the design has one), its objective,
    and the certificate that it is one."""

    beta: np.ndarray
    objective: float
    certificate: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- objectives


def mse_objective(r: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> float:
    """Mean of ``r**2`` (float64)."""
    return float(np.mean(r * r))


def l1_objective(r: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> float:
    """Mean of ``|r|`` (float64)."""
    return float(np.mean(np.abs(r)))


def huber_objective(r: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> float:
    """Mean Huber loss of ``r`` with threshold ``delta`` (float64)."""
    a = np.abs(r)
    return float(np.mean(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))


def quantile_objective(r: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> float:
    """Mean pinball loss ``r * (tau - [r < 0])`` of ``r = y - pred`` (float64)."""
    return float(np.mean(r * (quantile - (r < 0))))


def robust_scale(X: np.ndarray, y: np.ndarray, bias: bool = True) -> float:
    """The residuals' robust scale: the normalised MAD about 0 of a least-squares fit,
    ``median(|r|) / 0.6745`` (statsmodels ``RLM``'s ``scale.mad(resid, center=0)``)."""
    A = design(X, bias)
    r = np.asarray(y, dtype=np.float64) - A @ np.linalg.lstsq(A, y, rcond=None)[0]
    return float(np.median(np.abs(r)) / 0.6744897501960817)  # norm.ppf(3/4)


HUBER_T = 1.345  # HuberT's tuning constant: 95% efficiency at the normal


def design(X: np.ndarray, bias: bool) -> np.ndarray:
    """``X`` with a column of ones appended when the model has an intercept."""
    X = np.asarray(X, dtype=np.float64)
    return np.c_[X, np.ones(len(X))] if bias else X


# ----------------------------------------------------------------------------- smooth losses


def solve_mse(A: np.ndarray, y: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> Optimum:
    """Least squares: the minimizer of ``mean((y - A @ beta)**2)``."""
    y = np.asarray(y, dtype=np.float64)
    beta = _refine(A, y, np.linalg.lstsq(A, y, rcond=None)[0], np.ones(len(y), bool), 0.0)
    r = y - A @ beta
    return Optimum(beta, mse_objective(r), _gradient_certificate(A, y, beta, r, np.ones_like(r)))


def solve_huber(A: np.ndarray, y: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> Optimum:
    """The minimizer of the mean Huber loss: Newton on standardized columns, certified."""
    y = np.asarray(y, dtype=np.float64)
    S, to_original = _standardized(A)
    start = np.linalg.lstsq(S, y, rcond=None)[0]
    quad = np.abs(y - S @ start) <= delta
    if np.linalg.matrix_rank(S[quad]) < S.shape[1]:
        # too few rows within delta of the least-squares fit for Newton's quadratic to
        # have a minimum: start from the L1 fit, which passes through p rows (r = 0)
        start = _highs(S, y, 0.5)
    beta = to_original(_huber_newton(S, y, delta, start))
    quad = np.abs(y - A @ beta) <= delta
    beta = _refine(A, y, beta, quad, delta)  # the same quadratic, in the original columns
    r = y - A @ beta
    psi = np.clip(r, -delta, delta)
    cert = _gradient_certificate(A, y, beta, psi, (np.abs(r) <= delta).astype(float))
    return Optimum(beta, huber_objective(r, delta), cert)


def _standardized(A: np.ndarray):
    """Columns scaled to unit spread (centred too when there is a column of ones), and
    the map of coefficients back to ``A``'s columns. Newton's linear systems on raw
    columns of very different sizes lose digits; on these they do not."""
    ones = np.flatnonzero(np.all(A == 1.0, axis=0))
    mean = A.mean(axis=0) if len(ones) else np.zeros(A.shape[1])
    mean[ones] = 0.0
    scale = np.sqrt(((A - mean) ** 2).mean(axis=0))
    scale[ones] = 1.0
    scale[scale == 0] = 1.0

    def to_original(beta_s: np.ndarray) -> np.ndarray:
        beta = beta_s / scale
        if len(ones):
            beta[ones[0]] -= mean @ beta
        return beta

    return (A - mean) / scale, to_original


def _huber_newton(A: np.ndarray, y: np.ndarray, delta: float, beta: np.ndarray) -> np.ndarray:
    f = lambda b: huber_objective(y - A @ b, delta)  # noqa: E731
    for _ in range(500):
        r = y - A @ beta
        quad = np.abs(r) <= delta
        grad = -A.T @ np.clip(r, -delta, delta)
        H = A[quad].T @ A[quad]
        # 1. Newton direction on the current quadratic zone (least squares if rank-poor)
        step = np.linalg.lstsq(H, -grad, rcond=None)[0]
        # 2. backtrack until the objective does not increase
        t, f0 = 1.0, f(beta)
        while f(beta + t * step) > f0 and t > 1e-12:
            t *= 0.5
        new = beta + t * step
        if t == 1.0 and np.array_equal(np.abs(y - A @ new) <= delta, quad):
            return new  # same zone after a full step: the quadratic's exact minimizer
        if np.array_equal(new, beta):
            return new
        beta = new
    return beta


def _refine(A, y, beta: np.ndarray, quad: np.ndarray, delta: float) -> np.ndarray:
    """Iterative refinement on a fixed quadratic zone (all rows for MSE): Newton steps,
    exact for that quadratic, while the gradient keeps shrinking; each recovers digits
    that the first solve lost to the columns' conditioning."""
    H = A[quad].T @ A[quad]

    def psi(b: np.ndarray) -> np.ndarray:
        r = y - A @ b
        return np.where(quad, r, np.clip(r, -delta, delta))

    grad = A.T @ psi(beta)
    for _ in range(3):
        new = beta + np.linalg.lstsq(H, grad, rcond=None)[0]
        new_grad = A.T @ psi(new)
        if not np.abs(new_grad).max(initial=0.0) < np.abs(grad).max(initial=0.0):
            break
        beta, grad = new, new_grad
    return beta


def _gradient_certificate(A, y, beta, psi: np.ndarray, curved: np.ndarray) -> dict[str, Any]:
    """The gradient ``-A.T psi / n`` against what rounding alone can leave in it.

    Computing ``r = y - A beta`` errs by up to ``(p + 1) eps (|y| + |A| |beta|)`` per row,
    which moves ``psi`` as much where the loss curves (``curved``); the sum over rows adds
    about ``sqrt(n) eps sum |A psi|``. A gradient within 8 times that bound is at rounding
    level: no float64 point is measurably better. Raises ``NotCertified`` otherwise.
    """
    n, p = A.shape
    absA = np.abs(A)
    row_err = (p + 1) * EPS * (np.abs(y) + absA @ np.abs(beta)) * curved
    bound = 8 * (absA.T @ row_err + np.sqrt(n) * EPS * (absA.T @ np.abs(psi))) / n
    grad = A.T @ psi / n
    ratio = float(np.max(np.abs(grad) / np.maximum(bound, np.finfo(float).tiny)))
    cert = {"kind": "gradient at rounding level", "max_gradient": float(np.abs(grad).max()),
            "ratio_to_rounding_bound": ratio}  # fmt: skip
    if not ratio <= 1.0:
        raise NotCertified(
            f"the reference optimum's gradient is {ratio:.3g} times its rounding bound"
        )
    return cert


# ----------------------------------------------------------------------------- linear programs


def solve_quantile(
    A: np.ndarray, y: np.ndarray, delta: float = 1.0, quantile: float = 0.5
) -> Optimum:
    """The minimizer of the mean pinball loss at ``quantile`` (HiGHS, made exact, certified
    by LP duality)."""
    y = np.asarray(y, dtype=np.float64)
    S, to_original = _standardized(A)
    beta = to_original(_highs(S, y, quantile))
    beta, cert = _exact_vertex(A, y, beta, quantile)
    return Optimum(beta, quantile_objective(y - A @ beta, quantile=quantile), cert)


def solve_l1(A: np.ndarray, y: np.ndarray, delta: float = 1.0, quantile: float = 0.5) -> Optimum:
    """A minimizer of the mean absolute residual: twice the median's pinball loss."""
    opt = solve_quantile(A, y, quantile=0.5)
    opt.objective = l1_objective(np.asarray(y, dtype=np.float64) - A @ opt.beta)
    cert = dict(opt.certificate)
    cert["primal"], cert["dual"] = 2 * cert["primal"], 2 * cert["dual"]
    opt.certificate = cert
    return opt


def _highs(A: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """HiGHS on the LP's dual, ``max y.w`` with ``A.T w = 0`` and ``w`` in
    ``[tau - 1, tau]``: ``p`` constraints instead of ``n``. ``beta`` is its constraints'
    multipliers. Interior point with crossover to a vertex: 200k rows x 6 columns took
    2.5 s here against 34 s for the dual simplex (2-core Xeon)."""
    from scipy.optimize import linprog

    res = linprog(-y, A_eq=A.T, b_eq=np.zeros(A.shape[1]), bounds=(tau - 1, tau),
                  method="highs-ipm")  # fmt: skip
    if res.status != 0:
        raise NotCertified(f"HiGHS did not solve the linear program: {res.message}")
    return -np.asarray(res.eqlin.marginals)


def _exact_vertex(A, y, beta: np.ndarray, tau: float) -> tuple[np.ndarray, dict[str, Any]]:
    """1. Solve ``beta`` exactly from the rows HiGHS's vertex interpolates (``p`` of them,
    more when the vertex is degenerate, as with repeated rows). 2. Find the dual point of
    that vertex: ``z`` is ``tau/n`` on rows above the fit and ``-(1 - tau)/n`` below
    (complementary slackness); on the interpolated rows, the point of the box
    ``[-(1 - tau)/n, tau/n]`` that makes ``A.T z`` smallest (bounded least squares). The
    vertex is optimal iff that reaches ``A.T z = 0``; then ``y.z`` equals its objective."""
    from scipy.optimize import lsq_linear

    n, p = A.shape
    size = np.abs(y) + np.abs(A) @ np.abs(beta)
    on = np.abs(y - A @ beta) <= 1e-7 * np.maximum(size, 1e-300)
    if on.sum() < p:
        on[np.argsort(np.abs(y - A @ beta), kind="stable")[:p]] = True
    exact = np.linalg.lstsq(A[on], y[on], rcond=None)[0]
    for _ in range(2):  # iterative refinement: the solve loses digits to conditioning
        exact = exact + np.linalg.lstsq(A[on], y[on] - A[on] @ exact, rcond=None)[0]
    r = y - A @ exact
    r[on] = 0.0  # interpolated, up to the rounding of that solve
    lo, hi = -(1 - tau) / n, tau / n
    z = np.where(r > 0, hi, lo)
    # unknowns w = n z, in [-(1 - tau), tau]: A_on.T w = -n A_off.T z_off
    fit = lsq_linear(A[on].T, -(A[~on].T @ z[~on]) * n, bounds=(lo * n, hi * n),
                     method="bvls", tol=1e-15)  # fmt: skip
    z[on] = fit.x / n
    # infeasibility of A.T z = 0, relative to the size of its terms
    terms = np.abs(A).T @ np.abs(z)
    infeasible = float(np.max(np.abs(A.T @ z) / np.maximum(terms, 1e-300)))
    primal = quantile_objective(r, quantile=tau)
    cert = {"kind": "LP duality (dual point of the optimal vertex)", "primal": primal,
            "dual": float(y @ z), "dual_infeasibility": infeasible,
            "rows_on_the_fit": int(on.sum())}  # fmt: skip
    if not infeasible <= 1e-9:
        raise NotCertified(
            f"the LP vertex is not certified optimal (no dual point in the box; A.T z is "
            f"{infeasible:.3g} of its terms)"
        )
    return exact, cert
