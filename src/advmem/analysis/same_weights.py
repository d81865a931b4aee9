"""Same-weights gradient-instability protocol: PGD-AT's and TRADES' loss at ONE set of weights.

`advmem analyze grad-stability` perturbs each run's own checkpoint with its own loss, so a
difference between a PGD-AT run and a TRADES run mixes the property of the loss with the state
of the model (two different networks, trained differently). Here both losses are evaluated at
the same theta, on the same fixed batch, along the same filter-normalized directions d:

  * for each loss (PGD-AT: CE on PGD-CE examples; TRADES: CE(x) + beta KL on PGD-KL examples,
    both built by `advmem.methods.build_method` with the run's attack config), the gradient g
    at theta + alpha d with the inner maximization re-solved at theta + alpha d, and with the
    adversarial examples held fixed at theta's (the control);
  * ||g(theta + alpha d) - g(theta)|| absolute and relative (/||g(theta)||), mean and std over
    the directions, for alpha on a log grid down to 1e-6;
  * the log-log slope of the absolute change against alpha over the smallest alphas. A loss
    whose gradient is Lipschitz in the weights gives slope ~1 there; the additive
    2 eps L_theta_x term of the proposition (paper.md section 5.2), which does not vanish as
    alpha -> 0, shows as a plateau (slope ~0).

Every evaluation reuses `grad_stability.gradient_change`: the attack's random start is drawn
from the same seed at theta and at every theta + alpha d (so alpha = 0 gives exactly zero
change), the loss is taken in train mode as in the trainer, and BatchNorm running statistics,
weights and method state are restored after every evaluation. By default the computation is
done in float64 on a copy of the model: in float32 a relative weight change of 1e-6 is a few
ulps, and the rounding noise of the gradient is itself a floor that looks like a plateau.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from advmem.analysis.cli import ANALYSES
from advmem.analysis.common import (CHECKPOINT_HELP, add_probe_arguments, check_runs, open_run, probe_options,
                                    positive_int, resolve_checkpoint)
from advmem.analysis.grad_stability import gradient_change, probe_batch
from advmem.io import atomic_write_bytes, atomic_write_json
from advmem.errors import UserError
from advmem.engine.rundir import RunDir

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI's parser does not import it
    import torch
    from torch import nn

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, -6, 6))  # 1e-1, 1e-2, ..., 1e-6
DEFAULT_FIT_POINTS = 3
LOSSES = ("pgd_at", "trades")
JUMP_RATIO = 10.0
DTYPES = ("float64", "float32")  # names of torch dtypes (torch is imported when a probe runs)


def loglog_slope(alphas: Sequence[float], values: Sequence[float],
                 fit_points: int = DEFAULT_FIT_POINTS) -> float | None:
    """Least-squares slope of log(values) against log(alphas) over the `fit_points` smallest alphas > 0.

    None when fewer than two such points exist or a value there is not > 0 (log undefined).
    """
    pairs = sorted((a, v) for a, v in zip(alphas, values) if a > 0)[:fit_points]
    if len(pairs) < 2 or any(not (v > 0 and math.isfinite(v)) for _, v in pairs):
        return None
    a, v = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(a, v, 1)[0])


def reading(slope: float | None) -> str:
    """A plain-words reading of a small-alpha slope."""
    if slope is None:
        return "undefined"
    if slope < 0.5:
        return "plateau (change does not vanish with alpha)"
    if 0.8 <= slope <= 1.2:
        return "smooth (change proportional to alpha)"
    return "intermediate"


def _curve(alphas: list[float], relative: np.ndarray, grad_norm: float, fit_points: int) -> dict[str, Any]:
    absolute = relative * grad_norm
    per_dir = [loglog_slope(alphas, row, fit_points) for row in absolute]
    defined = [s for s in per_dir if s is not None]
    slope = loglog_slope(alphas, absolute.mean(axis=0), fit_points)

    def stats(values: np.ndarray) -> dict[str, Any]:
        return {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist(),
                "per_direction": values.tolist()}

    return {
        "absolute": stats(absolute),
        "relative": stats(relative),
        "slope": slope,  # of the mean absolute change over the smallest alphas
        "slope_per_direction": {"mean": float(np.mean(defined)) if defined else None,
                                "std": float(np.std(defined)) if defined else None, "values": per_dir},
        "reading": reading(slope),
    }


def same_weights_change(model: nn.Module, methods: Mapping[str, Any], batch, *,
                        alphas: Sequence[float] = DEFAULT_ALPHAS, directions: int = 5, seed: int = 0, epoch: int = 1,
                        fit_points: int = DEFAULT_FIT_POINTS,
                        dtype: torch.dtype | str | None = "float64") -> dict[str, Any]:
    """Gradient change of every loss in `methods` at the same weights, batch and directions.

    `methods` maps a name to a built method (e.g. {"pgd_at": ..., "trades": ...}); each is
    probed with `gradient_change` under the same `seed`, so the directions, the batch and the
    attack's random start are the same for every loss and every alpha. With `dtype` set, the
    probe runs on a copy of the model and batch cast to it (the model is never modified);
    `dtype` may be a torch dtype or its name ("float64", the default);
    `dtype=None` keeps the model's own dtype and works on the model itself (restored after).
    Returns `alphas`, `fit_points`, `dtype` and per loss `grad_norm` and `regenerated` /
    `fixed` curves, each with `absolute` and `relative` (mean, std, per_direction), `slope`,
    `slope_per_direction` and `reading`; `regenerated` also has `jump_fraction`, per alpha the
    fraction of directions whose re-solved change exceeds JUMP_RATIO x the held-fixed one.
    """
    alphas = [float(a) for a in alphas]
    if not alphas or any(not (a >= 0 and math.isfinite(a)) for a in alphas):
        raise UserError(f"alphas must be a non-empty list of finite numbers >= 0, got {alphas}")
    positive_int("directions", directions)
    positive_int("fit points", fit_points)
    if isinstance(dtype, str):
        import torch

        dtype = getattr(torch, dtype)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        batch = type(batch)(batch.x.to(dtype), *batch[1:])
    used = str(next(model.parameters()).dtype).replace("torch.", "")
    losses = {}
    for name, method in methods.items():
        res = gradient_change(model, method, batch, alphas=alphas, directions=directions, seed=seed, epoch=epoch)
        g0 = res["grad_norm"]
        regenerated, fixed = (np.asarray(res[key]["per_direction"]) for key in ("regenerated", "fixed"))
        # where re-solving the inner max adds more than JUMP_RATIO x the held-fixed change: the maximizer jumped
        jumped = (regenerated > JUMP_RATIO * fixed) & (regenerated > 0)
        losses[name] = {
            "grad_norm": g0,
            "start": method.start,
            "start_clamp": method.start_clamp,
            "regenerated": {**_curve(alphas, regenerated, g0, fit_points),
                            "jump_fraction": jumped.mean(axis=0).tolist()},
            "fixed": _curve(alphas, fixed, g0, fit_points),
        }
    return {"alphas": alphas, "fit_points": fit_points, "dtype": used, "losses": losses}


def loss_methods(recipe, *, num_train: int, num_classes: int, device) -> dict[str, Any]:
    """PGD-AT and TRADES built with the run's attack config (and its own method config when the
    run was trained with one of them, e.g. its TRADES beta; defaults otherwise)."""
    # pydantic: only when an analysis runs (the CLI's parser imports this module)
    from advmem.methods import build_method, method_config_class

    methods = {}
    for name in LOSSES:
        cfg = recipe.method if recipe.method.name == name else method_config_class(name)()
        methods[name] = build_method(cfg, recipe.attack, num_train=num_train, num_classes=num_classes, device=device,
                                     label_smoothing=recipe.optim.label_smoothing)
    return methods


def expand_checkpoints(run_dir: str | Path, spec: str) -> list[str]:
    """`spec` is comma-separated checkpoint names, or `all`: every saved checkpoint of the run,
    in epoch order, one per epoch (best and last at the same epoch hold the same weights)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names != ["all"]:
        if not names:
            raise UserError(f"--checkpoint {spec!r}: expected {CHECKPOINT_HELP}, comma-separated, or all")
        return names
    # torch: only when an analysis runs (the CLI's parser imports this module)
    from advmem.engine.checkpoint import read_sidecar

    run = RunDir(run_dir)
    if not run.is_run():
        resolve_checkpoint(run_dir, "last")  # raises the usual "not an advmem run directory" error
    paths = sorted(run.checkpoints.glob("*.safetensors")) if run.checkpoints.is_dir() else []
    if not paths:
        raise UserError(f"{run.path}: no saved checkpoints in checkpoints/")

    def rank(stem: str) -> int:  # for the same epoch prefer init, then epoch-N, then last, then best
        return {"init": 0, "last": 2, "best": 3}.get(stem, 1)

    by_epoch: dict[int, str] = {}
    for path in paths:
        epoch = int(read_sidecar(path).get("epoch", -1))
        if epoch not in by_epoch or rank(path.stem) < rank(by_epoch[epoch]):
            by_epoch[epoch] = path.stem
    return [by_epoch[e] for e in sorted(by_epoch)]


