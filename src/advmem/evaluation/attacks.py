"""White-box evaluation attacks on tensors: clean, FGSM and PGD-K (CE or CW margin, restarts).

Every runner takes `(model, x, y, settings)` with x in [0,1] and returns per-sample *raw*
correctness of the model on the attacked inputs (a bool tensor on the CPU). Raw means it is
not ANDed with clean correctness: the caller does that for the worst case, and the
"robust above clean" sanity check compares the raw numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advmem.attacks import cross_entropy, cw_margin, pgd

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


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """argmax of the logits in eval mode, batched, on the CPU."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings) -> torch.Tensor:
    return predict(model, x, s.batch_size) == y.cpu()


def pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, *, objective: str = "ce",
                steps: int | None = None, restarts: int | None = None, eps: float | None = None,
                step_size: float | None = None, start: str = "uniform") -> torch.Tensor:
    """Per-sample correctness under PGD; with restarts a point must survive all of them.

    The random starts come from a generator seeded with `s.seed`, so a rerun gives the same
    flags. Batches run in order, so the draws do not depend on the device.
    """
    steps = s.steps if steps is None else steps
    restarts = s.restarts if restarts is None else restarts
    eps = s.eps if eps is None else eps
    step_size = (s.step if eps == s.eps else eps / 4) if step_size is None else step_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(s.seed)
    correct = torch.ones(len(x), dtype=torch.bool)
    for _ in range(restarts):
        for i in range(0, len(x), s.batch_size):
            xb, yb = x[i:i + s.batch_size].to(device), y[i:i + s.batch_size].to(device)
            obj = cw_margin(yb) if objective == "cw" else cross_entropy(yb)
            x_adv = pgd(model, xb, obj, eps=eps, step_size=step_size, steps=steps, norm=s.norm, start=start,
                        generator=generator)
            with torch.no_grad():
                was_training = model.training
                model.eval()
                pred = model(x_adv).argmax(1)
                model.train(was_training)
            correct[i:i + s.batch_size] &= (pred == yb).cpu()
    return correct


def run_white_box(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings) -> torch.Tensor:
    if name == "clean":
        return clean_correct(model, x, y, s)
    if name == "fgsm":
        return pgd_correct(model, x, y, s, steps=1, restarts=1, step_size=s.eps, start="none")
    if name == "pgd":
        return pgd_correct(model, x, y, s, objective="ce")
    if name == "pgd-cw":
        return pgd_correct(model, x, y, s, objective="cw")
    raise ValueError(name)
