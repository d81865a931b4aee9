"""Attacks: PGD and FGSM over any objective of the logits."""

from advmem.attacks.objectives import OBJECTIVES, Objective, cross_entropy, cw_margin, kl_to_clean
from advmem.attacks.pgd import attack_mode, fgsm, pgd, project, random_start

__all__ = [
    "OBJECTIVES", "Objective", "attack_mode", "cross_entropy", "cw_margin", "fgsm", "kl_to_clean",
    "pgd", "project", "random_start",
]
