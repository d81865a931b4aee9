"""TRADES (Zhang et al. 2019): CE on natural inputs + beta * KL(f(x) || f(x_adv)).

The attack maximizes KL to the clean prediction, which is computed once per batch (eval mode,
no graph) rather than at every attack step as in the reference code: same result, 10F less.
The outer natural logits come from a train-mode forward and are not detached inside the KL,
as in the original TRADES code. The random start (x + 0.001 N(0, I)) is not clamped into
[0,1] before the first attack gradient, as in the TRADES code and Dong et al.'s
(`attack.start_clamp`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from advmem.attacks import attack_mode, kl_to_clean
from advmem.attacks.attack_view import attack_model
from advmem.methods.base import Method, accuracy_log
from advmem.recipe.method import METHODS, MethodConfig


class TRADESConfig(MethodConfig):
    name: Literal["trades"] = "trades"
    beta: float = Field(6.0, ge=0)


def trades_kl(nat_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i KL(softmax(nat_i) || softmax(adv_i)), the TRADES regularizer."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(nat_logits, dim=1), reduction="batchmean")


@METHODS.register("trades")
class TRADES(Method):
    Config = TRADESConfig
    default_start = "gaussian"
    default_start_clamp = False  # the authors' trades_loss and TRADES_TE (attack.start_clamp)
    fits_labels_on = "natural"

    def clean_logits(self, model, x):
        with attack_mode(model, self.attack_cfg.bn_mode), torch.no_grad():
            return attack_model(model, self.attack_cfg.bn_mode)(x)

    def attack_objective(self, batch, clean_logits):
        return kl_to_clean(clean_logits)

    def loss_objective(self, batch, clean_logits):
        """beta * KL: the loss weights the KL the attack maximizes (TRADES_TE's attack term)."""
        kl, beta = kl_to_clean(clean_logits), self.cfg.beta
        return lambda logits: beta * kl(logits)

    def loss_and_logits(self, model, batch, ctx, epoch):
        nat = model(batch.x)  # the natural forward first, as in the TRADES code (BatchNorm statistics)
        adv = model(ctx.x_adv)
        loss = self.ce(nat, batch.y) + self.cfg.beta * trades_kl(nat, adv)
        logs = {"acc": accuracy_log(adv, batch.y), "nat_acc": accuracy_log(nat, batch.y)}
        return loss, logs, {"natural": nat, "adversarial": adv}
