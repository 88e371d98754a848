"""Exact finish for losses made of linear pieces (L1, quantile): simplex pivots from a vertex.

L-BFGS on a smoothed kink lands near the optimum, and the rows nearest its fit give a
vertex (the fit through ``p`` of them). This room walks from that vertex to an optimal one
by the simplex method on the pinball loss ``sum(rho_tau(y - A beta))`` (Barrodale and
Roberts' algorithm for least absolute deviations, generalised to tau):

1. At a vertex with basis ``S`` (``A_S beta = y_S``), the dual point ``z_S`` solves
   ``A_S.T z_S = -A_N.T psi_N`` with ``psi = tau`` above the fit and ``tau - 1`` below.
   Moving ``beta`` so that basis row ``j`` leaves the fit upwards changes the loss at rate
   ``tau - z_j``, downwards at ``1 - tau + z_j``: the vertex is optimal iff every ``z_j``
   lies in ``[tau - 1, tau]`` (the LP's dual box).
2. Otherwise move along the steepest of those edges (by Bland's rule once a step of 0 has
   been taken, so that degenerate vertices cannot make it cycle). The loss along it is convex and
   piecewise linear, its slope rising by ``|a_i.d|`` as each row ``i`` is crossed: stop at
   the row where the slope turns non-negative; it enters the basis and ``j`` leaves.

All in float64 on the CPU (MPS has no float64). torch only; must not import other rooms.
"""

from __future__ import annotations

import torch

EPS = torch.finfo(torch.float64).eps


def simplex_finish(
    A: torch.Tensor, y: torch.Tensor, tau: float, basis: torch.Tensor, max_pivots: int = 1000
) -> tuple[torch.Tensor, int, bool]:
    """From the vertex through rows ``basis`` (``p`` linearly independent rows of
    ``A (n, p)``), pivot to an optimal vertex of the pinball loss at ``tau``.

    Returns ``(beta (p,), pivots taken, optimal)``; ``optimal`` is False if
    ``max_pivots`` ran out or a basis became singular (then ``beta`` is the last vertex).
    """
    n, p = A.shape
    basis, bland = basis.clone(), False
    try:
        beta = torch.linalg.solve(A[basis], y[basis])
    except RuntimeError:
        return torch.linalg.lstsq(A[basis], y[basis].reshape(-1, 1)).solution.reshape(-1), 0, False
    for pivot in range(max_pivots + 1):
        r = y - A @ beta
        # rows on the fit besides the basis (ties, repeated rows) have residual 0, not
        # rounding noise
        r = torch.where(r.abs() <= 64 * EPS * (y.abs() + A.abs() @ beta.abs()), 0.0, r)
        in_basis = torch.zeros(n, dtype=torch.bool)
        in_basis[basis] = True
        zero = (r == 0) & ~in_basis
        psi = torch.where(r > 0, tau, tau - 1.0).to(A.dtype)
        psi[in_basis | zero] = 0.0
        try:
            inv = torch.linalg.inv(A[basis])  # column j: the edge that lifts row j's residual
        except RuntimeError:  # a numerically singular basis
            return beta, pivot, False
        z = -(inv.T @ (A.T @ psi))
        # 1. each edge's rate of change of the loss, row j leaving the fit upwards or
        # downwards: tau - z_j or 1 - tau + z_j, plus each other row on the fit, which the
        # edge puts above it (adding tau |a.d|) or below it (adding (1 - tau) |a.d|)
        ad_zero = A[zero] @ inv  # (zeros, p): a_i . d of each "down" edge, d = inv e_j
        up = tau - z + (tau * ad_zero.clamp(min=0) + (1 - tau) * (-ad_zero).clamp(min=0)).sum(0)
        down = (
            1 - tau + z + (tau * (-ad_zero).clamp(min=0) + (1 - tau) * ad_zero.clamp(min=0)).sum(0)
        )
        rate, sign = torch.minimum(up, down), torch.where(up <= down, 1.0, -1.0)
        falling = torch.nonzero(rate < -1e-9).reshape(-1)  # beyond rounding
        if len(falling) == 0:
            optimal = int(zero.sum()) == 0 or _degenerate_optimal(A, r, tau, zero | in_basis)
            return beta, pivot, optimal
        if pivot == max_pivots:
            return beta, pivot, False
        # the steepest edge; Bland's rule (the lowest row index) after a step of 0
        j = int(falling[torch.argmin(basis[falling])]) if bland else int(torch.argmin(rate))
        # 2. along it: the loss is convex and piecewise linear; its slope rises by |a_i.d|
        # as each row off the fit is crossed: stop where it turns non-negative
        d = -float(sign[j]) * inv[:, j]
        ad = A @ d
        t = r / ad  # where each row is crossed
        ok = ~in_basis & ~zero & (ad != 0) & (t > 0)
        if not bool(ok.any()):
            return beta, pivot, False  # unbounded: cannot happen for a bounded-below loss
        cand = torch.nonzero(ok).reshape(-1)
        order = cand[torch.argsort(t[cand], stable=True)]
        slope = float(rate[j]) + torch.cumsum(ad[order].abs(), 0)
        turn = torch.nonzero(slope >= 0).reshape(-1)
        k = int(order[int(turn[0])] if len(turn) else order[-1])
        bland = bland or float(t[k]) == 0.0
        beta = beta + t[k] * d
        basis[j] = k
    return beta, max_pivots, False


def _degenerate_optimal(A: torch.Tensor, r: torch.Tensor, tau: float, on_fit: torch.Tensor) -> bool:
    """A degenerate vertex (more than ``p`` rows on the fit) is optimal iff some dual point
    gives every row on the fit a value in ``[tau - 1, tau]`` with ``A.T z = 0``: bounded
    least squares over those rows (SciPy's BVLS), instead of one basis's ``z``, which may
    leave the box at an optimal vertex and send the pivots round in a cycle."""
    from scipy.optimize import lsq_linear

    off = ~on_fit
    psi = torch.where(r[off] > 0, tau, tau - 1.0).to(A.dtype)
    target = -(A[off].T @ psi)
    fit = lsq_linear(A[on_fit].T.numpy(), target.numpy(), bounds=(tau - 1, tau),
                     method="bvls", tol=1e-15)  # fmt: skip
    size = float((A[off].abs().T @ psi.abs()).max()) + 1.0
    miss = A[on_fit].T.numpy() @ fit.x - target.numpy()
    return float(abs(miss).max()) <= 1e-9 * size
