"""A training-time gradient-instability signal: does the gradient survive one optimizer step?

At the end of every `every`-th epoch, on one fixed, seeded batch of training samples (their
training labels, no augmentation), with g(theta) the gradient of the method's own training loss
exactly as the trainer takes it (attack re-solved, fixed attack seed):

    grad_cos_step        cos(g(theta), g(theta - lr g(theta)))     x_adv re-solved at the new point
    grad_cos_step_fixed  the same with x_adv held at theta's        (the smooth-loss control)
    grad_rel_step        ||g(theta - lr g) - g(theta)|| / ||g(theta)||, x_adv re-solved

with lr the epoch's learning rate: the size of a real step. Why this signal: the paper's
argument (docs/analysis.md) is that PGD-AT's gradient has no reference value from one step to
the next because the inner maximizer moves with the weights, while TRADES' label term is smooth.
A real step of the real loss on fixed data measures exactly that, and holding x_adv fixed
separates the inner maximizer's part from the network's own curvature. It costs two attacks and
three backward passes on one batch per epoch (batch_size 64 by default), and it changes nothing
in training: the model, its buffers, its mode, the method's state and every RNG are restored.
"""

from __future__ import annotations

from typing import Any

import torch

from advmem.engine.callbacks import Callback, TrainerView
from advmem.methods.loss_gradient import LossGradient


class GradConsistency(Callback):
    """Trainer callback built from `recipe.track.grad_consistency`."""

    def __init__(self, recipe) -> None:
        cfg = recipe.track.grad_consistency
        self.every, self.seed, self.batch_size = cfg.every, cfg.seed, cfg.batch_size

    def setup(self, view: TrainerView) -> None:
        """The fixed batch: `batch_size` training samples drawn with `seed`."""
        train = view.bundle.train
        g = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(len(train), generator=g)[: min(self.batch_size, len(train))].sort().values
        subset = train.subset(rows)
        self.batch = next(subset.batches(len(subset), shuffle=False))

    def on_epoch_end(self, view: TrainerView, epoch: int, row: dict[str, Any]) -> None:
        if epoch % self.every and epoch != view.recipe.optim.epochs:
            return
        row.update(step_consistency(view.model, view.method, self.batch, lr=float(row["lr"]),
                                    epoch=epoch, seed=self.seed))


def step_consistency(model, method, batch, *, lr: float, epoch: int, seed: int) -> dict[str, float]:
    """The three numbers of the module docstring at the model's current weights."""
    ev = LossGradient(model, method, batch, epoch=epoch, seed=seed)
    try:
        ev.set_weights()
        ctx0 = ev.attack()
        g0 = ev.gradient(ctx0)
        step, offset = [], 0
        for p in ev.params:  # -g0 in the parameters' shapes: theta + lr * step = theta - lr g0
            step.append(-g0[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
        ev.set_weights(lr, step)
        g1 = ev.gradient(ev.attack())
        ev.set_weights(lr, step)
        g1_fixed = ev.gradient(ctx0)
    finally:
        ev.restore()
    norm = float(g0.norm())

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))

    return {"grad_cos_step": cos(g0, g1), "grad_cos_step_fixed": cos(g0, g1_fixed),
            "grad_rel_step": float((g1 - g0).norm()) / norm if norm > 0 else float("nan")}
