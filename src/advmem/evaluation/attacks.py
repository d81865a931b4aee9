"""White-box evaluation attacks on tensors: clean, FGSM and PGD-K (CE or CW margin, restarts).

Every runner takes `(model, x, y, settings)` with x in [0,1] and returns per-sample *raw*
correctness of the model on the attacked inputs (a bool tensor on the CPU). Raw means it is
not ANDed with clean correctness: the caller does that for the worst case, and the
"robust above clean" sanity check compares the raw numbers.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from advmem.attacks import OBJECTIVES, attack_mode, pgd
from advmem.attacks.attack_view import attack_model, use_attack_view

WHITE_BOX = ("clean", "fgsm", "pgd", "pgd-cw")


@dataclass(frozen=True)
class AttackSettings:
    """Everything that changes an attack's result (part of the resume fingerprint)."""

    eps: float
    norm: str = "Linf"
    steps: int = 20
    restarts: int = 1
    step_size: float | None = None  # None: eps/4 (2/255 at 8/255 after 20 steps, as in RO/BoT evals)
    seed: int = 0
    batch_size: int = 256

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4


@contextmanager
def exact_view(enabled: bool = True) -> Iterator[None]:
    """Attacks inside run through the attack view's `fast_pool` rewrite only: max-pool before ReLU
    through the NHWC kernel, equal to the model bit for bit, forward and input gradient (see
    advmem.attacks.attack_view), so no flag can change; on a CPU it saves the NCHW max-pool kernel
    on every attack step. `fold_bn` stays off: folding BatchNorm changes the rounding, and at the
    decision boundary a rounding can flip a flag."""
    with use_attack_view(fold_bn=False, fast_pool=True) if enabled else nullcontext():
        yield


def exact_model(model: nn.Module) -> nn.Module:
    """What a third-party attack (pyautoattack) should call inside `exact_view()`: the bit-exact
    view of `model` in eval mode, or `model` itself when nothing is rewritten or the view is off.
    The view shares the model's modules, so its own `training` flag must be the model's: a caller
    that restores the mode it found (pyautoattack's runner does) would otherwise put the model's
    BatchNorms into training mode."""
    view = attack_model(model, "eval")
    if view is not model:
        view.training = model.training
    return view


OnBatch = Callable[[int], None] | None  # called with each batch's size (a progress display)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, on_batch: OnBatch = None) -> torch.Tensor:
    """argmax of the logits in eval mode, batched, on the CPU."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
            if on_batch is not None:
                on_batch(len(out[-1]))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings,
                  on_batch: OnBatch = None) -> torch.Tensor:
    return predict(model, x, s.batch_size, on_batch) == y.cpu()


def pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, *, objective: str = "ce",
                steps: int | None = None, restarts: int | None = None, eps: float | None = None,
                step_size: float | None = None, start: str = "uniform", count: str = "any",
                on_batch: OnBatch = None) -> torch.Tensor:
    """Per-sample correctness under PGD; with restarts a point must survive all of them.

    `count="any"` (evaluation): a point is broken if *any* iterate misclassifies it, since
    every iterate is a valid input in the ball (as AutoAttack keeps the best point; it costs
    nothing, the logits of each iterate are computed anyway). `count="last"`: only the final
    iterate counts (the sanity checks use it to see whether more steps help).
    The random starts come from a generator seeded with `s.seed`, so a rerun gives the same flags.
    `on_batch(n)`: after each batch of each restart.
    """
    steps = s.steps if steps is None else steps
    restarts = s.restarts if restarts is None else restarts
    eps = s.eps if eps is None else eps
    step_size = (s.step if eps == s.eps else eps / 4) if step_size is None else step_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(s.seed)
    correct = torch.ones(len(x), dtype=torch.bool)
    make_objective = OBJECTIVES.get(objective)
    for _ in range(restarts):
        for i in range(0, len(x), s.batch_size):
            xb, yb = x[i:i + s.batch_size].to(device), y[i:i + s.batch_size].to(device)
            obj = make_objective(yb)
            ok = _pgd_batch(model, xb, yb, obj, eps=eps, step_size=step_size, steps=steps, norm=s.norm, start=start,
                            generator=generator, count=count)
            correct[i:i + s.batch_size] &= ok.cpu()
            if on_batch is not None:
                on_batch(len(xb))
    return correct


def _pgd_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective, *, eps: float, step_size: float,
               steps: int, norm: str, start: str, generator: torch.Generator, count: str) -> torch.Tensor:
    """advmem.attacks.pgd, recording whether each iterate is classified correctly."""
    x = x.detach()
    correct = torch.ones(len(x), dtype=torch.bool, device=x.device)

    def record(logits: torch.Tensor) -> None:
        correct.logical_and_(logits.argmax(1) == y)

    x_adv = pgd(model, x, objective, eps=eps, step_size=step_size, steps=steps, norm=norm, start=start,
                generator=generator, on_logits=record if count == "any" else None)
    with attack_mode(model, "eval"), torch.no_grad():
        correct &= model(x_adv).argmax(1) == y
    return correct


def passes(name: str, s: AttackSettings) -> int:
    """How many times `run_white_box(name, ...)` goes over the points (its restarts)."""
    return s.restarts if name in ("pgd", "pgd-cw") else 1


def run_white_box(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings,
                  on_batch: OnBatch = None) -> torch.Tensor:
    if name == "clean":
        return clean_correct(model, x, y, s, on_batch)
    if name == "fgsm":
        return pgd_correct(model, x, y, s, steps=1, restarts=1, step_size=s.eps, start="none", on_batch=on_batch)
    if name == "pgd":
        return pgd_correct(model, x, y, s, objective="ce", on_batch=on_batch)
    if name == "pgd-cw":
        return pgd_correct(model, x, y, s, objective="cw", on_batch=on_batch)
    raise ValueError(name)
