"""Reference solvers: the exact minimizer of each loss's own objective, in float64 numpy.

Used to report how far training got from the optimum (the optimality gap), so a comparison
of losses is not just a comparison of how well one learning rate suits each. Independent of
torch and of the training code:

- MSE: least squares (``numpy.linalg.lstsq``).
- Huber: Newton's method on the piecewise-quadratic objective with a backtracking line
  search; it ends when the set of rows in the quadratic zone stops changing, where the
  Newton step is exact.
- L1: iteratively reweighted least squares, then polished to a vertex: the L1 optimum
  passes exactly through ``n_params`` rows, so the rows with the smallest residuals are
  solved exactly and the better of the two points is kept.

Objectives are means over rows, in the target's own units: MSE ``mean(r**2)``, Huber
``mean(huber_delta(r))``, L1 ``mean(|r|)``. ``losses.LOSSES`` declares which objective and
solver belong to which loss; this room does not know the losses by name. numpy only.
"""

from __future__ import annotations

import numpy as np


def mse_objective(r: np.ndarray, delta: float = 1.0) -> float:
    """Mean of ``r**2`` (float64)."""
    return float(np.mean(r * r))


def l1_objective(r: np.ndarray, delta: float = 1.0) -> float:
    """Mean of ``|r|`` (float64)."""
    return float(np.mean(np.abs(r)))


def huber_objective(r: np.ndarray, delta: float = 1.0) -> float:
    """Mean Huber loss of ``r`` with threshold ``delta`` (float64)."""
    a = np.abs(r)
    return float(np.mean(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))


def design(X: np.ndarray, bias: bool) -> np.ndarray:
    """``X`` with a column of ones appended when the model has an intercept."""
    return np.c_[X, np.ones(len(X))] if bias else np.asarray(X, dtype=np.float64)


def solve_mse(A: np.ndarray, y: np.ndarray, delta: float = 1.0) -> np.ndarray:
    """Least squares: the minimizer of ``mean((y - A @ beta)**2)``."""
    return _lstsq(A, np.asarray(y, dtype=np.float64))


def solve_huber(A: np.ndarray, y: np.ndarray, delta: float = 1.0) -> np.ndarray:
    """The minimizer of the mean Huber loss, by Newton from the least-squares start."""
    y = np.asarray(y, dtype=np.float64)
    return _huber_newton(A, y, delta, _lstsq(A, y))


def solve_l1(A: np.ndarray, y: np.ndarray, delta: float = 1.0) -> np.ndarray:
    """A minimizer of the mean absolute residual (IRLS, polished to a vertex)."""
    y = np.asarray(y, dtype=np.float64)
    return _l1_irls(A, y, _lstsq(A, y))


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(A, y, rcond=None)[0]


def _huber_newton(A: np.ndarray, y: np.ndarray, delta: float, beta: np.ndarray) -> np.ndarray:
    f = lambda b: huber_objective(y - A @ b, delta)  # noqa: E731
    for _ in range(200):
        r = y - A @ beta
        quad = np.abs(r) <= delta
        grad = -A.T @ np.clip(r, -delta, delta)
        H = A[quad].T @ A[quad]
        # 1. Newton direction on the current quadratic zone (pseudo-inverse if rank-poor)
        step = np.linalg.lstsq(H + 1e-12 * np.trace(H) * np.eye(len(beta)), -grad, rcond=None)[0]
        # 2. backtrack until the objective does not increase
        t, f0 = 1.0, f(beta)
        while f(beta + t * step) > f0 and t > 1e-12:
            t *= 0.5
        new = beta + t * step
        if np.array_equal(np.abs(y - A @ new) <= delta, quad) and t == 1.0:
            return new  # same zone after a full step: the quadratic's exact minimizer
        if np.allclose(new, beta, rtol=1e-15, atol=0):
            return new
        beta = new
    return beta


def _l1_irls(A: np.ndarray, y: np.ndarray, beta: np.ndarray) -> np.ndarray:
    scale = max(float(np.abs(y).max()), 1.0)
    for _ in range(500):
        r = y - A @ beta
        w = 1.0 / np.maximum(np.abs(r), 1e-10 * scale)
        sw = np.sqrt(w)
        new = _lstsq(A * sw[:, None], y * sw)
        if np.allclose(new, beta, rtol=1e-13, atol=1e-15):
            beta = new
            break
        beta = new
    # polish to a vertex: an L1 optimum interpolates n_params rows exactly
    best, best_f = beta, l1_objective(y - A @ beta)
    order = np.argsort(np.abs(y - A @ beta))
    p = A.shape[1]
    for extra in range(0, min(4, len(y) - p) + 1):
        rows = order[: p + extra]
        try:
            cand = (
                np.linalg.solve(A[rows[:p]], y[rows[:p]])
                if extra == 0
                else _lstsq(A[rows], y[rows])
            )
        except np.linalg.LinAlgError:
            continue
        fc = l1_objective(y - A @ cand)
        if fc < best_f:
            best, best_f = cand, fc
    return best
