"""``huberfit check-loss``: a report on your own loss module, check by check.

Each check is one row ``(name, passed, detail)``: it returns a scalar; it stays finite on
extreme residuals; it is connected to the autograd graph; ``torch.autograd.gradcheck``
in float64; it follows the inputs' dtype and device; with a reference, its value and
gradient row by row against the built-in loss, and where they differ (which branch); then
its forward + backward time on 1M rows against the built-in. Imports losses; the caller
renders the rows.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from huberfit.errors import ConfigError
from huberfit.losses import build_loss, check_bounded, preflight

Row = tuple[str, bool, str]


def check_loss(
    loss: nn.Module, label: str, reference: str | None, delta: float, quantile: float,
    device: torch.device, rows: int = 1_000_000,
) -> list[Row]:  # fmt: skip
    """Every check of ``loss`` (called ``label``), against the built-in ``reference``."""
    out: list[Row] = []
    out.append(
        _row(
            "returns a scalar on (64, 1) inputs",
            lambda: preflight(loss, label, device, 1.0, bounded=False),
        )
    )
    if not out[0][1]:  # the checks below need a scalar on the graph: this line says why
        return out
    out.append(_row("connected to the autograd graph", lambda: _connected(loss)))
    zeros = torch.zeros(64, 1, dtype=torch.float64)
    out.append(_row("does not fall as the fit gets worse",
                    lambda: check_bounded(loss, label, zeros, 1.0)))  # fmt: skip
    out.append(_row("finite on extreme residuals (1e-12 to 1e12)", lambda: _extremes(loss)))
    out.append(_row("gradcheck in float64 (autograd's own test)", lambda: _gradcheck(loss)))
    out.append(_row("follows the inputs' dtype and device", lambda: _follows(loss, device)))
    if reference is not None:
        builtin = build_loss(reference, delta, quantile)
        out += _against(loss, builtin, reference, delta, quantile)
        out.append(_row("the mean over a batch, not the sum", lambda: _reduction(loss)))
        out.append(_row(f"forward + backward, {rows:,} rows (float32)",
                        lambda: _timing(loss, builtin, reference, device, rows)))  # fmt: skip
    return out


def _reduction(loss: nn.Module) -> str:
    """The loss of a batch must be the mean of its rows' losses (a sum trains with a
    learning rate n times too large and is not what huberfit reports)."""
    r = _grid(1.0)
    rows, _ = _per_row(loss, r)
    batch = float(loss(-r.reshape(-1, 1), torch.zeros(len(r), 1, dtype=r.dtype)))
    mean = float(rows.mean())
    if not abs(batch - mean) <= 1e-10 * (1 + abs(mean)):
        hint = (
            "; return loss.mean(), not .sum()"
            if abs(batch - mean * len(r)) <= 1e-9 * abs(batch)
            else ""
        )
        raise ConfigError(
            f"{len(r)} rows gave {batch:.6g}, the mean of their losses is {mean:.6g}{hint}"
        )
    return f"{len(r)} rows: {batch:.6g}"


def _row(name: str, check: Any) -> Row:
    try:
        detail = check()
    except ConfigError as exc:
        return name, False, str(exc)
    except Exception as exc:  # your code: anything can happen
        return name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return name, True, detail or "ok"


def _connected(loss: nn.Module) -> str:
    pred = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(-1, 1).requires_grad_()
    value = loss(pred, torch.zeros_like(pred))
    if not torch.is_tensor(value) or value.grad_fn is None:
        raise ConfigError("no grad_fn: the result left the graph (.item(), NumPy, torch.tensor)")
    (grad,) = torch.autograd.grad(value, pred)
    if not bool((grad != 0).any()):
        raise ConfigError("the gradient is zero for every row: nothing would train")
    return f"grad_fn {type(value.grad_fn).__name__}"


def _extremes(loss: nn.Module) -> str:
    r = torch.tensor([1e-12, -1e-12, 1e6, -1e6, 1e12, -1e12], dtype=torch.float64).reshape(-1, 1)
    pred = (-r).requires_grad_()
    value = loss(pred, torch.zeros_like(r))
    (grad,) = torch.autograd.grad(value, pred)
    if not torch.isfinite(value) or not torch.isfinite(grad).all():
        raise ConfigError(
            f"value {float(value.detach()):.3g}, gradient {grad.reshape(-1).tolist()}"
        )
    return f"value {float(value.detach()):.3g}"


def _gradcheck(loss: nn.Module) -> str:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(16, 1, generator=g, dtype=torch.float64).mul_(3).requires_grad_()
    true = torch.randn(16, 1, generator=g, dtype=torch.float64)
    ok = torch.autograd.gradcheck(lambda p: loss(p, true), (pred,), raise_exception=False)
    if not ok:
        raise ConfigError("its backward disagrees with finite differences")
    return "ok (16 random residuals)"


def _follows(loss: nn.Module, device: torch.device) -> str:
    seen = []
    for dtype in (torch.float32, torch.float64):
        if device.type == "mps" and dtype == torch.float64:
            continue
        x = torch.randn(8, 1, dtype=dtype, device=device)
        out = loss(x.requires_grad_(), torch.zeros_like(x))
        if out.dtype != dtype or out.device.type != device.type:
            raise ConfigError(f"{dtype} inputs on {device.type} gave {out.dtype} on "
                              f"{out.device.type}; make tensors from the inputs")  # fmt: skip
        seen.append(str(dtype).replace("torch.", ""))
    return f"{', '.join(seen)} on {device.type}"


def _grid(delta: float) -> torch.Tensor:
    """Residuals across every branch: inside and beyond +-delta, both signs, and 0."""
    return torch.linspace(-6 * delta, 6 * delta, 481, dtype=torch.float64)


def _per_row(loss: nn.Module, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each residual's loss and gradient w.r.t. y_pred, one row at a time (a mean over one
    row is that row's loss, whatever the reduction)."""
    values, grads = [], []
    for ri in r:
        pred = (-ri).reshape(1, 1).clone().requires_grad_()
        v = loss(pred, torch.zeros(1, 1, dtype=r.dtype))
        (g,) = torch.autograd.grad(v, pred)
        values.append(float(v.detach()))
        grads.append(float(g))
    return torch.tensor(values, dtype=r.dtype), torch.tensor(grads, dtype=r.dtype)


