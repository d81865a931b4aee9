"""Robust overfitting and temporal ensembling: PGD-AT and TRADES with and without TE, plus baselines.

Trains PGD-AT, PGD-AT+TE, TRADES and TRADES+TE (with --baselines also MART and PGD-AT+AWP) on
one data set with a step schedule, skipping runs already complete in the output folder
(incomplete ones are resumed). Weight averaging (an EMA of the PGD-AT weights) is tracked
inside the PGD-AT run. Every run also records the robust accuracy on its hardest training
samples (the largest adversarial loss at the last epoch before the first learning-rate decay).
Then the best (on the validation split: early stopping) and last checkpoints are evaluated on
the test set: natural, PGD-20 and AutoAttack (standard, on a fixed test subset) accuracy.

Output folder: runs/ (one run directory per method), table.md / table.csv / results.json,
robust_acc_vs_epoch.png, hardest_train_rob_acc.png, README.md; the same markdown becomes the
`robust-overfitting` section of REPRODUCTION.md.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


from advmem.io import atomic_write_json, atomic_write_text
from advmem.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI's parser does not import it
    import torch
from advmem.studies.reproduction import reproduction_target, smoke_note, update_reproduction

SECTION = "robust-overfitting"
REPRODUCTION_SCALES = frozenset({"small", "paper"})  # the scales whose results belong in REPRODUCTION.md
PAPER_DATASETS = ("cifar10", "cifar100", "svhn")


@dataclass(frozen=True)
class MethodSpec:
    key: str
    label: str
    method: dict[str, Any]
    recipe: str | None = None  # paper scale: shipped recipe name
    ema: bool = False


# -------------------------------------------------------------------------------------------------
# Scales. `small`: chosen so that a CPU can show the phenomenon; see docs/robust-overfitting.md.

TINY = {
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "synthetic", "val_size": 32,
             "synthetic": {"n_train": 128, "n_test": 64, "image_size": 6, "num_classes": 10}},
    "model": {"name": "mlp", "kwargs": {"hidden": [24]}},
    "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
    "optim": {"epochs": 4, "batch_size": 32, "lr": 0.05, "weight_decay": 0.0,
              "schedule": {"name": "multistep", "milestones": [2]}},
    "eval": {"every": 1, "train_subset": 32, "batch_size": 256, "attack": {"steps": 2}},
}

SMALL = {
    "seed": 0,
    # 20% symmetric label noise: at this scale clean-label runs showed no clear robust overfitting
    # (docs/robust-overfitting.md lists what was tried); noisy labels are the paper's amplifier.
    "data": {"dataset": "fashion-mnist", "train_size": 500, "val_size": 500, "test_size": 1000, "augment": "none",
             "label_noise": {"kind": "symmetric", "rate": 0.2, "seed": 0}},
    "model": {"name": "small_cnn", "kwargs": {"width": 32, "hidden": 256}},
    "attack": {"eps": "0.1", "step_size": "0.025", "steps": 5},
    "optim": {"epochs": 80, "batch_size": 32, "lr": 0.1, "weight_decay": 0.0,
              "schedule": {"name": "multistep", "milestones": [30, 60]}},
    # per-epoch evaluation uses the training attack (as the authors' code); the final table uses PGD-20
    "eval": {"every": 2, "train_subset": 250, "batch_size": 500, "attack": {"steps": 5}},
}

SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"base": TINY, "te": {"start_epoch": 2, "end_epoch": 3}, "ema": {"decay": 0.5, "start_epoch": 1},
             "aa_n": 16, "hard_fraction": 0.1},
    "small": {"base": SMALL, "te": {"start_epoch": 27, "end_epoch": 60}, "ema": {"decay": 0.99, "start_epoch": 1},
              "aa_n": 200, "hard_fraction": 0.1},
    # paper: the shipped recipes (recipes/paper/<dataset>-*.yaml), with a 1,000-image validation split
    "paper": {"base": None, "te": {"start_epoch": 90, "end_epoch": 150}, "ema": {"decay": 0.999, "start_epoch": 1},
              "aa_n": 1000, "hard_fraction": 0.1},
}


def method_specs(scale: str, baselines: bool, dataset: str = "cifar10") -> list[MethodSpec]:
    te = SCALES[scale]["te"]
    paper = scale == "paper"
    specs = [
        MethodSpec("pgd_at", "PGD-AT", {"name": "pgd_at"}, f"paper/{dataset}-pgd-at" if paper else None, ema=True),
        MethodSpec("pgd_at_te", "PGD-AT+TE", {"name": "te", "base": "pgd_at", **te},
                   f"paper/{dataset}-pgd-at-te" if paper else None),
        MethodSpec("trades", "TRADES", {"name": "trades"}, f"paper/{dataset}-trades" if paper else None),
        MethodSpec("trades_te", "TRADES+TE", {"name": "te", "base": "trades", **te},
                   f"paper/{dataset}-trades-te" if paper else None),
    ]
    if baselines:
        specs += [
            MethodSpec("mart", "MART", {"name": "mart"}, f"paper/{dataset}-pgd-at" if paper else None),
            MethodSpec("awp", "PGD-AT+AWP", {"name": "awp", "base": "pgd_at"}, f"paper/{dataset}-pgd-at" if paper else None),
        ]
    return specs


def build_recipe(scale: str, spec: MethodSpec, device: str, overrides: list[str] = ()):
    """The recipe of one method; `overrides` (KEY.PATH=VALUE, as --set) apply to every method."""
    from advmem.recipe import apply_overrides, load_recipe, recipe_from_dict

    ema = SCALES[scale]["ema"]
    if scale == "paper":
        recipe = load_recipe(spec.recipe, [f"name={spec.key}", "data.val_size=1000", f"device={device}"])
        data = recipe.to_dict()
        if spec.key in ("mart", "awp"):
            data["method"] = spec.method
    else:
        data = copy.deepcopy(SCALES[scale]["base"])
        data.update(name=spec.key, method=spec.method)
        if device != "auto" or scale != "tiny":
            data["device"] = device
    if spec.ema:
        data["optim"]["ema"] = dict(ema)
    if overrides:
        data = apply_overrides(data, list(overrides))
    return recipe_from_dict(data, source=f"study robust-overfitting ({scale}, {spec.key})")


# -------------------------------------------------------------------------------------------------
# The hardest training samples (the paper's memorization explanation)


class HardestTrainingSamples:
    """Trainer callback: at `select_epoch` (the last epoch before the first LR decay) pick the
    `fraction` of training samples with the largest adversarial loss (eval attack); from then on
    log their natural and robust accuracy (`hard_train_nat_acc`, `hard_train_rob_acc`) on every
    evaluated epoch. The selection is written to `hardest_train.json` and kept in the resume state."""

    state_key = "hardest_samples"

    def __init__(self, select_epoch: int, fraction: float) -> None:
        import torch
        self.select_epoch = select_epoch
        self.fraction = fraction
        self.index: torch.Tensor | None = None

    def on_epoch_end(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        from advmem.engine.evaluate import evaluate_split, robust_per_sample
        from advmem.engine.seeding import HARDEST_EVAL, HARDEST_SELECT, epoch_generator

        train_set, bs, seed = trainer.bundle.train, trainer.recipe.eval.batch_size, trainer.recipe.seed
        if epoch == self.select_epoch and self.index is None:
            per = robust_per_sample(trainer.model, train_set, trainer.eval_attack, bs,
                                    generator=epoch_generator(seed, epoch, stream=HARDEST_SELECT))
            k = max(1, round(self.fraction * len(train_set)))
            order = per["loss"].argsort(descending=True)[:k]
            self.index = per["index"][order].cpu()
            atomic_write_json(trainer.run.path / "hardest_train.json", {
                "selected_at_epoch": epoch, "fraction": self.fraction, "index": self.index.tolist(),
                "adversarial_loss": per["loss"][order].cpu().tolist()})
        if self.index is None or not ("test_nat_acc" in row or epoch == self.select_epoch):
            return
        hard = train_set.subset(self.index)  # train index values are positions 0..N-1
        scores = evaluate_split(trainer.model, "hard_train", hard, trainer.eval_attack, bs,
                                epoch_generator(seed, epoch, stream=HARDEST_EVAL))
        row["hard_train_nat_acc"], row["hard_train_rob_acc"] = scores["hard_train_nat_acc"], scores["hard_train_rob_acc"]

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state.get("index")


# -------------------------------------------------------------------------------------------------
# Training (skipping complete runs) and final evaluation


def log(msg: str) -> None:
    print(f"[robust-overfitting] {msg}", file=sys.stderr, flush=True)


def is_complete(run, recipe) -> bool:
    if not run.summary_path.exists():
        return False
    summary = json.loads(run.summary_path.read_text())
    from advmem.engine.resume import recipe_hash_matches

    return (recipe_hash_matches(recipe, summary.get("recipe_hash")) and summary.get("complete", True) is True
            and (summary.get("last") or {}).get("epoch") == recipe.optim.epochs)


def ensure_trained(recipe, runs_dir: Path, *, hard_fraction: float, quiet: bool):
    from advmem.engine.rundir import RunDir
    from advmem.training import train

    run = RunDir(runs_dir / recipe.name)
    milestones = recipe.optim.schedule.milestones
    select = milestones[0] if milestones else max(1, recipe.optim.epochs // 2)
    callbacks = [HardestTrainingSamples(select, hard_fraction)]
    if is_complete(run, recipe):
        log(f"{recipe.name}: complete, skipped")
        return run
    if run.is_run():
        if run.load_recipe().hash() != recipe.hash():
            raise UserError(f"{run.path} holds a run with other settings; delete it or pass another --out")
        if run.resume_path.exists():
            log(f"{recipe.name}: resuming")
            return train(recipe, run_root=runs_dir, resume=True, quiet=quiet, callbacks=callbacks)[0]
        return train(recipe, run_root=runs_dir, overwrite=True, quiet=quiet, callbacks=callbacks)[0]
    log(f"{recipe.name}: training {recipe.optim.epochs} epochs ({recipe.method.name})")
    return train(recipe, run_root=runs_dir, quiet=quiet, callbacks=callbacks)[0]


def _train_in_worker(recipe, runs_dir: str, hard_fraction: float, threads: int) -> str:
    import torch
    torch.set_num_threads(threads)
    return str(ensure_trained(recipe, Path(runs_dir), hard_fraction=hard_fraction, quiet=True).path)


def train_parallel(recipes: list, runs_dir: Path, *, hard_fraction: float, parallel: int, quiet: bool = False) -> None:
    """Train the runs `parallel` at a time in spawned worker processes, each with cores/N threads
    (small models on a CPU scale poorly across threads, so two 1-thread runs beat one 2-thread
    run); the callbacks stay in-process in each worker. The first failure cancels the runs not
    yet started and is raised (a worker that died: RunFailure). Unless `quiet`, the runs' progress
    (sweep.RunsProgress)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from advmem.errors import RunFailure
    from advmem.sweep import POLL_S, RunsProgress, usable_cores

    workers = min(parallel, len(recipes))
    threads = max(1, usable_cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    progress = RunsProgress({r.name: (runs_dir / r.name, r.optim.epochs) for r in recipes}, desc="training",
                            enabled=not quiet)
    try:
        futures = {pool.submit(_train_in_worker, recipe, str(runs_dir), hard_fraction, threads): recipe.name
                   for recipe in recipes}
        done, pending = set(), set(futures)
        while pending and not any(f.exception() is not None for f in done):
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            for future in finished:
                progress.run_ended(futures[future])
            done |= finished
            progress.poll([futures[f] for f in pending if f.running()], force=True)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
    except BrokenProcessPool as err:
        raise RunFailure(f"a training worker process died ({err}); run the study again to resume") from None
    finally:
        progress.close()
        pool.shutdown(wait=True, cancel_futures=True)


def autoattack_accuracy(model, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, batch_size: int,
                        device) -> float:
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=0, device=device)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv.to(y.device) == y).float().mean().item()