def probe_checkpoint(run_dir: str | Path, checkpoint: str, *, alphas: Sequence[float], directions: int,
                     batch_size: int, seed: int, fit_points: int, dtype: torch.dtype | None,
                     device: torch.device | str | None = None) -> dict[str, Any]:
    """The protocol at one checkpoint of one run (its training batch and labels, its attack)."""
    run = open_run(run_dir, checkpoint, device)
    batch = probe_batch(run.bundle, batch_size, seed)
    methods = loss_methods(run.recipe, num_train=len(run.bundle.train), num_classes=run.bundle.num_classes,
                           device=next(run.model.parameters()).device)
    result = same_weights_change(run.model, methods, batch, alphas=alphas, directions=directions, seed=seed,
                                 epoch=max(run.epoch, 1), fit_points=fit_points, dtype=dtype)
    a = run.recipe.attack
    return {
        "run": run.name, "path": str(run.path), "method": run.recipe.method.name,
        "checkpoint": checkpoint, "checkpoint_epoch": run.epoch,
        **result,
        "settings": {
            "directions": directions, "batch_size": int(batch.y.shape[0]), "seed": seed,
            "direction": "Gaussian, filter-normalized (Li et al. 2018); biases and BatchNorm parameters: zero; "
                         "the same directions for both losses",
            "attack": {"norm": a.norm, "eps": a.eps, "step_size": a.step_size, "steps": a.steps, "bn_mode": a.bn_mode},
            "trades_beta": methods["trades"].cfg.beta,
            "random_start": "drawn from the same seed at theta and at every theta + alpha d",
            "loss_bn_mode": "train (batch statistics, as in the trainer); "
                            "running statistics restored after each evaluation",
            "data": "fixed seeded batch of training samples with their training labels, no augmentation",
            "slope": f"least-squares log-log slope of the mean absolute change over the {fit_points} "
                     "smallest alphas > 0",
        },
    }


