"""The gradient of a method's training loss at chosen weights, computed as the trainer computes it."""

from __future__ import annotations

import copy

import torch
from torch import nn


class LossGradient:
    """Gradient of a method's training loss at theta + alpha*d, leaving the model as it found it.

    Used by the gradient-stability probes (advmem.analysis) and the training-time gradient
    consistency signal (advmem.track.grad_consistency). The attack's random start and any dropout
    draw from fixed seeds in a forked RNG, so theta and theta + alpha*d see the same noise and the
    training RNG is untouched; weights, buffers, mode and method state are put back by restore()."""

    def __init__(self, model: nn.Module, method, batch, *, epoch: int, seed: int) -> None:
        self.model, self.method, self.batch, self.epoch, self.seed = model, method, batch, epoch, seed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.theta = [p.detach().clone() for p in self.params]
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.method_state = copy.deepcopy(method.state_dict())
        self.was_training = model.training
        device = self.theta[0].device if self.theta else torch.device("cpu")
        self.rng_devices = [device] if device.type == "cuda" else []

    def set_weights(self, alpha: float = 0.0, direction: list[torch.Tensor] | None = None) -> None:
        """Weights to theta + alpha*direction; buffers (BN running stats) and method state to theta's."""
        with torch.no_grad():
            for i, (p, t) in enumerate(zip(self.params, self.theta)):
                p.copy_(t if direction is None or alpha == 0 else t + alpha * direction[i])
            for name, b in self.model.named_buffers():
                b.copy_(self.buffers[name])
        if self.method_state:
            self.method.load_state_dict(copy.deepcopy(self.method_state))

    def restore(self) -> None:
        self.set_weights()
        self.model.train(self.was_training)

    def attack(self):
        with torch.random.fork_rng(devices=self.rng_devices):
            torch.manual_seed(self.seed)
            return self.method.attack(self.model, self.batch, self.epoch)

    def gradient(self, ctx) -> torch.Tensor:
        """Flattened gradient of `outer_loss`, computed the way the trainer computes it."""
        with torch.random.fork_rng(devices=self.rng_devices):
            torch.manual_seed(self.seed + 1)  # same dropout masks (if any) at every alpha
            self.method.before_loss(self.model, self.batch, ctx, self.epoch)
            self.model.train()
            loss, _ = self.method.outer_loss(self.model, self.batch, ctx, self.epoch)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            self.method.after_step(self.model)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).detach().reshape(-1).double()
                          for g, p in zip(grads, self.params)])
