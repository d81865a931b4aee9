"""The Method interface: how one adversarial-training method turns a batch into a loss.

A method builds its own adversarial examples (`attack`) and its own training loss
(`outer_loss`). The two are separate so that analysis tools can regenerate adversarial
examples at perturbed weights, or hold them fixed, and take the gradient of the same loss the
trainer used. Hooks around the loss (`before_loss`, `after_step`) let weight-perturbation
methods such as AWP wrap any base method without touching the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import pgd
from advmem.attacks.objectives import Objective
from advmem.methods.config import AttackConfig, MethodConfig


@dataclass
class AdvContext:
    """What the attack produced for one batch: x_adv and anything the loss reuses."""

    x_adv: torch.Tensor | None
    clean_logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class. Subclasses set `Config` and implement `attack` and `outer_loss`."""

    Config: ClassVar[type[MethodConfig]]
    default_start: ClassVar[str] = "uniform"
    default_start_clamp: ClassVar[bool] = True  # what `attack.start_clamp: auto` means for this method

    def __init__(self, cfg: MethodConfig, attack: AttackConfig, *, num_train: int, num_classes: int,
                 device: torch.device | str = "cpu", label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.attack_cfg = attack
        self.num_train = num_train
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.label_smoothing = label_smoothing

    # -- the step ------------------------------------------------------------------------
    def attack(self, model: nn.Module, batch, epoch: int) -> AdvContext:
        raise NotImplementedError

    def before_loss(self, model: nn.Module, batch, ctx: AdvContext, epoch: int) -> None:
        """Hook before the training forward pass (AWP perturbs the weights here)."""

    def outer_loss(self, model: nn.Module, batch, ctx: AdvContext, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def before_step(self, model: nn.Module) -> None:
        """Hook after backward, before the optimizer step (AWP restores the unperturbed
        weights here, so the step starts from them with the gradient taken at w + v)."""

    def after_step(self, model: nn.Module) -> None:
        """Hook after the optimizer step."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook at the start of each (1-indexed) epoch."""

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.cfg.name} has no state, got keys {sorted(state)}")

    def save_artifacts(self, directory) -> None:
        """Called once at the end of training with the run directory (TE writes its buffer)."""

    # -- helpers -------------------------------------------------------------------------
    @property
    def start(self) -> str:
        return self.default_start if self.attack_cfg.start == "auto" else self.attack_cfg.start

    @property
    def start_clamp(self) -> bool:
        a = self.attack_cfg.start_clamp
        return self.default_start_clamp if a == "auto" else bool(a)

    def run_pgd(self, model: nn.Module, x: torch.Tensor, objective: Objective,
                generator: torch.Generator | None = None) -> torch.Tensor:
        a = self.attack_cfg
        return pgd(model, x, objective, eps=a.eps_value, step_size=a.step_value, steps=a.steps,
                   norm=a.norm, start=self.start, bn_mode=a.bn_mode, generator=generator,
                   clamp_start=self.start_clamp)

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)


class WrapsBase:
    """For a method that runs another (`self.base`): its attacks are the base's, so are the start
    it reports and the clamp rule (TE and AWP)."""

    base: Method

    @property
    def start(self) -> str:
        return self.base.start

    @property
    def start_clamp(self) -> bool:
        return self.base.start_clamp


def accuracy_log(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction correct, kept on the device (no host sync inside the step)."""
    return (logits.detach().argmax(dim=1) == y).float().mean()
