"""The first layer of every model: per-channel standardisation of [0,1] inputs.

Putting it inside the model (rather than in the data pipeline) means attacks work in [0,1]
pixel space, where the budget (e.g. 8/255) is defined, and checkpoints carry their statistics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from advmem.errors import UserError


class Normalize(nn.Module):
    """`(x - mean) / std` per channel; mean and std are buffers so they follow `.to(device)`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean = [float(m) for m in mean]
        std = [float(s) for s in std]
        if len(mean) == 0 or len(mean) != len(std):
            raise UserError(f"Normalize needs mean and std of equal, nonzero length; got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise UserError(f"Normalize std must be positive per channel; got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Sequential):
    """`net(normalize(x))`, kept as a two-entry Sequential named `normalize` and `net`.

    Being a Sequential makes `model[0]` the Normalize layer; the names make the state dict keys
    `normalize.mean`, `net.<...>`, stable across model families.
    """

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__(OrderedDict([("normalize", normalize), ("net", net)]))
