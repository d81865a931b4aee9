"""PGD-AT (Madry et al. 2018): minimize cross-entropy on PGD adversarial examples."""

from __future__ import annotations

from typing import Literal

from advmem.attacks import cross_entropy
from advmem.methods.base import Method, accuracy_log
from advmem.recipe.method import METHODS, MethodConfig


class PGDATConfig(MethodConfig):
    name: Literal["pgd_at"] = "pgd_at"


@METHODS.register("pgd_at")
class PGDAT(Method):
    Config = PGDATConfig
    default_start = "uniform"

    def attack_objective(self, batch, clean_logits):
        return cross_entropy(batch.y)

    def loss_and_logits(self, model, batch, ctx, epoch):
        logits = model(ctx.x_adv)
        return self.ce(logits, batch.y), {"acc": accuracy_log(logits, batch.y)}, {"adversarial": logits}