def plot_same_weights(entries: list[dict[str, Any]], path: Path) -> None:
    """One panel per (run, checkpoint): one colour per loss, solid = re-solved, dashed = held fixed, band = ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(entries)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, entry in zip(axes.flat, entries):
        alphas = np.asarray(entry["alphas"])
        keep = alphas > 0
        for i, (name, loss) in enumerate(entry["losses"].items()):
            colour = colours[i % len(colours)]
            for key, style, label in (("regenerated", "-", "re-solved"), ("fixed", "--", "held fixed")):
                curve = loss[key]
                mean = np.asarray(curve["absolute"]["mean"])[keep]
                std = np.asarray(curve["absolute"]["std"])[keep]
                slope = "n/a" if curve["slope"] is None else f"{curve['slope']:.2f}"
                ax.plot(alphas[keep], mean, style, marker="o", ms=3, color=colour,
                        label=f"{name}, x_adv {label} (slope {slope})")
                lower = np.clip(mean - std, mean * 1e-3, None)
                ax.fill_between(alphas[keep], lower, mean + std, color=colour, alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"relative weight perturbation $\alpha$")
        ax.set_ylabel(r"$\|g(\theta+\alpha d) - g(\theta)\|$")
        ax.set_title(f"{entry['run']} ({entry['method']}) at {entry['checkpoint']} "
                     f"(epoch {entry['checkpoint_epoch']})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Same weights, both losses: gradient change (mean ± std over directions)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def probe_runs(run_dirs: list[Path], out_dir: Path, *, checkpoint: str = "last", alphas: Sequence[float] | None = None,
               directions: int = 5, batch_size: int = 128, seed: int = 0, fit_points: int = DEFAULT_FIT_POINTS,
               dtype: str = "float64", device: torch.device | str | None = None) -> dict[str, Any]:
    """The protocol at every requested checkpoint of every run; writes `grad_same_weights.json` and `.png`."""
    if not run_dirs:
        raise UserError("give at least one run directory")
    plan = [(Path(r), c) for r in run_dirs for c in expand_checkpoints(r, checkpoint)]
    for r, c in plan:
        check_runs([r], c)
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if not alphas or any(not (a >= 0 and math.isfinite(a)) for a in alphas):
        raise UserError(f"alphas must be a non-empty list of finite numbers >= 0, got {alphas}")
    positive_int("directions", directions)
    positive_int("batch size", batch_size)
    positive_int("fit points", fit_points)
    if dtype not in DTYPES and dtype != "model":
        raise UserError(f"--dtype {dtype!r}: expected float64, float32 or model")
    torch_dtype = None if dtype == "model" else dtype
    entries = [probe_checkpoint(r, c, alphas=alphas, directions=directions, batch_size=batch_size, seed=seed,
                                fit_points=fit_points, dtype=torch_dtype, device=device) for r, c in plan]
    report = {"analysis": "grad-same-weights", "alphas": alphas, "fit_points": fit_points, "entries": entries}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "grad_same_weights.json", report)
    plot_same_weights(entries, out_dir / "grad_same_weights.png")
    return report


# -- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    add_probe_arguments(parser, runs_help="run directories (one panel per run and checkpoint)",
                        checkpoint_help=f"{CHECKPOINT_HELP}; several comma-separated (init,epoch-5,last), or all",
                        alphas_default="1e-1,1e-2,...,1e-6")
    parser.add_argument("--fit-points", type=int, default=DEFAULT_FIT_POINTS,
                        help=f"smallest alphas the log-log slope is fitted on (default {DEFAULT_FIT_POINTS})")
    parser.add_argument("--dtype", choices=["float64", "float32", "model"], default="float64",
                        help="precision of the probe (default float64: float32 rounding is a floor at alpha ~1e-6)")


@ANALYSES.register("grad-same-weights")
def run(args) -> int:
    runs, out, options = probe_options(args, "the same-weights gradient plot")
    report = probe_runs(runs, out, fit_points=args.fit_points, dtype=args.dtype, **options)
    for entry in report["entries"]:
        print(f"{entry['run']} ({entry['method']}, {entry['checkpoint']} = epoch {entry['checkpoint_epoch']}, "
              f"{entry['dtype']}):")
        for name, loss in entry["losses"].items():
            print(f"  {name}: |g| = {loss['grad_norm']:.4g}")
            print(f"    {'alpha':>10} {'re-solved |dg|':>22} {'held fixed |dg|':>22}")
            r, f = loss["regenerated"]["absolute"], loss["fixed"]["absolute"]
            for k, alpha in enumerate(entry["alphas"]):
                print(f"    {alpha:>10.3g} {r['mean'][k]:>12.4g} ± {r['std'][k]:<8.2g} "
                      f"{f['mean'][k]:>12.4g} ± {f['std'][k]:<8.2g}")
            for key, label in (("regenerated", "re-solved"), ("fixed", "held fixed")):
                s = loss[key]["slope"]
                print(f"    slope ({label}, {report['fit_points']} smallest alphas): "
                      f"{'n/a' if s is None else f'{s:.3f}'} -- {loss[key]['reading']}")
    print(f"wrote {out / 'grad_same_weights.json'} and {out / 'grad_same_weights.png'}")
    return 0
