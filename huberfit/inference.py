"""Inference: standard errors and 95% intervals of fitted coefficients, in original units.

The same estimators as the packages people check against, so the numbers can be compared
one to one (the tests do, to 1e-6):

- MSE: classical OLS standard errors (statsmodels ``OLS(...).fit().bse``, t intervals
  with ``n - p`` degrees of freedom) and, beside them, the heteroskedasticity-robust HC3
  (``HC3_se``).
- Huber: Huber's H1 covariance (statsmodels ``RLM``'s default, with the ``HuberT`` norm
  at the scale held fixed): ``k^2 sum(psi^2)/(n - p) / mean(psi')^2 (A'A)^-1`` with
  ``k = 1 + p/n var(psi')/mean(psi')^2``. Written with ``psi`` of the Huber loss at
  ``delta`` it needs no scale: ``s psi_t(r/s) = psi_delta(r)`` when ``delta = t s``.
  Normal intervals.
- Quantile and L1 (the median): the sandwich of statsmodels ``QuantReg``'s default
  (``vcov="robust"``): the density of the residuals at 0 from an Epanechnikov kernel with
  the Hall-Sheather bandwidth. Chosen over a bootstrap because it is deterministic, costs
  one pass over the rows instead of hundreds of LP solves, and has a reference to check
  against. Normal intervals.

numpy and SciPy only; must not import torch or other rooms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
EPS = np.finfo(np.float64).eps


def standard_errors(
    loss: str, A: np.ndarray, y: np.ndarray, beta: np.ndarray, names: list[str],
    delta: float = 1.0, quantile: float = 0.5, bias: bool = True,
) -> dict[str, Any] | None:  # fmt: skip
    """``{"standard_errors": {name: se}, "intervals95": {name: [lo, hi]},
    "standard_error_method": ...}``
    for the coefficients ``beta`` (intercept last, named ``intercept``) of ``loss`` fitted
    on the design ``A (n, p)`` and targets ``y (n,)``; ``standard_errors_hc3`` too for MSE.
    None for fewer rows than parameters or a singular design; ``standard_errors: None``
    with a ``standard_error_note`` saying why when the estimator is not defined."""
    n, p = A.shape
    if n <= p:
        return None
    if np.linalg.matrix_rank(A) < p:  # inv(A'A) would be rounding, its diagonal negative
        return {"standard_errors": None, "intervals95": None, "standard_error_note":
                "not defined: the design is singular (a constant feature, or one that is a "
                "combination of others)"}  # fmt: skip
    try:
        xtx_inv = np.linalg.inv(A.T @ A)
    except np.linalg.LinAlgError:
        return None
    r = y - A @ beta
    labels = [*names, "intercept"] if bias else list(names)
    extra: dict[str, Any] = {}
    if loss == "mse":
        method, se, crit = _ols(A, r, xtx_inv, extra, labels)
    elif loss == "huber":
        method, se, crit = _huber_h1(r, xtx_inv, delta, bias)
    elif loss in ("quantile", "l1"):
        # an exact LP vertex passes through p rows; their residuals are rounding (+-1e-14),
        # whose signs would pick each row's weight at random: they are 0, counted below
        # the fit as statsmodels' `e > 0` counts a zero
        on_fit = np.abs(r) <= 64 * EPS * (np.abs(y) + np.abs(A) @ np.abs(beta))
        r = np.where(on_fit, 0.0, r)
        tau = quantile if loss == "quantile" else 0.5
        method, se, crit = _quantile_robust(A, y, r, xtx_inv, tau)
    else:
        return None
    if se is None or not np.all(np.isfinite(se)):
        return {"standard_errors": None, "intervals95": None, "standard_error_note": method}
    return {
        "standard_error_method": method,
        "standard_errors": _named(labels, se),
        **extra,
        "intervals95": {
            k: [float(b - crit * s), float(b + crit * s)]
            for k, b, s in zip(labels, beta, se, strict=True)
        },  # fmt: skip
    }


def _named(labels: list[str], se: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(labels, se, strict=True)}


def _ols(A, r, xtx_inv, extra: dict, labels: list[str]):
    from scipy.special import stdtrit  # the t quantile; scipy.stats costs 0.5 s to import

    n, p = A.shape
    se = np.sqrt(np.diag(xtx_inv) * (float(r @ r) / (n - p)))
    # HC3: each squared residual inflated by its leverage h_i: (r_i / (1 - h_i))^2
    h = np.einsum("ij,jk,ik->i", A, xtx_inv, A)
    meat = (A * ((r / (1 - h)) ** 2)[:, None]).T @ A
    extra["standard_errors_hc3"] = _named(labels, np.sqrt(np.diag(xtx_inv @ meat @ xtx_inv)))
    method = "OLS classical (t intervals, n - p degrees of freedom); HC3 beside it"
    return method, se, float(stdtrit(n - p, 0.975))


def _huber_h1(r, xtx_inv, delta: float, bias: bool):
    n, p = len(r), xtx_inv.shape[0]
    psi = np.clip(r, -delta, delta)
    dpsi = (np.abs(r) <= delta).astype(float)
    m = dpsi.mean()
    if m == 0:
        return "not defined: no row within delta of the fit", None, Z95
    k = 1 + (p - bias + 1) / n * dpsi.var() / m**2  # statsmodels: (df_model + 1) / nobs
    cov = k**2 * (psi @ psi / (n - p)) / m**2 * xtx_inv
    return "Huber H1 (statsmodels RLM's default; normal intervals)", np.sqrt(np.diag(cov)), Z95


def _quantile_robust(A, y, r, xtx_inv, tau: float):
    from statistics import NormalDist

    norm = NormalDist()
    n = len(y)
    iqr = np.percentile(r, 75) - np.percentile(r, 25)
    z = norm.inv_cdf(tau)
    shape = 1.5 * norm.pdf(z) ** 2 / (2 * z**2 + 1)
    hs = n ** (-1 / 3) * norm.inv_cdf(0.975) ** (2 / 3) * shape ** (1 / 3)  # Hall-Sheather
    if not 0 < tau - hs < tau + hs < 1:  # too few rows for that bandwidth (statsmodels: nan)
        return f"not defined: {n} rows are too few for the bandwidth at tau {tau:g}", None, Z95
    h = min(np.std(y), iqr / 1.34) * (norm.inv_cdf(tau + hs) - norm.inv_cdf(tau - hs))
    u = r / h
    density = float(np.sum(0.75 * (1 - u**2) * (np.abs(u) <= 1))) / (n * h)
    if not density > 0:
        return "not defined: no residual density at 0 (the kernel saw no rows)", None, Z95
    d = np.where(r > 0, (tau / density) ** 2, ((1 - tau) / density) ** 2)
    cov = xtx_inv @ ((A * d[:, None]).T @ A) @ xtx_inv
    method = ("quantile sandwich, Epanechnikov kernel, Hall-Sheather bandwidth "
              "(statsmodels QuantReg's default; normal intervals)")  # fmt: skip
    return method, np.sqrt(np.diag(cov)), Z95
