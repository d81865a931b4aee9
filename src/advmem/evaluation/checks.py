"""Sanity flags for a robustness evaluation, in the spirit of AutoAttack's checks.

Each check is cheap (a fixed subset of at most `n` points, few steps) and returns a `Check`
saying whether the result looks untrustworthy and why. They catch the usual signs of
gradient masking or a broken model wrapper:

- `more_steps_weaker`: robust accuracy *rises* with more PGD steps (1 -> K/4 -> K). A
  working gradient makes more steps at least as strong. (Restarts cannot raise it here: a
  point counts as robust only if it survives every restart.)
- `black_box_stronger`: Square (query-based, no gradients; pyautoattack, 1000 queries)
  breaks clearly more points than PGD-max(K,20) with the CE and CW objectives.
- `gradients_masked`: the input gradient of the CW margin is exactly zero or non-finite on
  many points (>= 10%). The margin, unlike the cross-entropy, does not saturate at high
  confidence, so a zero gradient means the model blocks gradients.
- `robust_above_clean`: accuracy under an attack is above the clean accuracy (the attack
  helped the model: randomness or a broken gradient).
- `large_eps_not_zero`: at a budget that contains every image (Linf 1, L2 sqrt(d)), PGD
  should drive accuracy to 0; if it does not, the attack is not finding what exists.

Tolerances are in points, not percent: `max(2 / n, 0.002)` (AutoAttack uses 0.2% on 10k
points; on 64 points a single point is 1.6%, so two points are allowed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from advmem.attacks import attack_mode, cw_margin
from advmem.evaluation.attacks import AttackSettings, clean_correct, pgd_correct
from advmem.evaluation.autoattack import aa_logging, make_autoattack

CHECK_NAMES = ("more_steps_weaker", "black_box_stronger", "gradients_masked", "robust_above_clean",
               "large_eps_not_zero")
GRADIENT_FRACTION = 0.10
SQUARE_QUERIES = 1000


@dataclass
class Check:
    name: str
    flagged: bool
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerance(n: int) -> float:
    return max(2.0 / max(n, 1), 0.002)


def _acc(flags: torch.Tensor) -> float:
    return flags.float().mean().item() if flags.numel() else float("nan")


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-sample input gradient of the CW margin (eval mode, weight gradients off)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    grads = []
    with attack_mode(model, "eval"):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).clone().requires_grad_(True)
            yb = y[i:i + batch_size].to(device)
            loss = cw_margin(yb)(model(xb)).sum()
            (g,) = torch.autograd.grad(loss, xb, allow_unused=True) if loss.requires_grad else (None,)
            grads.append((torch.zeros_like(xb) if g is None else g).detach().cpu())
    return torch.cat(grads)


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings) -> Check:
    g = input_gradients(model, x, y, s.batch_size).flatten(1)
    nonfinite = ~torch.isfinite(g).all(dim=1)
    zero = (g.abs().sum(dim=1) == 0) & ~nonfinite
    frac_zero, frac_nonfinite = _acc(zero), _acc(nonfinite)
    flagged = frac_zero + frac_nonfinite >= GRADIENT_FRACTION
    detail = (f"input gradient zero on {int(zero.sum())}/{len(g)} points, non-finite on {int(nonfinite.sum())}/{len(g)}"
              + (" (gradient masking or a broken model: gradient attacks are unreliable)" if flagged else ""))
    return Check("gradients_masked", bool(flagged), detail,
                 {"frac_zero": frac_zero, "frac_nonfinite": frac_nonfinite, "threshold": GRADIENT_FRACTION})


def check_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings,
                raw: dict[str, torch.Tensor]) -> Check:
    ladder = sorted({1, max(1, s.steps // 4), s.steps})
    accs = {}
    for k in ladder:
        flags = pgd_correct(model, x, y, s, steps=k, restarts=1, count="last")
        raw[f"pgd{k}"] = flags
        accs[k] = _acc(flags)
    tol = tolerance(len(x))
    rises = [(a, b) for i, a in enumerate(ladder) for b in ladder[i + 1:] if accs[b] > accs[a] + tol]
    text = ", ".join(f"PGD-{k} {100 * accs[k]:.1f}%" for k in ladder)
    detail = text + (f"; accuracy rises from {rises[0][0]} to {rises[0][1]} steps (the gradient misleads the attack)"
                     if rises else "")
    return Check("more_steps_weaker", bool(rises), detail, {"accuracy_by_steps": {str(k): v for k, v in accs.items()},
                                                            "tolerance": tol})


def check_black_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, num_classes: int,
                    raw: dict[str, torch.Tensor]) -> Check:
    clean = raw.get("clean")
    if clean is None:
        clean = raw["clean"] = clean_correct(model, x, y, s)
    k = max(s.steps, 20)  # judge the gradients, not a deliberately short --steps
    white = (clean & pgd_correct(model, x, y, s, objective="ce", steps=k)
             & pgd_correct(model, x, y, s, objective="cw", steps=k))
    idx = clean.nonzero().squeeze(1)
    square = clean.clone()
    if len(idx):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        with aa_logging(None):
            aa = make_autoattack(model, tier="square", eps=s.eps, norm=s.norm, seed=s.seed, num_classes=num_classes,
                                 device=device)
            aa.square.n_queries = SQUARE_QUERIES
            _, y_adv = aa.run_standard_evaluation(x[idx].cpu(), y[idx].cpu(), batch_size=s.batch_size)
        model.train(was_training)
        square[idx] = y_adv.cpu() == y[idx].cpu()
    wb, bb = _acc(white), _acc(square)
    only_square = int((white & ~square).sum())
    tol = tolerance(len(x))
    flagged = bb < wb - tol
    detail = (f"Square ({SQUARE_QUERIES} queries) {100 * bb:.1f}% vs white-box PGD-{k} CE+CW {100 * wb:.1f}%; "
              f"{only_square} points broken only by Square"
              + (" (black-box beats white-box: gradients are masked or misleading)" if flagged else ""))
    return Check("black_box_stronger", bool(flagged), detail,
                 {"square_acc": bb, "white_box_acc": wb, "only_square": only_square, "tolerance": tol})


def check_above_clean(clean_acc: float, raw_accs: dict[str, float], n: int) -> Check:
    tol = 0.0
    above = {k: v for k, v in raw_accs.items() if v > clean_acc + tol}
    if above:
        k, v = max(above.items(), key=lambda kv: kv[1])
        detail = f"accuracy under {k} {100 * v:.1f}% is above clean {100 * clean_acc:.1f}% (randomness or a broken gradient)"
    else:
        detail = f"no attack raises accuracy above clean {100 * clean_acc:.1f}%"
    return Check("robust_above_clean", bool(above), detail, {"clean_acc": clean_acc, "above": above})


def large_budget(norm: str, x: torch.Tensor) -> float:
    """A budget containing all of [0,1]^d around any point: 1 (Linf) or sqrt(d) (L2)."""
    return 1.0 if norm == "Linf" else math.sqrt(x[0].numel())


def check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings) -> Check:
    eps = large_budget(s.norm, x)
    flags = (pgd_correct(model, x, y, s, eps=eps, step_size=eps / 10, steps=20, restarts=1, objective="cw")
             & pgd_correct(model, x, y, s, eps=eps, step_size=eps / 10, steps=20, restarts=1, objective="ce"))
    acc = _acc(flags)
    tol = tolerance(len(x))
    flagged = acc > tol
    detail = (f"PGD-20 (CE and CW) at eps={eps:.3g} ({s.norm}, the whole input box): {100 * acc:.1f}% accuracy"
              + (" (should reach 0: the attack cannot find adversarial inputs that exist)" if flagged else ""))
    return Check("large_eps_not_zero", bool(flagged), detail, {"eps": eps, "accuracy": acc, "tolerance": tol})


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AttackSettings, *, num_classes: int,
               full_clean_acc: float | None = None, full_raw_accs: dict[str, float] | None = None,
               n: int = 64) -> list[Check]:
    """All checks on the first `n` points of (x, y); `full_*` from the evaluation itself feed
    `robust_above_clean` (with the subset's PGD ladder as well)."""
    x, y = x[:n], y[:n]
    raw: dict[str, torch.Tensor] = {"clean": clean_correct(model, x, y, s)}
    checks = [check_gradients(model, x, y, s), check_steps(model, x, y, s, raw)]
    checks.append(check_black_box(model, x, y, s, num_classes, raw))
    sub_clean = _acc(raw["clean"])
    sub_raw = {f"PGD-{k[3:]} (check subset)": _acc(v) for k, v in raw.items() if k.startswith("pgd")}
    above = check_above_clean(sub_clean, sub_raw, len(x))
    if full_clean_acc is not None and full_raw_accs:
        full = check_above_clean(full_clean_acc, full_raw_accs, 0)
        if full.flagged or not above.flagged:
            above = full if full.flagged else above
    checks.append(above)
    checks.append(check_large_eps(model, x, y, s))
    return checks
