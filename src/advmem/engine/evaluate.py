"""Per-sample clean and robust evaluation, shared by the trainer, `advmem eval` and analyses.

Clean passes run under `torch.inference_mode`. Robust passes run PGD with its own generator,
so evaluating never shifts the training RNG. With restarts, a sample counts as robust only if
it survives every restart (per-sample worst case) and its loss is the largest found.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import OBJECTIVES, pgd
from advmem.progress import Progress, pass_of
from advmem.strict import budget_value


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
def clean_per_sample(model: nn.Module, dataset, batch_size: int = 256,
                     on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """`on_batch(n)`: called after each batch of n images (a progress display)."""
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
            if on_batch is not None:
                on_batch(batch.y.shape[0])
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


@full_fp32()
def robust_per_sample(model: nn.Module, dataset, attack: EvalAttack, batch_size: int = 256,
                      generator: torch.Generator | None = None,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """`on_batch(n)`: called after each batch of n images, all its restarts done."""
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
        if on_batch is not None:
            on_batch(batch.y.shape[0])
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


def summarize(per_sample: dict[str, torch.Tensor]) -> dict[str, float]:
    if per_sample["correct"].numel() == 0:
        return {"acc": float("nan"), "loss": float("nan")}
    stats = torch.stack([per_sample["correct"].float().mean(), per_sample["loss"].float().mean()]).tolist()
    return {"acc": stats[0], "loss": stats[1]}


def evaluate_split(model: nn.Module, name: str, dataset, attack: EvalAttack, batch_size: int,
                   generator: torch.Generator, *, robust_set=None, progress: Progress | None = None) -> dict[str, float]:
    """Clean accuracy and loss on `dataset`, then robust ones under `attack` on `robust_set` (default
    `dataset`; skipped when empty), as `{name}_nat_acc`, `{name}_nat_loss`, `{name}_rob_acc`,
    `{name}_rob_loss`: the one per-split evaluation of the trainer, the EMA and the callbacks.
    `progress`: the phase whose display shows each pass."""
    robust_set = dataset if robust_set is None else robust_set
    with pass_of(progress, f"{name} clean", len(dataset)) as bar:
        clean = summarize(clean_per_sample(model, dataset, batch_size, on_batch=bar.update))
    out = {f"{name}_nat_acc": clean["acc"], f"{name}_nat_loss": clean["loss"]}
    if len(robust_set) == 0:
        return out
    label = f"{name} PGD-{attack.steps}" + (f"x{attack.restarts}" if attack.restarts > 1 else "")
    with pass_of(progress, label, len(robust_set)) as bar:
        rob = summarize(robust_per_sample(model, robust_set, attack, batch_size, generator=generator,
                                          on_batch=bar.update))
    out[f"{name}_rob_acc"], out[f"{name}_rob_loss"] = rob["acc"], rob["loss"]
    return out


def eval_attack_of(recipe) -> EvalAttack:
    """The attack of the per-epoch evaluation: `eval.attack`, its eps and step size defaulting to training's."""
    e = recipe.eval.attack
    return EvalAttack(
        eps=budget_value(e.eps) if e.eps is not None else recipe.attack.eps_value,
        step_size=budget_value(e.step_size) if e.step_size is not None else recipe.attack.step_value,
        steps=e.steps, norm=recipe.attack.norm, restarts=e.restarts,
    )


def eval_cost_note(recipe, *, n_train: int, n_train_eval: int, n_val: int, n_test: int) -> str | None:
    """One line when the per-epoch evaluation costs more than the epoch's training, else None.

    A rough count of forward+backward passes, averaged over `eval.every`: training runs the attack's
    steps plus one update pass on every training image; evaluation runs one clean forward and the
    evaluation attack's steps x restarts on the train subset, the validation and the test images."""
    steps = recipe.eval.attack.steps * recipe.eval.attack.restarts
    n_eval = n_train_eval + n_val + n_test
    evaluation = n_eval * (1 + steps) / recipe.eval.every
    training = n_train * (recipe.attack.steps + 1)
    if training <= 0 or evaluation <= training:
        return None
    test = f"{recipe.data.test_size}" if recipe.data.test_size is not None else f"unset: all {n_test}"
    return (f"note: evaluation costs about {evaluation / training:.1f}x the training of an epoch (PGD-{steps} on "
            f"{n_eval} images every {recipe.eval.every} epoch(s), vs {recipe.attack.steps + 1} passes over "
            f"{n_train} training images); for a faster run lower data.test_size (now {test}) or "
            "eval.train_subset, or raise eval.every")
