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


def decay_epochs(optim: OptimConfig) -> list[int]:
    """Epochs m after which a step schedule lowers the learning rate (m is the last epoch at the
    old rate; multistep milestones [m, ...]: epoch m + 1 runs at lr * gamma). Empty for schedules
    without a step down (constant; cosine falls a little every epoch, so no epoch marks a decay)."""
    if optim.schedule.name not in ("multistep", "step"):
        return []
    return [e for e in range(1, optim.epochs) if lr_at(optim, e + 1) < lr_at(optim, e)]


def first_decay(optim: OptimConfig) -> int | None:
    """The last epoch trained at the initial learning rate (None without a step decay)."""
    return next(iter(decay_epochs(optim)), None)
