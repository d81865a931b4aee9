"""Standard (non-adversarial) training: cross-entropy on the natural inputs."""

from __future__ import annotations

from typing import Literal

from advmem.methods.base import AdvContext, Method, accuracy_log
from advmem.recipe.method import METHODS, MethodConfig


class StandardConfig(MethodConfig):
    name: Literal["standard"] = "standard"


@METHODS.register("standard")
class Standard(Method):
    Config = StandardConfig
    fits_labels_on = "natural"

    def attack(self, model, batch, epoch):
        return AdvContext(x_adv=None)

    def loss_and_logits(self, model, batch, ctx, epoch):
        logits = model(batch.x)
        return self.ce(logits, batch.y), {"acc": accuracy_log(logits, batch.y)}, {"natural": logits}
