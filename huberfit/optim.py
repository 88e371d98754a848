"""Optimizers and learning-rate schedules: SGD (momentum, Nesterov), Adam, AdamW, and the
cosine and step schedules, with the exact update rules of ``torch.optim``.

Why not ``torch.optim`` itself: on this kind of machine, constructing or stepping a
``torch.optim.Optimizer`` imports ``torch._dynamo`` (about 1.4 s, more than ``import torch``),
and each ``SGD.step`` costs ~18 us of Python around 3 us of arithmetic, while a training step
on 256 rows has a budget of tens of microseconds. These classes keep the same interface
(``param_groups``, ``step``, ``zero_grad``, ``state_dict``), so ``train.fit`` also accepts any
``torch.optim`` optimizer, and the tests check every update against ``torch.optim`` as the
oracle. L-BFGS comes from ``torch.optim``. Imports torch only.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class _Optimizer:
    """The part of ``torch.optim.Optimizer``'s interface that training and checkpoints use."""

    def __init__(self, params: list[torch.Tensor], **defaults: Any) -> None:
        self.params = list(params)
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
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        return idx, [self.params[i] for i in idx], [self.params[i].grad for i in idx]

    def state_dict(self) -> dict[str, Any]:
        group = {k: v for k, v in self.group.items() if k != "params"}
        return {"state": self.state, "param_groups": [group], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict()`` (copied, as torch does: the two never share buffers)."""
        self.group.update(state["param_groups"][0])
        self.steps = state.get("steps", 0)
        self.state = {
            int(i): {k: self._copy(v, self.params[int(i)]) for k, v in s.items()}
            for i, s in state["state"].items()
        }

    @staticmethod
    def _copy(value: Any, param: torch.Tensor) -> Any:
        if torch.is_tensor(value):
            return value.detach().to(device=param.device, copy=True)
        return value


class SGD(_Optimizer):
    """``torch.optim.SGD`` (dampening 0): ``g = grad + wd*p``; with momentum
    ``buf = momentum*buf + g`` (``buf = g`` at the first step) and ``g = buf`` (Nesterov:
    ``g + momentum*buf``); then ``p -= lr*g``."""

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
        if g["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])
        if g["momentum"]:
            grads = self._momentum(idx, grads, g["momentum"], g["nesterov"])
        torch._foreach_add_(params, grads, alpha=-g["lr"])
        self.steps += 1

    def _momentum(self, idx, grads, momentum: float, nesterov: bool) -> list[torch.Tensor]:
        bufs = []
        for i, grad in zip(idx, grads, strict=True):
            st = self.state.setdefault(i, {})
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad)
            bufs.append(buf)
        if nesterov:
            return torch._foreach_add(grads, bufs, alpha=momentum)
        return bufs


class Adam(_Optimizer):
    """``torch.optim.Adam`` / ``AdamW`` (``decoupled=True``), betas (0.9, 0.999), eps 1e-8."""

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
        (b1, b2), lr, wd = g["betas"], g["lr"], g["weight_decay"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if wd and self.decoupled:
                p.mul_(1 - lr * wd)
            elif wd:
                grad = grad.add(p, alpha=wd)
            st = self.state.setdefault(i, {})
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"] += 1
            m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
            m.lerp_(grad, 1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(g["eps"])
            p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        self.steps += 1


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
