"""Per-sample clean and robust evaluation, shared by the trainer, `advmem eval` and analyses.

Clean passes run under `torch.inference_mode`. Robust passes run PGD with its own generator,
so evaluating never shifts the training RNG. With restarts, a sample counts as robust only if
it survives every restart (per-sample worst case) and its loss is the largest found.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import OBJECTIVES, pgd


@dataclass(frozen=True)
class EvalAttack:
    eps: float
    step_size: float
    steps: int
    norm: str = "Linf"
    restarts: int = 1
    objective: str = "ce"
    start: str = "uniform"


@contextmanager
def full_fp32() -> Iterator[None]:
    """Evaluation in true fp32: on Ampere and later GPUs cuDNN runs fp32 convolutions in TF32 by
    default (10-bit mantissa), which an attack's gradient and a robust-accuracy figure should not
    depend on. Also a decorator; a no-op on CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin z_y - max_{j != y} z_j (positive when correct)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return true - other


@full_fp32()
def clean_per_sample(model: nn.Module, dataset, batch_size: int = 256) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    out = {"correct": [], "loss": [], "margin": [], "index": []}
    with torch.inference_mode():
        for batch in dataset.batches(batch_size, shuffle=False):
            logits = model(batch.x).float()
            out["correct"].append(logits.argmax(1) == batch.y)
            out["loss"].append(F.cross_entropy(logits, batch.y, reduction="none"))
            out["margin"].append(margins(logits, batch.y))
            out["index"].append(batch.index)
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


@full_fp32()
def robust_per_sample(model: nn.Module, dataset, attack: EvalAttack, batch_size: int = 256,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    out = {"correct": [], "loss": [], "margin": [], "index": []}
    for batch in dataset.batches(batch_size, shuffle=False):
        correct = torch.ones_like(batch.y, dtype=torch.bool)
        worst_loss = torch.full(batch.y.shape, float("-inf"), device=batch.y.device)
        worst_margin = torch.full(batch.y.shape, float("inf"), device=batch.y.device)
        objective = OBJECTIVES.get(attack.objective)(batch.y)
        for _ in range(attack.restarts):
            x_adv = pgd(model, batch.x, objective, eps=attack.eps, step_size=attack.step_size,
                        steps=attack.steps, norm=attack.norm, start=attack.start, generator=generator)
            with torch.inference_mode():
                logits = model(x_adv).float()
                correct &= logits.argmax(1) == batch.y
                worst_loss = torch.maximum(worst_loss, F.cross_entropy(logits, batch.y, reduction="none"))
                worst_margin = torch.minimum(worst_margin, margins(logits, batch.y))
        out["correct"].append(correct)
        out["loss"].append(worst_loss)
        out["margin"].append(worst_margin)
        out["index"].append(batch.index)
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


def summarize(per_sample: dict[str, torch.Tensor]) -> dict[str, float]:
    if per_sample["correct"].numel() == 0:
        return {"acc": float("nan"), "loss": float("nan")}
    stats = torch.stack([per_sample["correct"].float().mean(), per_sample["loss"].float().mean()]).tolist()
    return {"acc": stats[0], "loss": stats[1]}
