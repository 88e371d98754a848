"""The model: one ``nn.Linear(n_features, 1)`` with seeded initial weights.

Coefficients are read out as plain floats; mapping them back to original units is the
data room's ``Scaling.to_original``. Must not import data, losses, train or sinks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def build_model(
    n_features: int, bias: bool, seed: int, dtype: torch.dtype, zero: Sequence[int] = ()
) -> nn.Linear:
    """``nn.Linear(n_features, 1)`` initialised like torch's default, but from ``seed``.

    torch's default init draws from the global RNG; a dedicated generator makes the initial
    weights a function of the seed alone, so every loss in a comparison starts identically.
    The features in ``zero`` (constant in the training rows: standardized, they are 0 and
    their weights get no gradient) start, and so stay, at weight 0 instead of a random one.
    """
    model = nn.Linear(n_features, 1, bias=bias, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(n_features)
    with torch.no_grad():
        model.weight.uniform_(-bound, bound, generator=gen)
        if model.bias is not None:
            model.bias.uniform_(-bound, bound, generator=gen)
        model.weight[0, list(zero)] = 0.0
    return model


def read_coefficients(model: nn.Linear) -> tuple[list[float], float]:
    """The fitted weights (one per feature) and intercept (0.0 without bias), as floats."""
    weight = model.weight.detach().reshape(-1).double().cpu().tolist()
    bias = float(model.bias.detach().double().cpu()) if model.bias is not None else 0.0
    return weight, bias
