"""Learning-rate schedules as pure functions of the (1-indexed) epoch: nothing to save on resume."""

from __future__ import annotations

import math

from advmem.recipe import OptimConfig


def lr_at(optim: OptimConfig, epoch: int) -> float:
    """Learning rate used during `epoch` (1-indexed). Milestone m decays from epoch m+1 on."""
    s = optim.schedule
    if s.name == "constant":
        return optim.lr
    if s.name == "multistep":
        return optim.lr * s.gamma ** sum(epoch > m for m in s.milestones)
    if s.name == "step":
        return optim.lr * s.gamma ** ((epoch - 1) // s.step_size)
    if s.name == "cosine":
        return 0.5 * optim.lr * (1 + math.cos(math.pi * (epoch - 1) / optim.epochs))
    raise ValueError(f"unknown schedule {s.name}")
