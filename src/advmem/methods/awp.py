"""AWP (Wu et al., NeurIPS 2020): adversarial weight perturbation around any base method.

Per step, after the base method's attack: one ascent step on the weights maximizes the base
method's own training loss on the adversarial examples (train mode, as the official proxy
model; BatchNorm running statistics are restored afterwards, so the extra forward leaves no
trace). For every layer weight (parameters named `*weight` with more than one dimension: conv
and linear, not BatchNorm or biases, as in the official `diff_in_weights`) the perturbation is

    v_l = gamma * ||w_l|| * g_l / (||g_l|| + 1e-20),     g_l = d loss / d w_l at w,

the official single proxy SGD step rescaled to gamma * ||w_l||. The training loss is then taken
at w + v. The original weights are saved bit for bit and copied back after backward, before the
optimizer step (`before_step`): the step starts from w with the gradient taken at w + v, so
the weights (and the optimizer's momentum and weight decay) end exactly as that step would
leave them, with no residue of v (the official code steps at w + v and subtracts v, which
leaves lr * wd * v and rounding error behind).

Defaults as in the official scripts: gamma 0.01 for PGD-AT-like bases (pgd_at, mart, te on
pgd_at), 0.005 for TRADES-like ones; warm-up (epochs without perturbation) 0, and 10 for
TRADES-like bases. AWP is on for epochs > warmup_epochs (1-indexed).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator

from advmem.attacks.pgd import current_grad_scale
from advmem.methods.base import Method, WrapsBase
from advmem.recipe.method import METHODS, MethodConfig, method_config

AWP_BASES = ("pgd_at", "trades", "mart", "te")


class AWPConfig(MethodConfig):
    name: Literal["awp"] = "awp"
    base: SerializeAsAny[MethodConfig]
    gamma: float | None = Field(None, ge=0)
    warmup_epochs: int | None = Field(None, ge=0)

    @field_validator("base", mode="before")
    @classmethod
    def _resolve_base(cls, value: Any) -> MethodConfig:
        name = value.name if isinstance(value, MethodConfig) else (
            value if isinstance(value, str) else value.get("name") if isinstance(value, dict) else None)
        if name not in AWP_BASES:
            raise ValueError(f"method.base must be one of {', '.join(AWP_BASES)} (a name or a mapping "
                             f"such as {{name: te, base: trades}}), got {name!r}")
        return method_config(value)

    def check_against(self, recipe) -> None:
        self.base.check_against(recipe)

    @property
    def trades_like(self) -> bool:
        return self.base.name == "trades" or (self.base.name == "te" and self.base.base == "trades")

    @property
    def resolved_gamma(self) -> float:
        return self.gamma if self.gamma is not None else (0.005 if self.trades_like else 0.01)

    @property
    def resolved_warmup(self) -> int:
        return self.warmup_epochs if self.warmup_epochs is not None else (10 if self.trades_like else 0)


def perturbed_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The layer weights AWP perturbs: `*weight` parameters with more than one dimension."""
    return [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1 and p.requires_grad]


@METHODS.register("awp")
class AWP(WrapsBase, Method):
    Config = AWPConfig

    def __init__(self, cfg: AWPConfig, attack, *, num_train, num_classes, device="cpu", label_smoothing=0.0):
        super().__init__(cfg, attack, num_train=num_train, num_classes=num_classes, device=device,
                         label_smoothing=label_smoothing)
        self.base = self.build_base(cfg.base, attack)
        self.gamma = cfg.resolved_gamma
        self.warmup = cfg.resolved_warmup
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def attack(self, model, batch, epoch):
        return self.base.attack(model, batch, epoch)

    def perturbation(self, model, batch, ctx, epoch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(weight, v)] maximizing the base loss at the current weights; BN statistics untouched."""
        params = perturbed_weights(model)
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        was_training = model.training
        model.train()
        try:
            loss, _ = self.base.outer_loss(model, batch, ctx, epoch)
            # fp16: scaled like the attack loss so small gradients do not underflow; each layer's
            # v is normalized, so the scale cancels
            scale = current_grad_scale()
            grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, params, allow_unused=True)
        finally:
            model.train(was_training)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        out = []
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                g_norm = g.norm()
                v = self.gamma * p.norm() / (g_norm + 1e-20) * g
                if scale != 1.0:  # an overflowing fp16 gradient leaves that layer unperturbed, not NaN
                    v = torch.where(torch.isfinite(g_norm), v, torch.zeros_like(v))
                out.append((p, v))
        return out

    def before_loss(self, model, batch, ctx, epoch):
        self.base.before_loss(model, batch, ctx, epoch)
        if epoch <= self.warmup or self.gamma == 0:
            return
        perturbation = self.perturbation(model, batch, ctx, epoch)
        with torch.no_grad():
            self._saved = [(p, p.detach().clone()) for p, _ in perturbation]
            for p, v in perturbation:
                p.add_(v)
        # autocast caches its low-precision copy of each weight until the outermost autocast block
        # ends, and in-place updates do not refresh it: without this the loss would be taken at w
        torch.clear_autocast_cache()

    def outer_loss(self, model, batch, ctx, epoch):
        return self.base.outer_loss(model, batch, ctx, epoch)

    def before_step(self, model):
        if self._saved is not None:
            with torch.no_grad():
                for p, original in self._saved:
                    p.copy_(original)
            self._saved = None
        self.base.before_step(model)

    def after_step(self, model):
        self.base.after_step(model)

    def on_epoch_start(self, epoch):
        self.base.on_epoch_start(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state.get("base", {}))

    def save_artifacts(self, directory) -> None:
        self.base.save_artifacts(directory)

    def sync_state(self, batch, comm) -> None:
        self.base.sync_state(batch, comm)