def evaluate_run(run, recipe, test_set, *, aa_n: int, pgd_steps: int, device) -> dict[str, dict[str, Any]]:
    """Natural, PGD-`pgd_steps` and AutoAttack test accuracy of best/last (and EMA) checkpoints, cached."""
    import torch
    from advmem.engine.checkpoint import build_from_checkpoint, read_sidecar
    from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample, summarize

    cache_path = run.path / "study_eval.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    stems = ["best", "last"] + (["ema_best", "ema_last"] if recipe.optim.ema is not None else [])
    eps, norm = recipe.attack.eps_value, recipe.attack.norm
    bs = recipe.eval.batch_size
    out = {}
    for stem in stems:
        path = run.checkpoints / stem
        meta = read_sidecar(path)
        key = {"epoch": meta["epoch"], "recipe_hash": recipe.hash(), "aa_n": aa_n, "pgd_steps": pgd_steps,
               "n_test": len(test_set)}
        if stem in cache and all(cache[stem].get(k) == v for k, v in key.items()):
            out[stem] = cache[stem]
            continue
        model, _ = build_from_checkpoint(path, device)
        attack = EvalAttack(eps=eps, step_size=eps / 4, steps=pgd_steps, norm=norm)
        result = dict(key)
        result["natural"] = summarize(clean_per_sample(model, test_set, bs))["acc"]
        result["pgd"] = summarize(robust_per_sample(model, test_set, attack, bs,
                                                    generator=torch.Generator().manual_seed(0)))["acc"]
        result["autoattack"] = None
        if aa_n > 0:
            n = min(aa_n, len(test_set))
            subset = test_set.subset(torch.arange(n))
            result["autoattack"] = autoattack_accuracy(model, subset.all_float(), subset.y, norm=norm, eps=eps,
                                                       batch_size=bs, device=device)
            result["aa_n"] = aa_n
        out[stem] = result
        cache[stem] = result
        atomic_write_json(cache_path, cache)
    return out


