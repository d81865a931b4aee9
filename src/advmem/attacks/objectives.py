"""Attack objectives: functions of the logits returning a per-sample loss to maximize.

An objective is any callable `logits -> (N,) tensor`; PGD ascends its sum. Methods compose
their own (TRADES' KL to the clean prediction, TE's squared error to the ensemble target).
Objectives of the labels, which evaluation attacks name (`pgd-cw`, `EvalAttack.objective`), are
registered in OBJECTIVES: `OBJECTIVES.get(name)(y)` is the objective for labels y.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from advmem.registry import Registry

OBJECTIVES = Registry("attack objective")

Objective = Callable[[torch.Tensor], torch.Tensor]


@OBJECTIVES.register("ce")
def cross_entropy(y: torch.Tensor) -> Objective:
    return lambda logits: F.cross_entropy(logits.float(), y, reduction="none")


def kl_to_clean(clean_logits: torch.Tensor) -> Objective:
    """KL(softmax(clean) || softmax(adv)) per sample, the TRADES inner objective."""
    clean_log_probs = F.log_softmax(clean_logits.detach().float(), dim=1)
    clean_probs = clean_log_probs.exp()

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return (clean_probs * (clean_log_probs - F.log_softmax(logits.float(), dim=1))).sum(dim=1)

    return objective


@OBJECTIVES.register("cw")
def cw_margin(y: torch.Tensor, kappa: float = float("inf")) -> Objective:
    """Carlini-Wagner margin max_{j != y} z_j - z_y (positive once misclassified)."""

    def objective(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        margin = other - true
        return margin.clamp(max=kappa) if kappa != float("inf") else margin

    return objective

