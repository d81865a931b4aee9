"""Gradient-instability probe: how much the training-loss gradient changes under small weight perturbations.

For each run, at one checkpoint theta and a fixed, seeded batch of training samples (no
augmentation), the probe perturbs the weights to theta + alpha*d for a log-spaced grid of
relative sizes alpha and several random filter-normalized directions d (Li et al. 2018: per
filter -- a row of a Linear weight, an output channel of a conv -- d is rescaled to the norm of
that filter of theta, so ||alpha*d_i|| = alpha*||theta_i||; 1-D parameters, i.e. biases and
BatchNorm scales/shifts, get a zero direction). At each perturbed point it

  * re-solves the inner maximization with the method's own `attack` (the random start drawn
    from the same seed at every alpha, so only the weights differ), then takes the gradient g
    of the method's own training loss (`outer_loss`, model in train mode as in the trainer:
    BatchNorm uses batch statistics; running statistics are restored after every evaluation
    so nothing drifts);
  * and, separately, takes the same gradient with the adversarial examples held fixed at
    those of theta, which isolates the part of the change due to re-solving the inner max.

It reports ||g(theta + alpha d) - g(theta)|| / ||g(theta)||, mean and standard deviation over
the directions, in grad_stability.json, and draws every run on one log-log plot
(grad_stability.png: solid = examples re-solved, dashed = examples fixed). For `standard`
training the two curves coincide. Dong et al. (ICLR 2022) report that PGD-AT's gradient
changes abruptly even for tiny alpha while TRADES' stays smooth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from advmem.analysis.cli import ANALYSES
from advmem.analysis.common import (CHECKPOINT_HELP, add_probe_arguments, check_runs, open_run, probe_options,
                                    positive_int, seeded_rows)
from advmem.io import atomic_write_bytes, atomic_write_json
from advmem.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI's parser does not import it
    import torch
    from torch import nn

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, -1, 7))


def filter_normalized_direction(params: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction rescaled filter-wise to the norms of `params` (zero for 1-D params).

    A filter is a slice along the first dimension: an output unit of a Linear weight or an
    output channel of a conv kernel. Draws are made on CPU from `generator`, so the direction
    does not depend on the device.
    """
    import torch
    directions = []
    for p in params:
        if p.dim() <= 1:
            directions.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        p_norm = p.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        directions.append(d * (p_norm / d_norm).view(-1, *([1] * (p.dim() - 1))))
    return directions


