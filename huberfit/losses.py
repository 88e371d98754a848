"""Losses: the custom ``HuberLoss`` module (the learner's ``torch.where`` definition, made fast)
and ``LOSSES``, the one place where a loss is declared: its module, whether it uses delta,
its objective for scoring files, and its exact reference solver.

Imports torch and ``reference``; must not import data, model, train or sinks.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huberfit import reference
from huberfit.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


def huber_reference(
    y_pred: torch.Tensor, y_true: torch.Tensor, delta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """The readable definition, as in the classic exercise: one ``torch.where``, no masks.

    This is the teaching text and the reference the fast path is tested against. It is ~13x
    slower than ``F.huber_loss`` in forward+backward: every op below allocates a temporary
    and records an autograd node.
    """
    r = y_true - y_pred
    abs_r = r.abs()
    loss = torch.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))
    return _reduce(loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


_CONSTANTS: dict[tuple, tuple[float, torch.Tensor, torch.Tensor | None]] = {}


def _constants(
    n: int, reduction: str, delta: float, like: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """What forward needs for ``n`` elements, made once and kept (the last one only):

    - the clamp's bound, ``delta`` times ``s`` rounded as ``like``'s dtype rounds it, where
      ``s`` is ``1/n`` for the mean (rounded the same way) and 1 otherwise;
    - the weights that turn ``[sum(d * c), sum(c * c)]`` of the scaled rows into the loss:
      ``[1, -1/2] / (n s**2)``, made on the device by a fill (no copy, so no
      synchronisation);
    - for the mean, ``1/2`` as a 0-dim tensor on the device (see ``_residual``).
    """
    key = (n, reduction, delta, like.dtype, like.device)
    kept = _CONSTANTS.get(key)
    if kept is None:
        _CONSTANTS.clear()
        scaled = reduction == "mean" and n > 1
        one = torch.ones((), dtype=like.dtype)  # the dtype's rounding, on the host
        s = one / n if scaled else one
        bound = float(one * delta * s) if scaled else delta
        if reduction != "mean":
            weight = 1.0
        else:  # no rows: nan, as torch; otherwise 1 / (n s**2), which is 1/n when s is 1
            weight = 1.0 / (n * float(s) ** 2) if n else math.nan
        w = torch.full((2,), weight, dtype=like.dtype, device=like.device)
        w[1:].mul_(-0.5)
        half = torch.full((), 0.5, dtype=like.dtype, device=like.device) if scaled else None
        kept = _CONSTANTS[key] = (bound, w, half)
    return kept


def _residual(
    y_pred: torch.Tensor, y_true: torch.Tensor, half: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out = y_pred - y_true``, or ``(y_pred - y_true) / n`` for the mean, in one pass.

    The scaled one is MSE's gradient kernel, ``(2 / n) * (y_pred - y_true) * g``, with
    ``g = 1/2``: torch has no other single kernel for a scaled difference. Rounded as
    ``(y_pred - y_true) * s`` is (``2 s`` and the halving are exact), so the clamp of it is
    ``F.huber_loss``'s gradient bit for bit.
    """
    if half is None:
        torch.sub(y_pred, y_true, out=out)
    else:
        torch.ops.aten.mse_loss_backward.grad_input(half, y_pred, y_true, 1, grad_input=out)


