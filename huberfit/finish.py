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
2. Otherwise move along the most negative of those edges. The loss along it is convex and
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
    basis = basis.clone()
    try:
        beta = torch.linalg.solve(A[basis], y[basis])
    except RuntimeError:
        return torch.linalg.lstsq(A[basis], y[basis].reshape(-1, 1)).solution.reshape(-1), 0, False
    for pivot in range(max_pivots + 1):
        r = y - A @ beta
        # rows on the fit besides the basis (ties, repeated rows) have residual 0, not
        # rounding noise: they count as below it, and as crossed at once by an edge that
        # lifts the fit off them (step 2)
        r = torch.where(r.abs() <= 64 * EPS * (y.abs() + A.abs() @ beta.abs()), 0.0, r)
        in_basis = torch.zeros(n, dtype=torch.bool)
        in_basis[basis] = True
        psi = torch.where(r > 0, tau, tau - 1.0).to(A.dtype)
        psi[in_basis] = 0.0
        try:
            z = torch.linalg.solve(A[basis].T, -(A.T @ psi))
        except RuntimeError:
            return beta, pivot, False
        # 1. the cheapest way off this vertex: its rate of change of the loss
        up, down = tau - z, (1 - tau) + z  # leave the fit upwards / downwards
        rate, sign = torch.minimum(up, down), torch.where(up <= down, 1.0, -1.0)
        j = int(torch.argmin(rate))
        if float(rate[j]) >= -1e-9:  # within rounding of the dual box: optimal
            return beta, pivot, True
        if pivot == max_pivots:
            return beta, pivot, False
        # 2. along that edge: row j's residual grows with sign s, the other basis rows stay 0
        e = torch.zeros(p, dtype=A.dtype)
        e[j] = -float(sign[j])
        try:
            d = torch.linalg.solve(A[basis], e)
        except RuntimeError:  # a numerically singular basis (degenerate, repeated rows)
            return beta, pivot, False
        ad = A @ d
        t = torch.where(r == 0, 0.0, r / ad)  # where each row is crossed
        ok = (~in_basis) & (ad != 0) & ((t > 0) | ((r == 0) & (ad < 0)))
        if not bool(ok.any()):
            return beta, pivot, False  # unbounded: cannot happen for a bounded-below loss
        cand = torch.nonzero(ok).reshape(-1)
        order = cand[torch.argsort(t[cand], stable=True)]
        slope = float(rate[j]) + torch.cumsum(ad[order].abs(), 0)
        k = (
            int(order[int(torch.nonzero(slope >= 0).reshape(-1)[0])])
            if bool((slope >= 0).any())
            else int(order[-1])
        )
        beta = beta + t[k] * d
        basis[j] = k
    return beta, max_pivots, False