def _against(loss, builtin, reference: str, delta: float, quantile: float) -> list[Row]:
    r = _grid(delta)
    try:
        got_v, got_g = _per_row(loss, r)
    except Exception as exc:
        return [(f"value against {reference}", False, f"{type(exc).__name__}: {exc}")]
    want_v, want_g = _per_row(builtin, r)
    rows = []
    for what, got, want in (("value", got_v, want_v), ("gradient", got_g, want_g)):
        err = (got - want).abs()
        tol = 1e-10 * (1 + want.abs())
        bad = ~(err <= tol)  # nan is wrong too
        name = f"{what} against {reference}" + (
            f" (delta {delta:g})" if reference == "huber" else ""
        )
        if not bool(bad.any()):
            rows.append((name, True, f"worst difference {float(err.max()):.2g}"))
            continue
        i = int(torch.argmax(torch.where(bad, torch.nan_to_num(err, nan=float("inf")), 0.0)))
        rows.append((name, False, f"wrong for {_branch(r[bad], reference, delta)}: at r = "
                                  f"{float(r[i]):.3g} got {float(got[i]):.6g}, expected "
                                  f"{float(want[i]):.6g}{_formula(reference, float(r[i]), delta)}"))  # fmt: skip
    return rows


def _branch(r_bad: torch.Tensor, reference: str, delta: float) -> str:
    if reference == "huber":
        inside = r_bad.abs() <= delta
        if bool(inside.all()):
            return "|r| <= delta"
        if not bool(inside.any()):
            return "|r| > delta"
    elif bool((r_bad > 0).all()):
        return "r > 0"
    elif bool((r_bad < 0).all()):
        return "r < 0"
    return "residuals on both branches"


def _formula(reference: str, r: float, delta: float) -> str:
    if reference != "huber":
        return ""
    return " (0.5 r^2)" if abs(r) <= delta else " (delta (|r| - delta/2))"


def _timing(loss, builtin, reference: str, device: torch.device, rows: int) -> str:
    """Forward + backward on ``rows`` residuals in float32, median of 5, against the
    built-in, measured alternately."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(rows, 1, generator=g).to(device).requires_grad_()
    true = torch.randn(rows, 1, generator=g).to(device)

    def once(fn) -> float:
        t0 = time.perf_counter()
        fn(pred, true).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        pred.grad = None
        return time.perf_counter() - t0

    for fn in (loss, builtin):
        once(fn)
    mine, theirs = [], []
    for _ in range(5):
        mine.append(once(loss))
        theirs.append(once(builtin))
    a, b = statistics.median(mine), statistics.median(theirs)
    return f"{a * 1e3:.2f} ms; built-in {reference} {b * 1e3:.2f} ms ({a / b:.2g}x)"