# -------------------------------------------------------------------------------------------------
# Report


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100 * (a - b)


def fmt_gap(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f}"


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, res in results["methods"].items():
        pairs = [("", "best", "last")]
        if "ema_best" in res["eval"]:
            pairs.append(("+EMA", "ema_best", "ema_last"))
        for suffix, best, last in pairs:
            for which, stem in (("best (val)", best), ("last", last)):
                e = res["eval"][stem]
                rows.append({"method": res["label"] + suffix, "checkpoint": which, "epoch": e["epoch"],
                             "natural": e["natural"], "pgd": e["pgd"], "autoattack": e["autoattack"]})
            if key == "pgd_at" and suffix == "":
                e = res["eval"]["best"]
                rows.append({"method": "Early stopping (PGD-AT)", "checkpoint": "best (val)", "epoch": e["epoch"],
                             "natural": e["natural"], "pgd": e["pgd"], "autoattack": e["autoattack"]})
    return rows


def gap_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for res in results["methods"].values():
        ev = res["eval"]
        pairs = [(res["label"], "best", "last")]
        if "ema_best" in ev:
            pairs.append((res["label"] + "+EMA", "ema_best", "ema_last"))
        for label, b, l in pairs:
            curve = [r.get(("ema_" if b.startswith("ema") else "") + "test_rob_acc") for r in res["curve"]]
            curve = [c for c in curve if c is not None]
            rows.append({"method": label, "best_pgd": ev[b]["pgd"], "last_pgd": ev[l]["pgd"],
                         "gap_pgd": gap(ev[b]["pgd"], ev[l]["pgd"]),
                         "gap_aa": gap(ev[b]["autoattack"], ev[l]["autoattack"]),
                         "peak_curve": max(curve) if curve else None, "final_curve": curve[-1] if curve else None})
    return rows


