"""The synthetic source: a linear model with Gaussian noise and a controlled share of
outliers, bit-identical for the same seed and config. numpy only."""

from __future__ import annotations

import numpy as np

from huberfit.config import DataConfig


def make_synthetic(
    cfg: DataConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, list[float], float, np.ndarray]:
    """``y = X @ w + b + N(0, noise_std**2)``, then exactly ``round(fraction * n)`` outliers.

    Returns ``X (n, f)``, ``y (n,)``, the true ``w`` and ``b``, and the outlier mask. Drawn
    with numpy's PCG64 from ``seed``: the same seed and config give bit-identical data.
    """
    rng = np.random.default_rng([seed, 0])
    n, f = cfg.n_samples, cfg.n_features
    if cfg.true_weights is not None:
        w = np.asarray(cfg.true_weights, dtype=np.float64)
    else:  # round numbers are easier to recognise in a summary
        w = np.round(rng.uniform(-3.0, 3.0, size=f), 1)
    X = rng.standard_normal((n, f))
    y = X @ w + cfg.true_bias + cfg.noise_std * rng.standard_normal(n)
    n_out = int(round(cfg.outlier_fraction * n))
    mask = np.zeros(n, dtype=bool)
    if n_out:
        rows = rng.choice(n, size=n_out, replace=False)
        sign = rng.choice([-1.0, 1.0], size=n_out)
        size = cfg.outlier_scale * rng.uniform(0.5, 1.5, size=n_out)
        y[rows] += sign * size
        mask[rows] = True
    return X, y, [float(v) for v in w], float(cfg.true_bias), mask
