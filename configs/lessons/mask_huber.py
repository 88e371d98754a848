"""Huber loss with masks, as many learners first write it: one mask for the quadratic zone,
its complement for the linear one.

    huberfit check-loss configs/lessons/mask_huber.py:MaskHuber --reference huber
    huberfit check-loss configs/lessons/mask_huber.py:MaskHuberBug --reference huber

MaskHuberBug is the classic mistake: the second "mask" is ``1 - error`` where the
complement ``1 - mask`` (or ``~(abs_error <= delta)``) was meant. It runs without an error
and trains, but it is not Huber beyond delta; check-loss says where.
"""

import torch
from torch import nn


class MaskHuber(nn.Module):
    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = delta

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        error = y_true - y_pred
        mask = (error.abs() <= self.delta).to(error.dtype)
        small = 0.5 * error**2
        large = self.delta * (error.abs() - 0.5 * self.delta)
        return (mask * small + (1 - mask) * large).mean()


class MaskHuberBug(nn.Module):
    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = delta

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        error = y_true - y_pred
        mask = (error.abs() <= self.delta).to(error.dtype)
        small = 0.5 * error**2
        large = self.delta * (error.abs() - 0.5 * self.delta)
        flag2 = 1 - error  # the bug: meant 1 - mask
        return (mask * small + flag2 * large).mean()