def verdict(rows: list[dict[str, Any]], scale: str) -> list[str]:
    by = {r["method"]: r for r in rows}
    lines = []

    def size(g: float) -> str:
        return "clear (>= 2 points)" if g >= 2 else "small (0.5-2 points)" if g >= 0.5 else "none (< 0.5 points)"

    for base in ("PGD-AT", "TRADES"):
        if base not in by or by[base]["gap_pgd"] is None:
            continue
        g = by[base]["gap_pgd"]
        line = f"- {base}: best-minus-last PGD-20 gap {g:+.1f} points: robust overfitting {size(g)}."
        te = by.get(f"{base}+TE")
        if te is not None and te["gap_pgd"] is not None:
            d = g - te["gap_pgd"]
            effect = (f"shrinks it by {d:.1f} points" if d >= 0.05 else "leaves it unchanged" if d > -0.05
                      else f"does not shrink it ({-d:.1f} points larger)")
            line += (f" With TE the gap is {te['gap_pgd']:+.1f}: TE {effect}"
                     + f"; last-checkpoint PGD-20 {pct(by[base]['last_pgd'])}% -> {pct(te['last_pgd'])}% with TE.")
        lines.append(line)
    if scale == "tiny":
        lines.append("- Scale `tiny` is a smoke test on synthetic data: these numbers say nothing about the paper.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows, gaps = table_rows(results), gap_rows(results)
    aa = f"AutoAttack (standard) on the first {s['aa_n']} test images" if s["aa_n"] else "AutoAttack skipped (--aa-n 0)"
    out = [
        f"## Robust overfitting and temporal ensembling (`advmem study robust-overfitting --scale {s['scale']}`)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s.get('command', 'advmem study robust-overfitting --scale ' + s['scale'])}`.",
        "",
        f"Settings: {s['summary']}. Best = highest validation robust accuracy (early stopping); last = final epoch. "
        f"Test accuracy (%) on {s['n_test']} test images: natural, PGD-{s['pgd_steps']} (step eps/4), {aa}. "
        f"Generated {s['date']}; wall time of this invocation {s['wall_s'] / 60:.1f} min.",
        "",
        "| method | best PGD | last PGD | best - last (PGD) | best - last (AA) | peak / final test robust during training |",
        "|---|---|---|---|---|---|",
    ]
    for r in gaps:
        out.append(f"| {r['method']} | {pct(r['best_pgd'])} | {pct(r['last_pgd'])} | {fmt_gap(r['gap_pgd'])} | "
                   f"{fmt_gap(r['gap_aa'])} | {pct(r['peak_curve'])} / {pct(r['final_curve'])} |")
    out += ["", "| method | checkpoint | epoch | natural | PGD | AutoAttack |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['checkpoint']} | {r['epoch']} | {pct(r['natural'])} | {pct(r['pgd'])} | "
                   f"{pct(r['autoattack'])} |")
    out += ["", "Findings:", *verdict(gaps, s["scale"])]
    hard = [(res["label"], res["hard"]) for res in results["methods"].values() if res["hard"]]
    if hard:
        out += ["", "Robust accuracy (%) on the hardest 10% of training samples (largest adversarial loss at epoch "
                f"{s['select_epoch']}, the last before the first decay), at selection and at the end: "
                + "; ".join(f"{label} {pct(h[0][1])} -> {pct(h[-1][1])}" for label, h in hard) + "."]
    out += ["", "Figures: `robust_acc_vs_epoch.png`, `hardest_train_rob_acc.png` in the study folder. "
            "What was tried at small scale and why: docs/robust-overfitting.md."]
    return "\n".join(out) + "\n"


def plot(results: dict[str, Any], out: Path) -> None:
    from advmem.report.plots import plt, save_figure

    milestones = results["settings"]["milestones"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, res in enumerate(results["methods"].values()):
        colour = f"C{i}"
        for ax, key in ((axes[0], "test_rob_acc"), (axes[1], "train_rob_acc")):
            pts = [(r["epoch"], 100 * r[key]) for r in res["curve"] if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), color=colour, label=res["label"])
        pts = [(r["epoch"], 100 * r["ema_test_rob_acc"]) for r in res["curve"] if r.get("ema_test_rob_acc") is not None]
        if pts:
            axes[0].plot(*zip(*pts), color=colour, ls="--", label=res["label"] + "+EMA")
    for ax, title in ((axes[0], "test robust accuracy (PGD, eval attack)"),
                      (axes[1], "training robust accuracy (train subset)")):
        for m in milestones:
            ax.axvline(m + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "robust_acc_vs_epoch.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, res in enumerate(results["methods"].values()):
        if res["hard"]:
            ax.plot(*zip(*[(e, 100 * v) for e, v in res["hard"]]), color=f"C{i}", marker="o", ms=3, label=res["label"])
    for m in milestones:
        ax.axvline(m + 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"hardest {int(100 * results['settings']['hard_fraction'])}% training samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "hardest_train_rob_acc.png")


def write_tables(results: dict[str, Any], out: Path) -> None:
    rows = table_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "table.csv", buffer.getvalue())
    atomic_write_json(out / "results.json", results)


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--scale", choices=list(SCALES), default="small",
                        help="tiny: synthetic smoke test (seconds); small: Fashion-MNIST subset on a CPU (<= 1 h); "
                             "paper: the authors' ResNet-18 recipes (GPU)")
    parser.add_argument("--out", default=None, help="output folder (default studies/robust-overfitting-SCALE)")
    parser.add_argument("--baselines", action="store_true", help="also train MART and PGD-AT+AWP")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of pgd_at,pgd_at_te,trades,trades_te,mart,awp")
    parser.add_argument("--dataset", choices=PAPER_DATASETS, default="cifar10", help="paper scale only")
    parser.add_argument("--aa-n", type=int, default=None,
                        help="AutoAttack on the first N test images (default: tiny 16, small 200, paper 1000; 0 skips)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="steps of the final PGD evaluation (default 20)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--parallel", type=int, default=None,
                        help="runs trained at a time in worker processes, each with cores/N threads "
                             "(default: 2 at scale small, else 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value in every run (repeatable), e.g. --set data.label_noise.kind=symmetric "
                             "--set data.label_noise.rate=0.2 (not name or method.*: use --methods)")
    parser.add_argument("--reproduction", default=None,
                        help="REPRODUCTION.md to update (default: at scale small or paper, the REPRODUCTION.md "
                             "of the advmem checkout holding the current directory; tiny never by default)")
    parser.add_argument("--no-reproduction", action="store_true", help="do not update REPRODUCTION.md")


def run(args) -> int:
    t0 = time.time()
    scale = args.scale
    aa_n = SCALES[scale]["aa_n"] if args.aa_n is None else args.aa_n
    if aa_n < 0 or args.pgd_steps < 1:
        raise UserError("--aa-n must be >= 0 and --pgd-steps >= 1")
    parallel = args.parallel if getattr(args, "parallel", None) is not None else (2 if scale == "small" else 1)
    if parallel < 1:
        raise UserError("--parallel must be at least 1")
    if args.dataset != "cifar10" and scale != "paper":
        raise UserError("--dataset applies to --scale paper only (small is Fashion-MNIST, tiny synthetic)")
    specs = method_specs(scale, args.baselines or bool(args.methods), args.dataset)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(wanted) - {s.key for s in specs})
        if unknown or not wanted:
            raise UserError(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from "
                            f"{', '.join(s.key for s in specs)}")
        specs = [s for s in specs if s.key in wanted]
    sets = list(getattr(args, "set", []) or [])
    if any(o.split("=", 1)[0].strip() == "name" or o.split("=", 1)[0].strip().split(".")[0] == "method"
           for o in sets):
        raise UserError("--set name / method.*: the study names its runs and sets their methods (TE's ramp is "
                        "the scale's); use --methods to choose methods")
    recipes = [(spec, build_recipe(scale, spec, args.device, sets)) for spec in specs]  # validates before writing
    repro_path, repro_why = reproduction_target(scale, explicit=args.reproduction, disabled=args.no_reproduction,
                                                default_scales=REPRODUCTION_SCALES)
    out = Path(args.out or f"studies/robust-overfitting-{scale}")
    runs_dir = out / "runs"
    from advmem.engine.rundir import RunDir

    for _, recipe in recipes:  # refuse foreign run directories before training or writing anything
        run = RunDir(runs_dir / recipe.name)
        if run.is_run() and run.load_recipe().hash() != recipe.hash():
            raise UserError(f"{run.path} holds a run with other settings; delete it or pass another --out")
    runs_dir.mkdir(parents=True, exist_ok=True)

    from advmem.data import build_data
    from advmem.device import resolve_device

    first = recipes[0][1]
    device = resolve_device(first.device)
    results: dict[str, Any] = {"methods": {}}
    todo = [r for _, r in recipes if not is_complete(RunDir(runs_dir / r.name), r)]
    if parallel > 1 and len(todo) > 1:
        log(f"training {len(todo)} runs, {parallel} at a time")
        train_parallel(todo, runs_dir, hard_fraction=SCALES[scale]["hard_fraction"], parallel=parallel,
                       quiet=args.quiet)
    for spec, recipe in recipes:
        r = ensure_trained(recipe, runs_dir, hard_fraction=SCALES[scale]["hard_fraction"], quiet=args.quiet)
        results["methods"][spec.key] = {"label": spec.label, "run": str(r.path), "method": recipe.method.model_dump(mode="json")}
    test_set = build_data(first.data, device).test
    for spec, recipe in recipes:
        from advmem.engine.rundir import RunDir

        run_dir = RunDir(runs_dir / recipe.name)
        log(f"{recipe.name}: evaluating best/last (PGD-{args.pgd_steps}, AutoAttack on {aa_n})")
        entry = results["methods"][spec.key]
        entry["eval"] = evaluate_run(run_dir, recipe, test_set, aa_n=aa_n, pgd_steps=args.pgd_steps, device=device)
        keep = ("epoch", "test_rob_acc", "test_nat_acc", "train_rob_acc", "val_rob_acc", "ema_test_rob_acc",
                "hard_train_rob_acc", "lr")
        entry["curve"] = [{k: row[k] for k in keep if k in row} for row in run_dir.read_metrics()]
        entry["hard"] = [(row["epoch"], row["hard_train_rob_acc"]) for row in run_dir.read_metrics()
                         if "hard_train_rob_acc" in row]
    milestones = first.optim.schedule.milestones
    results["settings"] = {
        "scale": scale, "aa_n": aa_n, "pgd_steps": args.pgd_steps, "n_test": len(test_set),
        "milestones": milestones, "select_epoch": milestones[0] if milestones else first.optim.epochs // 2,
        "hard_fraction": SCALES[scale]["hard_fraction"], "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.time() - t0, "summary": settings_summary(first, SCALES[scale]),
        "command": f"advmem study robust-overfitting --scale {scale}"
                   + (f" --dataset {args.dataset}" if scale == "paper" else "")
                   + (f" --methods {args.methods}" if args.methods else " --baselines" if args.baselines else "")
                   + "".join(f" --set {o}" for o in sets)
                   + (f" --aa-n {args.aa_n}" if args.aa_n is not None else "")
                   + (f" --pgd-steps {args.pgd_steps}" if args.pgd_steps != 20 else ""),
    }
    write_tables(results, out)
    plot(results, out)
    text = markdown(results)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "README.md", text)
    if repro_path is not None:
        log(f"updated {update_reproduction(SECTION, text, repro_path)}")
    else:
        log(repro_why)
    print(text)
    log(f"done in {(time.time() - t0) / 60:.1f} min; results in {out}")
    return 0


def settings_summary(recipe, scale_cfg: dict[str, Any]) -> str:
    d, o, a = recipe.data, recipe.optim, recipe.attack
    te = scale_cfg["te"]
    size = f"{d.train_size} training images" if d.train_size else "all training images"
    if d.label_noise.kind != "none" and d.label_noise.rate > 0:
        size += f" with {d.label_noise.kind} label noise at rate {d.label_noise.rate} (seed {d.label_noise.seed})"
    return (f"{d.dataset}, {size} ({d.val_size} held out for validation), {recipe.model.name} "
            f"{recipe.model.kwargs or ''}, {a.norm} eps {a.eps} ({a.steps} steps of {a.step_size}), "
            f"{o.epochs} epochs, lr {o.lr} x{o.schedule.gamma} after epochs {o.schedule.milestones}, "
            f"batch {o.batch_size}, weight decay {o.weight_decay}, augment {d.augment}; TE momentum 0.9, "
            f"ramp epochs {te['start_epoch']}-{te['end_epoch']}, weight 300 (code units); "
            f"EMA decay {scale_cfg['ema']['decay']} on the PGD-AT run")