class _HuberFunction(torch.autograd.Function):
    """Huber with its closed-form gradient, ``d loss / d y_pred = clamp(y_pred - y_true, +-delta)``.

    With ``d = y_pred - y_true`` and ``c = clamp(d, -delta, delta)``, the loss is
    ``d * c - c**2 / 2`` on both branches (``|d| <= delta``: ``d**2/2``; otherwise
    ``delta * |d| - delta**2/2``), so the sum is ``sum(d * c) - sum(c * c) / 2`` and ``c``
    is already the gradient.

    Three passes over the data: for the mean, ``d`` is made already divided by ``n``, so its
    clamp (at ``delta / n``) *is* the gradient; ``d`` and ``c`` are the two rows of one new
    buffer, so both sums are one matrix-vector product, ``[d; c] @ c``, and ``c`` (a view
    of the second row) is handed to autograd as it is. Measured on a 2-core Xeon, 1M
    float32, forward + backward: 1.07x ``F.huber_loss`` against 1.29x for the four passes
    before (``d``, its clamp, the sums, ``c / n``).

    The sums are float accumulations of the scaled rows: in float32 the loss has the
    relative error of a float32 dot product over ``n`` terms, and an absolute error below
    ``n**2`` times the smallest normal float (1e-26 for 1M rows), where products of
    residuals under ``n * 1e-19`` underflow. The gradient is exact. With
    ``create_graph=True`` backward computes it again from differentiable ops instead.
    """

    @staticmethod
    def forward(ctx, y_pred, y_true, delta: float, reduction: str):  # type: ignore[override]
        n = y_pred.numel()
        bound, weights, half = _constants(n, reduction, delta, y_pred)
        rows = y_pred.new_empty((2, n))
        d, c = rows[0].view(y_pred.shape), rows[1].view(y_pred.shape)
        _residual(y_pred, y_true, half, d)
        torch.clamp(d, -bound, bound, out=c)
        if reduction == "none":
            loss = d * c - 0.5 * c * c
        else:  # [sum(d * c), sum(c * c)] @ weights: two ops, not five
            loss = torch.dot(torch.mv(rows, rows[1]), weights)
        # c is the gradient for an upstream gradient of 1; backward rescales it only if the
        # upstream one is not 1. It lives on ctx (not save_for_backward) because backward
        # hands it out as the gradient itself; a second backward recomputes it.
        ctx.grad = c
        ctx.save_for_backward(y_pred, y_true)
        ctx.delta, ctx.reduction = delta, reduction
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad, ctx.grad = ctx.grad, None
        if torch.is_grad_enabled():  # create_graph=True: a gradient autograd can differentiate
            y_pred, y_true = ctx.saved_tensors
            bound, _, half = _constants(y_pred.numel(), ctx.reduction, ctx.delta, y_pred)
            if half is None:
                d = y_pred - y_true
            else:  # the same kernel as forward's, as a differentiable op
                d = torch.ops.aten.mse_loss_backward(half, y_pred, y_true, 1)
            grad = torch.clamp(d, -bound, bound) * grad_out  # out of place: on the graph
            return _outputs(grad, ctx.needs_input_grad)
        if grad is None:  # a second backward (retain_graph=True): the buffer was handed out
            y_pred, y_true = ctx.saved_tensors
            bound, _, half = _constants(y_pred.numel(), ctx.reduction, ctx.delta, y_pred)
            grad = torch.empty_like(y_pred)
            _residual(y_pred, y_true, half, grad)
            grad.clamp_(-bound, bound)
        if not _is_one(grad_out):
            grad = grad.mul_(grad_out)
        return _outputs(grad, ctx.needs_input_grad)


def _outputs(grad: torch.Tensor, needs: tuple) -> tuple:
    """Backward's outputs: the gradient w.r.t. ``y_pred``, its negative w.r.t. ``y_true``."""
    return (grad if needs[0] else None), (-grad if needs[1] else None), None, None


def _is_one(t: torch.Tensor) -> bool:
    """Whether an upstream gradient is the scalar 1 (the usual ``loss.backward()``), read
    only where that costs no device synchronisation."""
    return t.dim() == 0 and t.device.type == "cpu" and t.item() == 1.0