def gradient_change(model: nn.Module, method, batch, *, alphas: Sequence[float] = DEFAULT_ALPHAS, directions: int = 5,
                    seed: int = 0, epoch: int = 1) -> dict[str, Any]:
    """Relative gradient change at theta + alpha*d, with the examples re-solved and held fixed.

    Returns `alphas`, `grad_norm` (||g(theta)||) and, for `regenerated` and `fixed`, the
    per-direction values (directions x alphas) with their mean and std over directions.
    The model's weights, buffers and mode, and the method's state, are restored afterwards.
    """
    import torch

    # torch: only when an analysis runs (the CLI's parser imports this module)
    from advmem.methods.loss_gradient import LossGradient

    alphas = [float(a) for a in alphas]
    ev = LossGradient(model, method, batch, epoch=epoch, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    regenerated = np.zeros((directions, len(alphas)))
    fixed = np.zeros((directions, len(alphas)))
    try:
        ev.set_weights()
        ctx0 = ev.attack()
        g0 = ev.gradient(ctx0)
        g0_norm = float(g0.norm())
        if not g0_norm > 0 or not math.isfinite(g0_norm):
            raise UserError(f"the training-loss gradient at the checkpoint has norm {g0_norm}; "
                            "the relative change is undefined (try another --checkpoint or --seed)")
        for j in range(directions):
            direction = filter_normalized_direction(ev.theta, gen)
            for k, alpha in enumerate(alphas):
                ev.set_weights(alpha, direction)
                g = ev.gradient(ev.attack())
                regenerated[j, k] = float((g - g0).norm()) / g0_norm
                ev.set_weights(alpha, direction)
                g = ev.gradient(ctx0)
                fixed[j, k] = float((g - g0).norm()) / g0_norm
    finally:
        ev.restore()

    def stats(values: np.ndarray) -> dict[str, Any]:
        return {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist(),
                "per_direction": values.tolist()}

    return {"alphas": alphas, "grad_norm": g0_norm, "regenerated": stats(regenerated), "fixed": stats(fixed)}


def probe_batch(bundle, batch_size: int, seed: int):
    """A fixed, seeded batch of training samples (their training labels, no augmentation)."""
    rows = seeded_rows(len(bundle.train), batch_size, seed)
    subset = bundle.train.subset(rows)
    return next(subset.batches(len(subset), shuffle=False))


def probe_run(run_dir: str | Path, *, checkpoint: str = "last", alphas: Sequence[float] | None = None,
              directions: int = 5, batch_size: int = 128, seed: int = 0,
              device: torch.device | str | None = None) -> dict[str, Any]:
    """The probe on one run directory at one checkpoint."""
    run = open_run(run_dir, checkpoint, device)
    batch = probe_batch(run.bundle, batch_size, seed)
    result = gradient_change(run.model, run.method, batch, alphas=alphas or DEFAULT_ALPHAS, directions=directions,
                             seed=seed, epoch=max(run.epoch, 1))
    a = run.recipe.attack
    return {
        "run": run.name,
        "path": str(run.path),
        "method": run.recipe.method.name,
        "checkpoint": checkpoint,
        "checkpoint_epoch": run.epoch,
        **result,
        "settings": {
            "directions": directions,
            "batch_size": int(batch.y.shape[0]),
            "seed": seed,
            "direction": "Gaussian, filter-normalized (Li et al. 2018); biases and BatchNorm parameters: zero",
            "relative_size": "||alpha d_i|| / ||theta_i|| = alpha for every filter i",
            "attack": {"norm": a.norm, "eps": a.eps, "step_size": a.step_size, "steps": a.steps,
                       "start": run.method.start, "bn_mode": a.bn_mode},
            "loss_bn_mode": "train (batch statistics, as in the trainer); running statistics restored after each evaluation",
            "method_state": run.method_state,
            "data": "fixed seeded batch of training samples with their training labels, no augmentation",
        },
    }


def plot_grad_stability(results: list[dict[str, Any]], path: Path) -> None:
    """All runs on one log-log plot: solid = examples re-solved, dashed = held fixed; one colour per run."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, res in enumerate(results):
        colour = colours[i % len(colours)]
        alphas = np.asarray(res["alphas"])
        keep = alphas > 0  # alpha = 0 has no place on a log axis
        for key, style, label in (("regenerated", "-", "x_adv re-solved"), ("fixed", "--", "x_adv fixed")):
            mean = np.asarray(res[key]["mean"])[keep]
            std = np.asarray(res[key]["std"])[keep]
            ax.plot(alphas[keep], mean, style, marker="o", ms=3, color=colour,
                    label=f"{res['run']} ({res['method']}): {label}")
            lower = np.clip(mean - std, mean * 1e-3, None)
            ax.fill_between(alphas[keep], lower, mean + std, color=colour, alpha=0.12, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"relative weight perturbation $\alpha$ (per filter, $\|\alpha d_i\| / \|\theta_i\|$)")
    ax.set_ylabel(r"relative gradient change $\|g(\theta+\alpha d) - g(\theta)\| / \|g(\theta)\|$")
    ax.set_title("Gradient stability of the training loss (mean ± std over directions)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def probe_runs(run_dirs: list[Path], out_dir: Path, *, checkpoint: str = "last", alphas: Sequence[float] | None = None,
               directions: int = 5, batch_size: int = 128, seed: int = 0,
               device: torch.device | str | None = None) -> dict[str, Any]:
    """Probe every run, then write `grad_stability.json` and `grad_stability.png` in `out_dir`."""
    check_runs(run_dirs, checkpoint)
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if not alphas or any(not (a >= 0 and math.isfinite(a)) for a in alphas):
        raise UserError(f"alphas must be a non-empty list of finite numbers >= 0, got {alphas}")
    positive_int("directions", directions)
    positive_int("batch size", batch_size)
    results = [probe_run(r, checkpoint=checkpoint, alphas=alphas, directions=directions, batch_size=batch_size,
                         seed=seed, device=device) for r in run_dirs]
    report = {"analysis": "grad-stability", "checkpoint": checkpoint, "alphas": alphas, "runs": results}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "grad_stability.json", report)
    plot_grad_stability(results, out_dir / "grad_stability.png")
    return report


# -- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    add_probe_arguments(parser, runs_help="run directories (several are drawn on one plot)",
                        checkpoint_help=CHECKPOINT_HELP, alphas_default="7 log-spaced from 1e-4 to 1e-1")


@ANALYSES.register("grad-stability")
def run(args) -> int:
    runs, out, options = probe_options(args, "the gradient-stability plot")
    report = probe_runs(runs, out, **options)
    for res in report["runs"]:
        print(f"{res['run']} ({res['method']}, {res['checkpoint']} = epoch {res['checkpoint_epoch']}): "
              f"|g| = {res['grad_norm']:.4g}")
        print(f"  {'alpha':>10} {'re-solved':>22} {'fixed x_adv':>22}")
        for k, alpha in enumerate(res["alphas"]):
            r, f = res["regenerated"], res["fixed"]
            print(f"  {alpha:>10.3g} {r['mean'][k]:>12.4g} ± {r['std'][k]:<8.2g} {f['mean'][k]:>12.4g} ± {f['std'][k]:<8.2g}")
    print(f"wrote {out / 'grad_stability.json'} and {out / 'grad_stability.png'}")
    return 0
