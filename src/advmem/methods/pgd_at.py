"""PGD-AT (Madry et al. 2018): minimize cross-entropy on PGD adversarial examples."""

from __future__ import annotations

from typing import Literal

from advmem.attacks import cross_entropy
from advmem.methods.base import AdvContext, Method, accuracy_log
from advmem.methods.config import MethodConfig
from advmem.methods.registry import register_method


class PGDATConfig(MethodConfig):
    name: Literal["pgd_at"] = "pgd_at"


@register_method("pgd_at")
class PGDAT(Method):
    Config = PGDATConfig
    default_start = "uniform"

    def attack(self, model, batch, epoch):
        return AdvContext(x_adv=self.run_pgd(model, batch.x, cross_entropy(batch.y)))

    def outer_loss(self, model, batch, ctx, epoch):
        logits = model(ctx.x_adv)
        return self.ce(logits, batch.y), {"acc": accuracy_log(logits, batch.y)}
