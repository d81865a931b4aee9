"""The Method interface: how one adversarial-training method turns a batch into a loss.

A method builds its own adversarial examples (`attack`) and its own training loss
(`outer_loss`). The two are separate so that analysis tools can regenerate adversarial
examples at perturbed weights, or hold them fixed, and take the gradient of the same loss the
trainer used. Hooks around the loss (`before_loss`, `after_step`) let weight-perturbation
methods such as AWP wrap any base method without touching the trainer.

A method that wraps another (TE adds a term to the base's attack objective and to its loss)
uses only what every method declares here: the attack's reference prediction (`clean_logits`),
the part of the loss the attack maximizes (`loss_objective`), the loss with the outputs it was
taken on (`loss_and_logits`) and which of those fits the labels (`fits_labels_on`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import pgd
from advmem.attacks.objectives import Objective
from advmem.recipe.method import METHODS, AttackConfig, MethodConfig


@dataclass
class AdvContext:
    """What the attack produced for one batch: x_adv and anything the loss reuses."""

    x_adv: torch.Tensor | None
    clean_logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class. Subclasses set `Config` and implement `attack_objective` (or `attack`) and
    `loss_and_logits`."""

    Config: ClassVar[type[MethodConfig]]
    default_start: ClassVar[str] = "uniform"
    default_start_clamp: ClassVar[bool] = True  # what `attack.start_clamp: auto` means for this method
    # The output the loss fits the labels on ("adversarial": PGD-AT, MART; "natural": TRADES); a
    # wrapper that adds a term to the loss (TE) puts it there by default.
    fits_labels_on: ClassVar[Literal["adversarial", "natural"]] = "adversarial"

    def __init__(self, cfg: MethodConfig, attack: AttackConfig, *, num_train: int, num_classes: int,
                 device: torch.device | str = "cpu", label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.attack_cfg = attack
        self.num_train = num_train
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.label_smoothing = label_smoothing

    # -- the attack ----------------------------------------------------------------------
    def clean_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The attack's reference prediction on the natural input (no graph), or None if it needs none."""
        return None

    def attack_objective(self, batch, clean_logits: torch.Tensor | None) -> Objective:
        """The per-sample objective the attack maximizes."""
        raise NotImplementedError

    def loss_objective(self, batch, clean_logits: torch.Tensor | None) -> Objective:
        """The per-sample part of the training loss the attack maximizes, in the loss's units: what a
        wrapper adds its own attack term to. The attack objective itself unless the loss weights it."""
        return self.attack_objective(batch, clean_logits)

    def attack(self, model: nn.Module, batch, epoch: int) -> AdvContext:
        clean = self.clean_logits(model, batch.x)
        return AdvContext(x_adv=self.run_pgd(model, batch.x, self.attack_objective(batch, clean)), clean_logits=clean)

    # -- the step ------------------------------------------------------------------------
    def before_loss(self, model: nn.Module, batch, ctx: AdvContext, epoch: int) -> None:
        """Hook before the training forward pass (AWP perturbs the weights here)."""

    def loss_and_logits(self, model: nn.Module, batch, ctx: AdvContext,
                        epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss, logs, logits): the training loss (model in train mode), its logs, and the outputs it
        was taken on by name ("natural", "adversarial"), in the order they were computed."""
        raise NotImplementedError

    def outer_loss(self, model: nn.Module, batch, ctx: AdvContext, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, logs, _ = self.loss_and_logits(model, batch, ctx, epoch)
        return loss, logs

    def before_step(self, model: nn.Module) -> None:
        """Hook after backward, before the optimizer step (AWP restores the unperturbed
        weights here, so the step starts from them with the gradient taken at w + v)."""

    def after_step(self, model: nn.Module) -> None:
        """Hook after the optimizer step."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook at the start of each (1-indexed) epoch."""

    def sync_state(self, batch, comm) -> None:
        """DDP (called only when WORLD_SIZE > 1): make per-sample state (TE's buffer) identical on
        every rank after a step in which each rank saw its own shard of the batch."""

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

    def build_base(self: Any, cfg: MethodConfig, attack: AttackConfig) -> Method:
        """The wrapped method: `cfg`'s method with this one's data sizes, device and label smoothing."""
        return METHODS.get(cfg.name)(cfg, attack, num_train=self.num_train, num_classes=self.num_classes,
                                     device=self.device, label_smoothing=self.label_smoothing)

    @property
    def start(self) -> str:
        return self.base.start

    @property
    def start_clamp(self) -> bool:
        return self.base.start_clamp


def accuracy_log(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction correct, kept on the device (no host sync inside the step)."""
    return (logits.detach().argmax(dim=1) == y).float().mean()