class HuberLoss(nn.Module):
    r"""Huber loss of the residual ``r = y_true - y_pred``, element by element.

    .. math::
        L_\delta(r) = \begin{cases} \tfrac12 r^2 & |r| \le \delta \\
                                     \delta\,(|r| - \tfrac12\delta) & |r| > \delta \end{cases}

    Quadratic near zero (like MSE), linear in the tails (like L1), so an outlier's pull on the
    fit is capped at ``delta``.

    Args:
        delta: the threshold, in target units, finite and > 0. This is torch's
            ``F.huber_loss`` delta. It is *not* scikit-learn's ``HuberRegressor(epsilon=...)``,
            which thresholds residuals divided by a scale it fits at the same time; and it is
            *not* ``SmoothL1Loss``'s ``beta``: ``HuberLoss(d) == d * SmoothL1Loss(beta=d)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``. ``"none"`` returns the
            per-element losses; call ``backward()`` on a scalar (``.mean()``) made from them,
            or torch raises "grad can be implicitly created only for scalar outputs".

    Shapes: ``y_pred`` and ``y_true`` of the same shape, e.g. ``(n_samples, 1)``. Shapes that
    differ broadcast exactly as in ``F.huber_loss``, with the same warning (usually a bug:
    ``(n, 1)`` against ``(n,)`` gives an ``(n, n)`` loss).

    Works on CPU, CUDA and MPS, float32 and float64. NaN in gives NaN out.
    """

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        delta = float(delta)
        if not math.isfinite(delta) or delta <= 0:
            raise ValueError(f"HuberLoss delta must be a finite number > 0; got {delta}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"HuberLoss reduction must be one of {REDUCTIONS}; got {reduction!r}")
        self.delta = delta
        self.reduction = reduction

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss of ``y_pred`` against ``y_true`` (see the class docstring for shapes)."""
        if y_pred.shape != y_true.shape:
            warnings.warn(
                f"Using a target size ({y_true.shape}) that is different to the input size "
                f"({y_pred.shape}). This will likely lead to incorrect results due to "
                "broadcasting. Please ensure they have the same size.",
                stacklevel=2,
            )
            y_pred, y_true = torch.broadcast_tensors(y_pred, y_true)
        if y_pred.dtype != y_true.dtype:
            y_true = y_true.to(y_pred.dtype)
        return _HuberFunction.apply(y_pred, y_true, self.delta, self.reduction)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, reduction={self.reduction!r}"

    def sum_and_grad(
        self, y_pred: torch.Tensor, y_true: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and its gradient w.r.t. ``y_pred``, without autograd, for 1-D inputs.

        The training loop's fused path for ``nn.Linear`` (tested against autograd); it
        overwrites ``y_pred``. Same identity as forward: ``d * c - c**2 / 2``.
        """
        d = y_pred.sub_(y_true)
        c = d.clamp(-self.delta, self.delta)
        return torch.dot(d.sub_(c, alpha=0.5), c), c

    def curvature(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """The second derivative per row w.r.t. ``y_pred``: 1 within delta, 0 beyond (1-D)."""
        return ((y_pred - y_true).abs() <= self.delta).to(y_pred.dtype)


class MSELoss(nn.MSELoss):
    """``nn.MSELoss`` (mean of ``r**2``) with the fused path's closed-form gradient."""

    def sum_and_grad(
        self, y_pred: torch.Tensor, y_true: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of ``r**2`` and its gradient ``2 r`` (1-D inputs; overwrites ``y_pred``)."""
        d = y_pred.sub_(y_true)
        return torch.dot(d, d), d.mul_(2.0)

    def curvature(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """The second derivative per row w.r.t. ``y_pred``: 2 (1-D)."""
        return torch.full_like(y_pred, 2.0)


class L1Loss(nn.L1Loss):
    """``nn.L1Loss`` (mean of ``|r|``) with the fused path's gradient ``sign(r)``
    (0 at ``r == 0``, as torch's).

    ``smoothing`` (0 by default) rounds the kink for full-batch L-BFGS, which assumes a
    smooth objective: ``|r|`` becomes ``r**2 / (2 mu)`` within ``mu`` of 0 and
    ``|r| - mu/2`` beyond (Huber's loss over ``mu``). ``loop.fit`` lowers it step by step
    and then solves the exact vertex; see ``loop._Run.lbfgs_epoch``.
    """

    smoothing = 0.0

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if self.smoothing > 0:
            return F.huber_loss(y_pred, y_true, delta=self.smoothing) / self.smoothing
        return super().forward(y_pred, y_true)

    def sum_and_grad(
        self, y_pred: torch.Tensor, y_true: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of ``|r|`` and its gradient ``sign(r)`` (1-D inputs; overwrites ``y_pred``)."""
        d = y_pred.sub_(y_true)
        return d.abs().sum(), d.sign_()


class QuantileLoss(nn.Module):
    r"""Pinball (quantile) loss of the residual ``r = y_true - y_pred``, averaged:

    .. math:: \rho_\tau(r) = \max(\tau r, (\tau - 1) r) = |r|/2 + (\tau - 1/2)\,r

    Its minimizer puts a share ``quantile`` (tau) of the rows below the fitted line: the
    ``tau``-th conditional quantile (scikit-learn's ``QuantileRegressor``). ``tau = 0.5``
    is half of L1. ``smoothing`` rounds the kink of ``|r|`` as ``L1Loss`` does.

    Args:
        quantile: tau, in (0, 1).
    """

    smoothing = 0.0

    def __init__(self, quantile: float = 0.5) -> None:
        super().__init__()
        quantile = float(quantile)
        if not 0 < quantile < 1:
            raise ValueError(f"QuantileLoss quantile must be in (0, 1); got {quantile}")
        self.quantile = quantile

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        r = y_true - y_pred
        if self.smoothing > 0:
            mu = self.smoothing
            return (
                0.5 * F.huber_loss(y_pred, y_true, delta=mu) / mu + (self.quantile - 0.5) * r.mean()
            )
        return torch.maximum(self.quantile * r, (self.quantile - 1) * r).mean()

    def extra_repr(self) -> str:
        return f"quantile={self.quantile}"

    def sum_and_grad(
        self, y_pred: torch.Tensor, y_true: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed pinball loss and its gradient w.r.t. ``y_pred``: ``1 - tau`` where
        ``d = y_pred - y_true > 0``, ``-tau`` where it is < 0, and at 0 their mean
        ``1/2 - tau`` (as autograd gives for ``forward``; 1-D inputs; overwrites ``y_pred``)."""
        d = y_pred.sub_(y_true)
        total = torch.where(d > 0, (1 - self.quantile) * d, -self.quantile * d).sum()
        return total, d.sign_().mul_(0.5).add_(0.5 - self.quantile)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec:
    """A loss, declared once: everything the rest of huberfit asks of it.

    Args:
        build: ``build(delta, quantile) -> nn.Module``, the training loss (a mean over rows).
        power: how the loss scales with the target's units (2 for squared losses, 1 for
            L1): training on a target divided by ``s`` multiplies the loss by ``s**-power``,
            which is how losses are reported back in original units.
        uses_delta: whether ``loss.delta`` means anything to it.
        uses_quantile: whether ``loss.quantile`` does.
        objective: ``objective(r, delta, quantile) -> float``, the mean loss of float64
            residuals (``huberfit eval``, optimality gaps, the bench).
        reference: ``reference(A, y, delta, quantile) -> reference.Optimum``, the certified
            minimizer of ``objective`` over the design ``A`` (intercept column last); None
            when there is none (then no gap is reported and compare-losses refuses it).
    """

    build: Callable[[float, float], nn.Module]
    power: int
    uses_delta: bool
    objective: Callable[..., float] | None
    reference: Callable[..., reference.Optimum] | None = None
    uses_quantile: bool = False


LOSSES: dict[str, LossSpec] = {
    "huber": LossSpec(
        lambda delta, quantile: HuberLoss(delta), power=2, uses_delta=True,
        objective=reference.huber_objective, reference=reference.solve_huber,
    ),
    "mse": LossSpec(
        lambda delta, quantile: MSELoss(), power=2, uses_delta=False,
        objective=reference.mse_objective, reference=reference.solve_mse,
    ),
    "l1": LossSpec(
        lambda delta, quantile: L1Loss(), power=1, uses_delta=False,
        objective=reference.l1_objective, reference=reference.solve_l1,
    ),
    "quantile": LossSpec(
        lambda delta, quantile: QuantileLoss(quantile), power=1, uses_delta=False,
        objective=reference.quantile_objective, reference=reference.solve_quantile,
        uses_quantile=True,
    ),
}  # fmt: skip


def loss_spec(name: str) -> LossSpec:
    """The declaration of the loss ``name``: a built-in's, or for your own loss
    (``file.py:Class``, ``package.module:Class``) one without objective or reference,
    that builds nothing (see ``spec_of``); a ValueError for anything else."""
    if name in LOSSES:
        return LOSSES[name]
    if is_own(name):
        return LossSpec(_no_build, power=1, uses_delta=False, objective=None)
    raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")


def _no_build(delta: float, quantile: float) -> nn.Module:
    raise RuntimeError("your own loss is built by spec_of(loss config), with its kwargs")


def spec_of(loss: Any) -> LossSpec:
    """The declaration for a ``config.loss`` section: a built-in's, or one that builds
    your own loss module from its file or module with ``loss.kwargs``."""
    if loss.name in LOSSES:
        return LOSSES[loss.name]
    kwargs = dict(loss.kwargs)
    return LossSpec(lambda delta, quantile: load_own_loss(loss.name, kwargs), power=1,
                    uses_delta=False, objective=None)  # fmt: skip


def is_own(name: str) -> bool:
    """Whether ``name`` names your own loss module rather than a built-in one."""
    return ":" in name


def own_label(name: str) -> str:
    """Your own loss by its class name (runs, TensorBoard, comparisons): ``MyHuber``."""
    return name.rpartition(":")[2] if is_own(name) else name


def own_source(name: str) -> dict[str, str] | None:
    """Where your own loss's code is, and a SHA-256 of its text (a resumed run must train
    the same loss); None for a built-in."""
    if not is_own(name):
        return None
    target = name.rpartition(":")[0]
    file = Path(target) if target.endswith(".py") else _module_file(target)
    text = file.read_bytes() if file is not None and file.is_file() else b""
    return {"file": str(file), "sha256": hashlib.sha256(text).hexdigest()}


def _module_file(module: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def load_own_loss(
    name: str, kwargs: dict[str, Any], keys: tuple[str, str] = ("loss.name", "loss.kwargs")
) -> nn.Module:
    """Import your own loss class (``path/to/file.py:Class`` or ``package.module:Class``)
    and build it with ``kwargs``. The file is your code and runs as such, here, in this
    process; every failure is one ``ConfigError`` line naming it."""
    import importlib
    import importlib.util

    target, _, cls_name = name.rpartition(":")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ConfigError(f"{keys[0]}: file not found: {file}")
            spec = importlib.util.spec_from_file_location(f"huberfit_own_loss_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code: anything can happen while it loads
        raise ConfigError(f"{keys[0]}: {target} failed to load: {_first_line(exc)}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        found = [
            k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
        ]
        raise ConfigError(f"{keys[0]}: {target} has no class {cls_name!r}"
                          + (f"; it has {', '.join(found)}" if found else ""))  # fmt: skip
    try:
        loss = cls(**kwargs)
    except Exception as exc:
        raise ConfigError(
            f"{keys[1]}: {own_label(name)}(**{kwargs}) failed: {_first_line(exc)}"
        ) from None
    if not callable(loss):
        raise ConfigError(f"{keys[0]}: {own_label(name)}() is not callable (an nn.Module?)")
    return loss


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def preflight(
    loss: nn.Module, label: str, device: torch.device, scale: float,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64), bounded: bool = True,
) -> None:  # fmt: skip
    """Call the loss the way training will, on 64 rows of shape ``(64, 1)`` in each of
    ``dtypes`` on the run's device, with residuals from 1e-3 to 1e3 times the target's
    scale (every branch of a piecewise loss), and turn each classic mistake into one line
    naming its fix (a ``ConfigError``): a loss per row instead of a scalar, nan, a result
    cut off the graph, tensors made on the wrong device or in the wrong dtype, a loss that
    falls as the fit gets worse (a wrong branch: training would run to -inf)."""
    mags = torch.logspace(-3, 3, 32, dtype=torch.float64) * scale
    r = torch.cat([mags, -mags]).reshape(-1, 1)
    for dtype in dtypes:
        if device.type == "mps" and dtype == torch.float64:
            continue
        true = torch.zeros(64, 1, dtype=dtype, device=device)
        pred = (true - r.to(device=device, dtype=dtype)).requires_grad_()
        _check_call(loss, label, pred, true, dtype, device)
        if bounded:
            check_bounded(loss, label, true, scale)


def check_bounded(loss: nn.Module, label: str, true: torch.Tensor, scale: float) -> str:
    """A loss must not fall as the residuals grow (a wrong branch runs training to -inf)."""
    where = f"{label} ({str(true.dtype).replace('torch.', '')} on {true.device.type})"
    with torch.no_grad():
        at_zero = float(loss(true.clone(), true))
        far = float(loss(true - 1e3 * scale, true))
    if far < at_zero:
        raise ConfigError(
            f"{where} is lower ({far:.3g}) for residuals of 1e3 than for 0 ({at_zero:.3g}): "
            "it falls as the fit gets worse, so training would run to -inf (a wrong branch?)"
        )
    return f"{at_zero:.3g} at 0, {far:.3g} at 1e3"


def _check_call(loss, label: str, pred, true, dtype, device) -> torch.Tensor:
    where = f"{label} (float{torch.finfo(dtype).bits} on {device.type})"
    try:
        out = loss(pred, true)
    except RuntimeError as exc:
        text = str(exc)
        if "device" in text or "dtype" in text or "scalar type" in text or "Double" in text:
            raise ConfigError(
                f"{where}: {_first_line(exc).rstrip('.')}; make tensors inside forward from the inputs "
                "(torch.zeros_like(y_pred), y_pred.new_tensor(...)), not torch.tensor(...)"
            ) from None
        raise ConfigError(f"{where} raised {_first_line(exc)}") from None
    except Exception as exc:
        raise ConfigError(f"{where} raised {_first_line(exc)}") from None
    if not torch.is_tensor(out):
        raise ConfigError(f"{where} returned {type(out).__name__}, not a tensor: return the loss "
                          "as a torch tensor (no .item(), no float())")  # fmt: skip
    if out.dim() != 0:
        raise ConfigError(f"{where} returned shape {tuple(out.shape)}, not a scalar: "
                          "return loss.mean()")  # fmt: skip
    if out.grad_fn is None:
        raise ConfigError(f"{where} is cut off the autograd graph, so nothing would train: "
                          "keep it in torch ops (no .item(), NumPy or torch.tensor(result))")  # fmt: skip
    if out.dtype != dtype or out.device.type != device.type:
        raise ConfigError(f"{where} returned {out.dtype} on {out.device.type}: make tensors "
                          "inside forward from the inputs (zeros_like, new_tensor)")  # fmt: skip
    if not torch.isfinite(out):
        raise ConfigError(f"{where} returned {float(out.detach())} on ordinary residuals "
                          "(1e-3 to 1e3): a bug in the loss (a 0 * inf, a log of 0?)")  # fmt: skip
    (grad,) = torch.autograd.grad(out, pred)
    if not torch.isfinite(grad).all():
        raise ConfigError(f"{where}: its gradient is not finite on ordinary residuals")
    if not bool((grad != 0).any()):
        raise ConfigError(f"{where}: its gradient is zero everywhere, so nothing would train")
    return out


def build_loss(name: str, delta: float = 1.0, quantile: float = 0.5) -> nn.Module:
    """Build the loss ``name`` (``delta``/``quantile`` used only by losses that declare them)."""
    return loss_spec(name).build(delta, quantile)


def optimum_of(
    name: str, X: np.ndarray, y: np.ndarray, delta: float = 1.0, quantile: float = 0.5,
    bias: bool = True,
) -> tuple[np.ndarray, float, reference.Optimum]:  # fmt: skip
    """The certified optimum of loss ``name`` on ``X (n, f)``, ``y (n,)`` (original units):
    ``(weights, intercept, Optimum)``. A loss without a reference solver is an error here,
    never silently compared with another loss's optimum."""
    spec = loss_spec(name)
    if spec.reference is None:
        raise ConfigError(f"loss {name!r} has no exact reference solver, so no optimality gap")
    opt = spec.reference(reference.design(X, bias), y, delta, quantile)
    if bias:
        return opt.beta[:-1], float(opt.beta[-1]), opt
    return opt.beta, 0.0, opt


def optimality_gap(
    name: str, X: np.ndarray, y: np.ndarray, w, b: float, delta: float = 1.0,
    quantile: float = 0.5, bias: bool = True,
) -> dict:  # fmt: skip
    """Objective of ``(w, b)`` on ``X (n, f)``, ``y (n,)`` (original units), of the certified
    optimum, and the gap (absolute and relative)."""
    spec = loss_spec(name)
    ref_w, ref_b, opt = optimum_of(name, X, y, delta, quantile, bias)
    f = spec.objective(y - X @ np.asarray(w) - b, delta, quantile)
    f_star = opt.objective
    return {
        "objective": f,
        "optimum": f_star,
        "gap": f - f_star,
        "relative_gap": relative_gap(f, f_star),
        "optimum_coefficients": [float(v) for v in ref_w],
        "optimum_intercept": ref_b,
        "certificate": opt.certificate,
    }


def relative_gap(f: float, f_star: float) -> float:
    """``(f - f*) / f*``; the absolute gap when the optimum is 0 (a perfect fit), which
    ``optimum_is_zero`` says: below the run's own objective's rounding it is 0 in all but
    rounding, and a relative gap of 1e31 measures nothing."""
    return f - f_star if optimum_is_zero(f, f_star) else (f - f_star) / f_star


def optimum_is_zero(f: float, f_star: float) -> bool:
    """Whether the optimum ``f_star`` is 0 to rounding, beside the run's objective ``f``."""
    return not f_star > np.finfo(np.float64).eps * abs(f)
