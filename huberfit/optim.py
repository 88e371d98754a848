"""Optimizers and learning-rate schedules: SGD (momentum, Nesterov), Adam, AdamW, L-BFGS,
the cosine and step schedules, and ``build_optimizer``/``build_scheduler`` from the config.

The update maths are torch's own functional kernels (``torch.optim.sgd.sgd``,
``torch.optim.adam.adam``, ``foreach=False``); only the thin shell around them is ours.
Why not the ``torch.optim.Optimizer`` classes: constructing or stepping one imports
``torch._dynamo`` (measured +1.0 s of start-up), and its ``step`` costs ~20 us of Python
plus ~8 us for ``zero_grad`` around ~3 us of arithmetic, where a 256-row training step has
a budget of tens of microseconds (the shell: ~3 us for SGD). The shells keep the same
interface (``param_groups``, ``step``, ``zero_grad``, ``state_dict``), so ``loop.fit``
also accepts any ``torch.optim`` optimizer, and the tests check every update against
``torch.optim`` as the oracle. L-BFGS is ``torch.optim.LBFGS`` itself. Imports torch and
the config's types only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd


class _Optimizer:
    """The part of ``torch.optim.Optimizer``'s interface that training and checkpoints use."""

    def __init__(self, params: list[torch.Tensor], **defaults: Any) -> None:
        self.params = list(params)
        self._all = list(range(len(self.params)))
        self.param_groups = [{"params": self.params, **defaults}]
        self.state: dict[int, dict[str, Any]] = {}
        self.steps = 0

    @property
    def group(self) -> dict[str, Any]:
        return self.param_groups[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _grads(self) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """The indices, parameters and gradients of the parameters that have a gradient."""
        grads = [p.grad for p in self.params]
        for gr in grads:  # the usual case: all have one (`in` would compare tensors)
            if gr is None:
                break
        else:
            return self._all, self.params, grads
        idx = [i for i, gr in enumerate(grads) if gr is not None]
        return idx, [self.params[i] for i in idx], [grads[i] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        group = {k: v for k, v in self.group.items() if k != "params"}
        return {"state": self.state, "param_groups": [group], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict()`` (copied, as torch does: the two never share buffers)."""
        self.group.update(state["param_groups"][0])
        self.steps = state.get("steps", 0)
        self.state = {
            int(i): {k: self._copy(k, v, self.params[int(i)]) for k, v in s.items()}
            for i, s in state["state"].items()
        }

    @staticmethod
    def _copy(key: str, value: Any, param: torch.Tensor) -> Any:
        """A buffer on its parameter's device; Adam's step count stays a CPU float tensor,
        as torch keeps it (an int from a checkpoint of an older huberfit becomes one)."""
        if key == "step":
            return torch.tensor(float(value))
        if torch.is_tensor(value):
            return value.detach().to(device=param.device, copy=True)
        return value


class SGD(_Optimizer):
    """``torch.optim.SGD`` (dampening 0): torch's own update, ``torch.optim.sgd.sgd``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:  # fmt: skip
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)  # fmt: skip

    def step(self, closure: Any = None) -> None:
        if torch.is_grad_enabled():  # a no_grad context costs ~3 us; skip it when not needed
            with torch.no_grad():
                return self._step()
        return self._step()

    def _step(self) -> None:
        g = self.group
        idx, params, grads = self._grads()
        if not params:
            return
        momentum = g["momentum"]
        if not momentum and not g["weight_decay"]:
            # plain SGD: the update torch's multi-tensor kernel makes (one foreach add; the
            # per-tensor ``sgd`` call costs ~5 us a step of Python, this ~2.4 us: a tenth
            # of a 256-row step). Tested bit for bit against torch.optim.SGD.
            torch._foreach_add_(params, grads, alpha=-g["lr"])
            self.steps += 1
            return
        bufs = [self.state.get(i, {}).get("momentum_buffer") for i in idx] if momentum else None
        sgd(params, grads, bufs or [None] * len(params), weight_decay=g["weight_decay"],
            momentum=momentum, lr=g["lr"], dampening=0.0, nesterov=g["nesterov"],
            maximize=False, foreach=False)  # fmt: skip
        if momentum:  # the kernel creates the buffers on the first step
            for i, buf in zip(idx, bufs, strict=True):
                self.state.setdefault(i, {})["momentum_buffer"] = buf
        self.steps += 1


class Adam(_Optimizer):
    """``torch.optim.Adam`` / ``AdamW`` (``decoupled=True``), betas (0.9, 0.999), eps 1e-8:
    torch's own update, ``torch.optim.adam.adam``."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:  # fmt: skip
        super().__init__(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
        self.decoupled = decoupled

    def step(self, closure: Any = None) -> None:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._step()
        return self._step()

    def _step(self) -> None:
        g = self.group
        idx, params, grads = self._grads()
        if not params:
            return
        states = [self._state_of(i) for i in idx]
        adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [], [s["step"] for s in states], foreach=False, capturable=False,
             differentiable=False, fused=None, grad_scale=None, found_inf=None,
             has_complex=False, decoupled_weight_decay=self.decoupled, amsgrad=False,
             beta1=g["betas"][0], beta2=g["betas"][1], lr=g["lr"],
             weight_decay=g["weight_decay"], eps=g["eps"], maximize=False)  # fmt: skip
        self.steps += 1

    def _state_of(self, i: int) -> dict[str, Any]:
        st = self.state.setdefault(i, {})
        if not st:  # torch keeps the step count as a CPU float tensor
            p = self.params[i]
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st


# ----------------------------------------------------------------------------- schedules


class _Schedule:
    """Sets ``lr`` from the epoch count after each epoch, like ``torch.optim.lr_scheduler``."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.epoch += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr, self.epoch = state["base_lr"], state["epoch"]


class CosineLR(_Schedule):
    """``eta_min + (base - eta_min) * (1 + cos(pi * epoch / T)) / 2`` (CosineAnnealingLR)."""

    def __init__(self, optimizer: Any, total_epochs: int, min_lr: float = 0.0) -> None:
        super().__init__(optimizer)
        self.total, self.min_lr = total_epochs, min_lr

    def lr_at(self, epoch: int) -> float:
        cos = (1 + math.cos(math.pi * epoch / self.total)) / 2
        return self.min_lr + (self.base_lr - self.min_lr) * cos


class StepLR(_Schedule):
    """``base * gamma ** (epoch // step_size)`` (StepLR)."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float) -> None:
        super().__init__(optimizer)
        self.step_size, self.gamma = step_size, gamma

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


# ----------------------------------------------------------------------------- from the config


def build_optimizer(config: Any, model: torch.nn.Module) -> Any:
    """The configured optimizer over the model's parameters (``config.optimizer``)."""
    o = config.optimizer
    params = list(model.parameters())
    if o.name == "sgd":
        return SGD(params, o.lr, o.momentum, o.nesterov, o.weight_decay)
    if o.name in ("adam", "adamw"):
        return Adam(params, o.lr, o.weight_decay, decoupled=o.name == "adamw")
    # torch's defaults (tolerance_grad=1e-7, tolerance_change=1e-9) stop well short of the
    # optimum; with them off, each step runs max_iter iterations or until the line search
    # makes no progress, and fit() repeats the step until the objective stops falling.
    return torch.optim.LBFGS(
        params,
        lr=o.lr,
        max_iter=o.max_iter,
        history_size=o.history_size,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )


def build_scheduler(config: Any, optimizer: Any) -> _Schedule | None:
    """The configured learning-rate schedule (``config.scheduler``), or None."""
    s = config.scheduler
    if s.name == "cosine":
        return CosineLR(optimizer, config.train.epochs, s.min_lr)
    if s.name == "step":
        return StepLR(optimizer, s.step_size, s.gamma)
    return None
