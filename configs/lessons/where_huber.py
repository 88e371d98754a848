"""Huber loss as the classic exercise writes it: one torch.where, no masks.

    huberfit train --config configs/lessons/where_huber.yaml
    huberfit check-loss configs/lessons/where_huber.py:WhereHuber --reference huber

huberfit calls loss_fn(y_pred, y_true) with two tensors of shape (batch, 1), on the run's
device and dtype, and needs one number back: the mean loss, still on the autograd graph.
"""

import torch
from torch import nn


class WhereHuber(nn.Module):
    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = delta

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        r = y_true - y_pred
        quadratic = 0.5 * r**2
        linear = self.delta * (r.abs() - 0.5 * self.delta)
        return torch.where(r.abs() <= self.delta, quadratic, linear).mean()
