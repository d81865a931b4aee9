"""MART (Wang et al., ICLR 2020): misclassification-aware adversarial training.

As in the official code (YisenWang/MART, `mart_loss`): the attack is PGD on cross-entropy from
x + 0.001 * N(0, 1) (eval mode); the loss is

    BCE(p_adv, y) = CE(f(x_adv), y) - log(1.0001 - p_adv[y_hat])   y_hat: the most likely wrong class
    + beta * (1/B) sum_i KL(p_nat,i || p_adv,i) * (1.0000001 - p_nat,i[y_i])

with p = softmax, natural logits from a train-mode forward, nothing detached, and the
official constants (1e-12 inside the logs of p_adv). beta = 6 as in the paper's CIFAR-10 setting.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from advmem.attacks import cross_entropy
from advmem.methods.base import Method, accuracy_log
from advmem.recipe.method import METHODS, MethodConfig


class MARTConfig(MethodConfig):
    name: Literal["mart"] = "mart"
    beta: float = Field(6.0, ge=0)


def mart_loss(nat_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """The official MART training loss (mean over the batch)."""
    adv_probs = F.softmax(adv_logits, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(adv_logits, y, label_smoothing=label_smoothing) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(nat_logits, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    loss_robust = (kl * (1.0000001 - true_probs)).sum() / y.shape[0]
    return loss_adv + beta * loss_robust


@METHODS.register("mart")
class MART(Method):
    Config = MARTConfig
    default_start = "gaussian"

    def attack_objective(self, batch, clean_logits):
        return cross_entropy(batch.y)

    def loss_and_logits(self, model, batch, ctx, epoch):
        nat = model(batch.x)
        adv = model(ctx.x_adv)
        loss = mart_loss(nat, adv, batch.y, self.cfg.beta, self.label_smoothing)
        logs = {"acc": accuracy_log(adv, batch.y), "nat_acc": accuracy_log(nat, batch.y)}
        return loss, logs, {"natural": nat, "adversarial": adv}
