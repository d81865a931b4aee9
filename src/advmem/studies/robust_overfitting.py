"""Robust overfitting and temporal ensembling: PGD-AT and TRADES with and without TE, plus baselines.

Trains PGD-AT, PGD-AT+TE, TRADES and TRADES+TE (with --baselines also MART and PGD-AT+AWP) on
one data set, once per seed (`--seeds N`: seeds 0..N-1; seed S sets the recipe's `seed` and
`data.label_noise.seed`, and a method and its TE variant share it, so TE - base is a paired
comparison), skipping runs already complete in the output folder (incomplete ones are resumed).
Weight averaging (an EMA of the PGD-AT weights) is tracked inside the PGD-AT run. Every run also
records the robust accuracy on its hardest training samples (the largest adversarial loss at
the last epoch before the first learning-rate decay); since every setting tracks every training
sample (every evaluated epoch), the section reports instead the 10% with the largest robust loss
averaged over the tracked epochs up to the decay, with their mean robust loss
(docs/robust-overfitting.md says why). Then the best (on the validation split:
early stopping) and last checkpoints are evaluated on the test set through `advmem.evaluation`
(its results cache, and AutoAttack with its sanity flags): natural and PGD-20 accuracy on the
first `n_test` test images, AutoAttack (standard) on the first `--aa-n`.

`--setting` picks the data and schedule (scale small; tiny mirrors them in miniature):
`noise20` (500 images, 20% label noise: the default), `noise40` (40% label noise) and `clean`
(300 clean images at a constant small learning rate, where test robust accuracy falls after
many small steps without any decay). Each is its own REPRODUCTION.md section.

Output folder: runs/ (one run directory per method and seed), table.md / table.csv /
results.json, robust_acc_vs_epoch.png (mean over seeds with +- std bands),
hardest_train_rob_acc.png, README.md; the same markdown becomes the setting's section of
REPRODUCTION.md.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any


from advmem.engine.rundir import RunDir
from advmem.io import atomic_write_json
from advmem.errors import RunFailure, UserError
from advmem.studies import common
from advmem.studies.cli import STUDIES
from advmem.studies.common import (add_study_arguments, call_with_threads, check_parallel, map_in_workers,
                                   schedule_text, seed_band, seed_list, stats, study_status, write_csv)

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI's parser does not import it
    import torch
from advmem.studies.reproduction import reproduction_target, smoke_note
from advmem.analysis.stats import paired_difference
from advmem.sweep import POLL_S, RunsProgress, usable_cores

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
    # every 4 epochs and no extra full-test-set pass at the end: the per-epoch evaluation (1,750
    # images, PGD-5, and the EMA's) costs several times an epoch's training (docs/robust-overfitting.md)
    "eval": {"every": 4, "train_subset": 250, "batch_size": 500, "attack": {"steps": 5}, "final_full": False},
}

SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"base": TINY, "te": {"start_epoch": 2, "end_epoch": 3}, "ema": {"decay": 0.5, "start_epoch": 1},
             "aa_n": 16, "aa_seeds": 2, "aa_version": "standard", "hard_fraction": 0.1, "seeds": 2},
    "small": {"base": SMALL, "te": {"start_epoch": 27, "end_epoch": 60}, "ema": {"decay": 0.99, "start_epoch": 1},
              "aa_n": 500, "aa_seeds": 1, "aa_version": "lite", "hard_fraction": 0.1, "seeds": 3},
    # paper: the shipped recipes (recipes/paper/<dataset>-*.yaml), with a 1,000-image validation split
    "paper": {"base": None, "te": {"start_epoch": 90, "end_epoch": 150}, "ema": {"decay": 0.999, "start_epoch": 1},
              "aa_n": 1000, "aa_seeds": 1, "aa_version": "standard", "hard_fraction": 0.1, "seeds": 1},
}

# The settings of --setting: overrides of the scale's base recipe, and the TE ramp when it differs
# from the scale's. `noise20` is the small base itself (its runs of seed 0 keep their names and
# hashes); `clean` is the candidate of docs/robust-overfitting.md: at a constant lr of 0.01, batch 16,
# 300 clean images, PGD-AT's test robust accuracy peaked near epoch 60 and fell by ~8 points by
# epoch 120 while training robust accuracy kept rising. TE ramps up over epochs 40-80 there, to
# full weight before the fall is under way, as the paper's ramp (90-150) brackets its first decay.
# Every setting also tracks every training sample (per_sample.parquet, every evaluated epoch) for the
# memorized-samples grids and counts and the hardest-samples curve (rule (c) of docs/memorization.md).
# Tracking runs in eval mode on its own generator, so it leaves the training trajectory unchanged
# (tests/test_tracker.py checks the weights); it does change the recipe, so a noise20 run
# trained before 2026-12-02 without it is retrained.
TRACK = {"tiny": "track.per_sample={every: 1, subset: all}", "small": "track.per_sample={every: 4, subset: all}"}
SETTINGS: dict[str, dict[str, Any]] = {
    "noise20": {"section": SECTION, "about": "20% symmetric label noise (the default)",
                "overrides": {"tiny": [TRACK["tiny"]], "small": [TRACK["small"]]}},
    "noise40": {"section": f"{SECTION}-noise40", "about": "40% symmetric label noise",
                "overrides": {"tiny": ["data.label_noise={kind: symmetric, rate: 0.4, seed: 0}", TRACK["tiny"]],
                              "small": ["data.label_noise.rate=0.4", TRACK["small"]]}},
    "clean": {"section": f"{SECTION}-clean", "about": "clean labels, constant small learning rate, many steps",
              "overrides": {"tiny": ["optim.schedule={name: constant}", TRACK["tiny"]],
                            "small": ["data.train_size=300", "data.label_noise={kind: none, rate: 0.0, seed: 0}",
                                      "model.kwargs={width: 16, hidden: 256}", "optim.lr=0.01",
                                      "optim.batch_size=16", "optim.epochs=120", "optim.schedule={name: constant}",
                                      TRACK["small"]]},
              "te": {"tiny": {"start_epoch": 2, "end_epoch": 3}, "small": {"start_epoch": 40, "end_epoch": 80}}},
}
# Set per seed by the study (as in the random-labels study); a --set of either is refused.
SEED_KEYS = ("seed", "data.label_noise.seed")


def te_ramp(scale: str, setting: str) -> dict[str, int]:
    return SETTINGS[setting].get("te", {}).get(scale, SCALES[scale]["te"])


def run_name(key: str, seed: int) -> str:
    """`pgd_at` for seed 0 (the single-seed study's names, so its runs are reused), then `_seedS`."""
    return key if seed == 0 else f"{key}_seed{seed}"


def method_specs(scale: str, baselines: bool, dataset: str = "cifar10", setting: str = "noise20") -> list[MethodSpec]:
    te = te_ramp(scale, setting) if scale != "paper" else SCALES[scale]["te"]
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


def build_recipe(scale: str, spec: MethodSpec, device: str, overrides: list[str] = (), seed: int = 0,
                 setting: str = "noise20"):
    """The recipe of one method and seed; `overrides` (KEY.PATH=VALUE, as --set) apply to every run,
    after the setting's and before the seed's."""
    # pydantic: only when a study runs (the CLI's parser imports this module)
    from advmem.recipe import apply_overrides, load_recipe, recipe_from_dict

    ema = SCALES[scale]["ema"]
    if scale == "paper":
        recipe = load_recipe(spec.recipe, [f"name={spec.key}", "data.val_size=1000", f"device={device}"])
        data = recipe.to_dict()
        if spec.key in ("mart", "awp"):
            data["method"] = spec.method
    else:
        data = copy.deepcopy(SCALES[scale]["base"])
        data.update(method=spec.method)
        if device != "auto" or scale != "tiny":
            data["device"] = device
    if spec.ema:
        data["optim"]["ema"] = dict(ema)
    sets = ([] if scale == "paper" else list(SETTINGS[setting]["overrides"][scale])) + list(overrides)
    sets += [f"seed={seed}", f"data.label_noise.seed={seed}", f"name={run_name(spec.key, seed)}"]
    data = apply_overrides(data, sets)
    return recipe_from_dict(data, source=f"study robust-overfitting ({scale}, {setting}, {spec.key}, seed {seed})")


# -------------------------------------------------------------------------------------------------
# The hardest training samples (the paper's memorization explanation)


class HardestTrainingSamples:
    """Trainer callback: at `select_epoch` (the last epoch before the first LR decay) pick the
    `fraction` of training samples with the largest adversarial loss (eval attack); from then on
    log their natural and robust accuracy (`hard_train_nat_acc`, `hard_train_rob_acc`) on every
    evaluated epoch. The selection is written to `hardest_train.json` and kept in the resume state."""

    state_key = "hardest_samples"

    def __init__(self, select_epoch: int, fraction: float) -> None:
        self.select_epoch = select_epoch
        self.fraction = fraction
        self.index: torch.Tensor | None = None

    def on_epoch_end(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        # torch: only when a run is evaluated
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


HARDEST_TRACKED = ("the largest robust loss averaged over the tracked epochs up to the first lr decay (over every "
                   "tracked epoch when the schedule has none; per-sample "
                   "tracking of every training sample; rule (c) of docs/memorization.md). A set chosen by its loss at "
                   "one epoch is at 0% robust accuracy there by construction and stayed below 1% in every run of the "
                   "noise20 setting; the average over the epochs before the decay keeps the samples that stay hard, and their "
                   "mean robust loss shows the model fitting them before any of them flips")


def tracked_hardest(run_path: Path, fraction: float) -> dict[str, Any] | None:
    """`track.memorized.hardest_curve` of a run with per-sample tracking; None for a run without."""
    # pyarrow and torch: only for a run that has per-sample tracking
    from advmem.track.memorized import hardest_curve, read_memorized
    from advmem.track.per_sample import PER_SAMPLE_FILE

    if not (run_path / PER_SAMPLE_FILE).is_file():
        return None
    sel, _ = read_memorized(run_path, k_hardest=2**31 - 1)  # the whole ranking; the curve takes its head
    return hardest_curve(sel, fraction)


# -------------------------------------------------------------------------------------------------
# Training (skipping complete runs) and final evaluation


def log(msg: str) -> None:
    common.log(f"[robust-overfitting] {msg}")


# A run directory of other settings than the study's is refused in these words.
MISMATCH = "holds a run with other settings; delete it or pass another --out"


def ensure_trained(recipe, runs_dir: Path, *, hard_fraction: float, quiet: bool) -> Path:
    """`common.ensure_trained` with the hardest-samples callback, selecting at the first LR decay."""
    milestones = recipe.optim.schedule.milestones
    select = milestones[0] if milestones else max(1, recipe.optim.epochs // 2)
    return common.ensure_trained(recipe, runs_dir, quiet=quiet, callbacks=[HardestTrainingSamples(select, hard_fraction)],
                                 mismatch=MISMATCH, log=log)


def _train_in_worker(recipe, runs_dir: str, hard_fraction: float) -> str:
    return str(ensure_trained(recipe, Path(runs_dir), hard_fraction=hard_fraction, quiet=True))


def train_parallel(recipes: list, runs_dir: Path, *, hard_fraction: float, parallel: int, quiet: bool = False) -> None:
    """Train the runs `parallel` at a time in spawned worker processes, each with cores/N threads
    (small models on a CPU scale poorly across threads, so two 1-thread runs beat one 2-thread
    run); the callbacks stay in-process in each worker. The first failure cancels the runs not
    yet started and is raised (a worker that died: RunFailure). Unless `quiet`, the runs' progress
    (sweep.RunsProgress)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    workers = min(parallel, len(recipes))
    threads = max(1, usable_cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    progress = RunsProgress({r.name: (runs_dir / r.name, r.optim.epochs) for r in recipes}, desc="training",
                            enabled=not quiet)
    try:
        futures = {pool.submit(call_with_threads, threads, _train_in_worker, (recipe, str(runs_dir), hard_fraction)):
                   recipe.name for recipe in recipes}
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


EVAL_VERSION = 2  # 2: through advmem.evaluation (1 was the study's own PGD and AutoAttack)


def evaluate_run(run, recipe, *, n_test: int | None, aa_n: int, pgd_steps: int, device,
                 aa_version: str = "standard") -> dict[str, dict[str, Any]]:
    """Natural, PGD-`pgd_steps` and AutoAttack test accuracy of best/last (and EMA) checkpoints.

    Through `advmem.evaluation.evaluate_checkpoint` (the same evaluation as `advmem eval`): natural
    and PGD (one random start, step eps/4) on the first `n_test` test images, AutoAttack
    (`aa_version` standard or lite) with the sanity checks on the first `aa_n`; its records go to
    `RUN/study_eval/` (kept there, so an interrupted AutoAttack resumes), and the numbers are cached
    in `study_eval.json`."""
    # torch: only when a run is evaluated
    from advmem.engine.checkpoint import read_sidecar
    from advmem.evaluation import evaluate_checkpoint

    cache_path = run.path / "study_eval.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    stems = ["best", "last"] + (["ema_best", "ema_last"] if recipe.optim.ema is not None else [])
    common = dict(split="test", batch_size=recipe.eval.batch_size, steps=pgd_steps, restarts=1, eps=None, seed=0,
                  device=device, quiet=True)
    out = {}
    for stem in stems:
        path = run.checkpoints / f"{stem}.safetensors"
        key = {"epoch": read_sidecar(run.checkpoints / stem)["epoch"], "recipe_hash": recipe.hash(), "aa_n": aa_n,
               "pgd_steps": pgd_steps, "n_test": n_test, "version": EVAL_VERSION,
               "aa_version": aa_version if aa_n > 0 else None}
        if stem in cache and all(cache[stem].get(k) == v for k, v in key.items()):
            out[stem] = cache[stem]
            continue
        pgd = evaluate_checkpoint(path, attacks=["clean", "pgd"], n_examples=n_test, checks=False,
                                  out_dir=run.path / "study_eval" / "pgd", **common)
        record = next(r for r in pgd["results"] if r["attack"] == "pgd" and r["settings"]["steps"] == pgd_steps
                      and r["settings"]["restarts"] == 1)
        result = dict(key, natural=pgd["clean_acc"], pgd=record["acc"], n_evaluated=pgd["n_examples"],
                      autoattack=None, sanity_flags=[])
        if aa_n > 0:
            attack = "autoattack" if aa_version == "standard" else "autoattack-lite"
            aa = evaluate_checkpoint(path, attacks=["clean", attack], n_examples=aa_n, checks=True,
                                     out_dir=run.path / "study_eval" / "autoattack", **common)
            result.update(autoattack=aa["attacks"][attack] if attack in aa["attacks"] else aa["autoattack_acc"],
                          aa_evaluated=aa["n_examples"],
                          sanity_flags=list(aa["sanity_flags"]))
        out[stem] = result
        cache[stem] = result
        atomic_write_json(cache_path, cache)
    return out


def evaluate_all(jobs: list[tuple[Path, Any, int]], *, parallel: int, **kwargs) -> list[dict[str, dict[str, Any]]]:
    """`evaluate_run` of every (run path, recipe, aa_n), `parallel` runs at a time in worker processes
    (AutoAttack on a CPU dominates the study's final stage)."""
    return map_in_workers(_evaluate, [(str(path), recipe, aa_n, kwargs) for path, recipe, aa_n in jobs], parallel)


def _evaluate(run_path: str, recipe, aa_n: int, kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return evaluate_run(RunDir(run_path), recipe, aa_n=aa_n, **kwargs)


# -------------------------------------------------------------------------------------------------
# Report: numbers per method over seeds, paired TE - base differences


METRICS = ("natural", "pgd", "autoattack")
METRIC_LABEL = {"natural": "natural", "pgd": "PGD", "autoattack": "AA"}


DASH = "–"  # the study's tables write a missing number as an en dash
pct = partial(common.pct, missing=DASH)
pm = partial(common.pm_stats, missing=DASH)  # '51.5 ± 1.2' in points (mean ± sample std over seeds); one seed: '51.5'
ci = partial(common.ci, missing=DASH)  # '+2.0 ± 1.1 [-0.7, +4.7]' (points; mean ± std over seeds, 95% t interval)


def variants(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method key, label, best stem, last stem) of every reported model: each method, and PGD-AT+EMA."""
    out = []
    for key, res in results["methods"].items():
        out.append((key, res["label"], "best", "last"))
        if res["ema"]:
            out.append((key, res["label"] + "+EMA", "ema_best", "ema_last"))
    return out


def per_seed_values(res: dict[str, Any], stem: str, metric: str) -> dict[int, float | None]:
    return {int(seed): e["eval"][stem].get(metric) for seed, e in res["per_seed"].items()}


def summarize_methods(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per reported model: best, last and best - last of each metric (mean ± std over seeds), the
    gap as a paired difference with its interval, the epochs, the sanity flags and the curve's peak."""
    rows = []
    for key, label, b, l in variants(results):
        res = results["methods"][key]
        row: dict[str, Any] = {"key": key, "method": label, "best_stem": b, "last_stem": l}
        for metric in METRICS:
            best, last = per_seed_values(res, b, metric), per_seed_values(res, l, metric)
            row[f"best_{metric}"], row[f"last_{metric}"] = stats(list(best.values())), stats(list(last.values()))
            row[f"gap_{metric}"] = paired_difference(best, last)
        row["best_epochs"] = [e["eval"][b]["epoch"] for e in res["per_seed"].values()]
        row["flags"] = sorted({f for e in res["per_seed"].values() for stem in (b, l)
                               for f in e["eval"][stem].get("sanity_flags", [])})
        curve_key = ("ema_" if b.startswith("ema") else "") + "test_rob_acc"
        peaks = [max((r[curve_key] for r in e["curve"] if r.get(curve_key) is not None), default=None)
                 for e in res["per_seed"].values()]
        row["peak_curve"] = stats(peaks)
        rows.append(row)
    return rows


def gap_values(res: dict[str, Any], metric: str) -> dict[int, float | None]:
    """best - last of `metric` per seed (None where either is missing)."""
    best, last = per_seed_values(res, "best", metric), per_seed_values(res, "last", metric)
    return {s: None if v is None or last[s] is None else v - last[s] for s, v in best.items()}


def paired_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """TE against its base and the EMA against PGD-AT, paired over the seeds both have."""
    methods = results["methods"]
    pairs = [(f"{base}_te", base) for base in ("pgd_at", "trades") if base in methods and f"{base}_te" in methods]
    out = []
    for new, base in pairs:
        a, b = methods[new], methods[base]
        entry = {"compare": f"{a['label']} - {b['label']}", "key": new, "base": base}
        for metric in ("pgd", "autoattack"):
            for which in ("last", "best"):
                entry[f"{which}_{metric}"] = paired_difference(per_seed_values(a, which, metric),
                                                               per_seed_values(b, which, metric))
            entry[f"gap_{metric}"] = paired_difference(gap_values(a, metric), gap_values(b, metric))
        out.append(entry)
    if "pgd_at" in methods and methods["pgd_at"]["ema"]:
        m = methods["pgd_at"]
        entry = {"compare": "PGD-AT+EMA - PGD-AT", "key": "pgd_at_ema", "base": "pgd_at"}
        for metric in ("pgd", "autoattack"):
            for which in ("last", "best"):
                entry[f"{which}_{metric}"] = paired_difference(per_seed_values(m, f"ema_{which}", metric),
                                                               per_seed_values(m, which, metric))
        out.append(entry)
    return out


def verdict(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], scale: str) -> list[str]:
    """The findings in the paper's terms: does the base method overfit, and does TE mitigate it?"""
    by = {r["method"]: r for r in rows}
    lines = []
    for base in ("PGD-AT", "TRADES"):
        r = by.get(base)
        if r is None or r["gap_pgd"]["mean"] is None:
            continue
        g = r["gap_pgd"]
        seen = g.get("distinguishable")
        overfits = ("yes" if seen and g["mean"] > 0 else "no" if seen is not None else "not judged (one seed)")
        lines.append(f"- {base}: best - last PGD-20 {ci(g)} points over {g['n']} seed(s): {g['verdict']}. "
                     f"Robust overfitting (best above last beyond seed noise): **{overfits}**.")
    for p in pairs:
        if p["key"] == "pgd_at_ema":
            continue
        last, gapd = p["last_pgd"], p["gap_pgd"]
        if last["mean"] is None:
            continue
        better = "yes" if last.get("distinguishable") and last["mean"] > 0 else (
            "no" if last.get("distinguishable") is not None else "not judged (one seed)")
        lines.append(f"- {p['compare']} (paired over seeds {', '.join(map(str, last['seeds']))}): last-checkpoint "
                     f"PGD-20 {ci(last)} points ({last['verdict']}); best - last gap {ci(gapd)} points "
                     f"({gapd['verdict']}). The paper: TE raises the last checkpoint's robust accuracy and shrinks "
                     f"the gap. TE better at the last checkpoint beyond seed noise: **{better}**.")
    if scale == "tiny":
        lines.append("- Scale `tiny` is a smoke test on synthetic data: these numbers say nothing about the paper.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows, pairs = summarize_methods(results), paired_rows(results)
    seeds = s["seeds"]
    aa_seeds = s.get("aa_seeds", seeds)
    version = ("standard" if s.get("aa_version", "standard") == "standard"
               else "lite: APGD-CE + APGD-T with the standard settings")
    aa = (f"AutoAttack ({version}; with advmem's sanity checks, which include a 1,000-query Square) on the first {s['aa_n']} test images for seed(s) "
          f"{', '.join(map(str, aa_seeds))}" if s["aa_n"] and aa_seeds else "AutoAttack skipped")
    out = [
        f"## Robust overfitting and temporal ensembling: {s['setting_about']} "
        f"(`advmem study robust-overfitting --scale {s['scale']} --setting {s['setting']}`)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s['command']}`.",
        "",
        f"Settings: {s['summary']}. Seeds: {', '.join(map(str, seeds))} (each seed draws the initialization"
        + (", the data order and the noisy labels" if s.get("noisy_labels", True) else " and the data order")
        + "; a method and its TE variant share them, so their difference is paired). "
        "Best = highest validation robust accuracy (early stopping); last = final epoch. Test accuracy (%) from "
        f"`advmem.evaluation`: natural and PGD-{s['pgd_steps']} (step eps/4, one random start) on "
        + (f"the first {s['n_test']}" if s["n_test"] != "all" else "all")
        + f" test images, {aa}. Every number is the mean ± the sample standard deviation over the {len(seeds)} seed(s); best - last is a paired difference over the seeds with its 95% t interval in brackets. "
        f"Generated {s['date']}; wall time of this invocation {s['wall_s'] / 60:.1f} min.",
        "",
        "| method | best PGD | last PGD | best - last PGD | best AA | last AA | best - last AA | best natural | last natural | peak test robust during training |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r['method']} | {pm(r['best_pgd'])} | {pm(r['last_pgd'])} | {ci(r['gap_pgd'])} | "
                   f"{pm(r['best_autoattack'])} | {pm(r['last_autoattack'])} | {ci(r['gap_autoattack'])} | "
                   f"{pm(r['best_natural'])} | {pm(r['last_natural'])} | {pm(r['peak_curve'])} |")
        if r["key"] == "pgd_at" and r["best_stem"] == "best":
            out.append(f"| Early stopping (PGD-AT) | {pm(r['best_pgd'])} | – | – | {pm(r['best_autoattack'])} | – | – | "
                       f"{pm(r['best_natural'])} | – | – |")
    out += ["", "Best epochs (per seed): " + "; ".join(f"{r['method']} {', '.join(map(str, r['best_epochs']))}"
                                                     for r in rows) + "."]
    out += compute_lines(results)
    flagged = [f"{r['method']}: {', '.join(r['flags'])}" for r in rows if r["flags"]]
    out.append("AutoAttack sanity flags: " + ("; ".join(flagged) if flagged else "none") + ".")
    if pairs:
        out += ["", "Paired differences (points; mean ± std over the seeds both have, [95% t interval]):", "",
                "| comparison | last PGD | last AA | best PGD | best - last PGD | verdict (last PGD) |",
                "|---|---|---|---|---|---|"]
        for p in pairs:
            out.append(f"| {p['compare']} | {ci(p['last_pgd'])} | {ci(p['last_autoattack'])} | {ci(p['best_pgd'])} | "
                       f"{ci(p['gap_pgd']) if 'gap_pgd' in p else '–'} | {p['last_pgd']['verdict']} |")
    out += ["", "Findings:", *verdict(rows, pairs, s["scale"])]
    hard = []
    for res in results["methods"].values():
        ends = [(h[0][1], h[-1][1]) for h in (e["hard"] for e in res["per_seed"].values()) if h]
        if ends:
            hard.append(f"{res['label']} {pct(sum(a for a, _ in ends) / len(ends))} -> "
                        f"{pct(sum(b for _, b in ends) / len(ends))}")
    tracked = hardest_tracked_lines(results)
    if tracked:
        out += tracked
    elif hard:
        out += ["", "Robust accuracy (%) on the hardest 10% of training samples (largest adversarial loss at epoch "
                f"{s['select_epoch']}), at selection and at the end, mean over seeds: " + "; ".join(hard) + "."]
    out += results.get("memorized_markdown") or []
    out += ["", "Figures: `robust_acc_vs_epoch.png` (mean over seeds, ± std bands, decays marked), "
            "`hardest_train_rob_acc.png`" + (", `memorized/`" if results.get("memorized_markdown") else "")
            + " in the study folder. What was tried at small scale and why: "
            "docs/robust-overfitting.md."]
    return "\n".join(out) + "\n"


def compute_lines(results: dict[str, Any]) -> list[str]:
    """Minutes of training per run (its epoch times, per-epoch evaluation and tracking included; the
    final PGD-20 / AutoAttack evaluation is not), mean ± std over seeds per method, and the total."""
    per_method = {res["label"]: [e["run_minutes"] for e in res["per_seed"].values() if e.get("run_minutes")]
                  for res in results["methods"].values()}
    if not all(per_method.values()):
        return []  # results of an older advmem, or runs without epoch times
    total = sum(sum(v) for v in per_method.values())
    return ["Compute: minutes of training per run (the sum of its epoch times, per-epoch evaluation and tracking "
            "included, over every invocation that trained it; the final evaluation is not): "
            + "; ".join(f"{label} {pm(stats(v), percent=False)}" for label, v in per_method.items())
            + f"; {total:.0f} run-minutes in all (summed per run, whatever --parallel was)."]


def hardest_tracked_lines(results: dict[str, Any]) -> list[str]:
    """The hardest-samples paragraph from per-sample tracking: robust accuracy and mean robust loss
    at the first tracked epoch, the last one up to the first decay, and the end (mean ± std over seeds)."""
    lines = []
    for res in results["methods"].values():
        curves = [e["hard_tracked"] for e in res["per_seed"].values() if e.get("hard_tracked")]
        if not curves:
            continue
        points = []
        for c in curves:
            epochs, decay = c["epochs"], c["decay"]
            before = [i for i, ep in enumerate(epochs) if decay is not None and ep <= decay]
            picks = [0] + ([before[-1]] if before and 0 < before[-1] < len(epochs) - 1 else []) + [len(epochs) - 1]
            points.append([(epochs[i], c["rob_acc"][i], c["rob_loss"][i]) for i in picks])
        if len({len(p) for p in points}) != 1:
            continue
        cols = []
        for j in range(len(points[0])):
            ep = sorted({p[j][0] for p in points})
            acc, loss = stats([p[j][1] for p in points]), stats([p[j][2] for p in points])
            cols.append(f"epoch {'/'.join(map(str, ep))}: {pm(acc, unit='%')}, "
                        f"loss {pm(loss, percent=False)}")
        c0 = curves[0]
        lines.append(f"| {res['label']} | {c0['k']} of {c0['n']} ({sum(c['changed'] for c in curves) / len(curves):.0f} "
                     f"with a changed label) | " + " → ".join(cols) + f" | {len(curves)} |")
    if not lines:
        return []
    return ["", f"Hardest {int(100 * results['settings']['hard_fraction'])}% of the training samples: "
            + HARDEST_TRACKED + ". Robust accuracy on them (mean ± std over seeds) and their mean robust loss, at "
            "the first tracked epoch, the last one up to the first decay (where there is one) and the end:", "",
            "| run | samples | robust accuracy and loss | seeds |", "|---|---|---|---|", *lines]


def mark_decays(ax, milestones: list[int]) -> None:
    for i, m in enumerate(milestones):
        ax.axvline(m + 0.5, color="grey", lw=0.8, ls=":", label="lr decay" if i == 0 else None)


def plot(results: dict[str, Any], out: Path) -> None:
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    milestones = results["settings"]["milestones"]
    n = len(results["settings"]["seeds"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, res in enumerate(results["methods"].values()):
        colour = f"C{i}"
        for ax, key in ((axes[0], "test_rob_acc"), (axes[1], "train_rob_acc")):
            seed_band(ax, [[(r["epoch"], r[key]) for r in e["curve"] if r.get(key) is not None]
                           for e in res["per_seed"].values()], colour, res["label"])
        seed_band(axes[0], [[(r["epoch"], r["ema_test_rob_acc"]) for r in e["curve"] if r.get("ema_test_rob_acc") is not None]
                            for e in res["per_seed"].values()], colour, res["label"] + "+EMA", ls="--")
    band = f", mean ± std over {n} seeds" if n > 1 else ""
    for ax, title in ((axes[0], "test robust accuracy (PGD, eval attack)"),
                      (axes[1], "training robust accuracy (train subset)")):
        mark_decays(ax, milestones)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title + band, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "robust_acc_vs_epoch.png")

    tracked = any(e.get("hard_tracked") for res in results["methods"].values() for e in res["per_seed"].values())
    if tracked:
        plot_hardest_tracked(results, out)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, res in enumerate(results["methods"].values()):
        seed_band(ax, [e["hard"] for e in res["per_seed"].values()], f"C{i}", res["label"])
    mark_decays(ax, milestones)
    ax.set_ylim(bottom=0)  # an accuracy: a 0% curve must not sit in the middle of the plot
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"hardest {int(100 * results['settings']['hard_fraction'])}% training samples{band}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "hardest_train_rob_acc.png")


def plot_hardest_tracked(results: dict[str, Any], out: Path) -> None:
    """hardest_train_rob_acc.png from per-sample tracking: robust accuracy and mean robust loss of the
    hardest samples (rule (c)) against epoch, mean ± std over seeds."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    n = len(results["settings"]["seeds"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, res in enumerate(results["methods"].values()):
        curves = [e["hard_tracked"] for e in res["per_seed"].values() if e.get("hard_tracked")]
        seed_band(axes[0], [list(zip(c["epochs"], c["rob_acc"])) for c in curves], f"C{i}", res["label"])
        seed_band(axes[1], [list(zip(c["epochs"], c["rob_loss"])) for c in curves], f"C{i}", res["label"], scale=1.0)
    band = f", mean ± std over {n} seeds" if n > 1 else ""
    pct_label = int(100 * results["settings"]["hard_fraction"])
    for ax, ylabel in ((axes[0], "robust accuracy (%)"), (axes[1], "mean robust loss")):
        mark_decays(ax, results["settings"]["milestones"])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"hardest {pct_label}% training samples (rule (c)){band}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "hardest_train_rob_acc.png")


def write_tables(results: dict[str, Any], out: Path) -> None:
    """table.csv: one row per reported model, seed and checkpoint; results.json: everything."""
    rows = []
    for key, label, b, l in variants(results):
        for seed, e in results["methods"][key]["per_seed"].items():
            for which, stem in (("best (val)", b), ("last", l)):
                ev = e["eval"][stem]
                rows.append({"method": label, "seed": seed, "checkpoint": which, "epoch": ev["epoch"],
                             "natural": ev["natural"], "pgd": ev["pgd"], "autoattack": ev["autoattack"],
                             "sanity_flags": ";".join(ev.get("sanity_flags", []))})
    write_csv(rows, out / "table.csv")
    atomic_write_json(out / "results.json", results)


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    add_study_arguments(
        parser, scales=SCALES, reproduction_scales=REPRODUCTION_SCALES,
        out="studies/robust-overfitting-SCALE, with -SETTING for a setting other than noise20", device_default="auto",
        scale_help="tiny: synthetic smoke test (seconds); small: Fashion-MNIST subset on a CPU (about 90 min per "
                   "setting with 3 seeds on 2 cores); paper: the authors' ResNet-18 recipes (GPU)",
        set_help="override a value in every run (repeatable), e.g. --set optim.epochs=60 (not name, method.*, seed or "
                 "data.label_noise.seed: use --methods and --seeds)",
        seeds_help="train every method with seeds 0..N-1 (the seed draws the initialization, the data order and the "
                   "noisy labels; a method and its TE variant share it) and report mean ± std and paired "
                   "differences; default 2 at tiny, 3 at small, 1 at paper. Seed 0 keeps the single-seed run names",
        parallel_default=None, parallel_help="runs trained at a time in worker processes, each with cores/N threads "
                                             "(default: 2 at scale small, else 1)")
    parser.add_argument("--setting", choices=list(SETTINGS), default="noise20",
                        help="noise20: 500 images with 20%% label noise (default); noise40: 40%% label noise; clean: "
                             "300 clean images, constant small lr (scales tiny and small; each its own "
                             "REPRODUCTION.md section)")
    parser.add_argument("--baselines", action="store_true", help="also train MART and PGD-AT+AWP")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of pgd_at,pgd_at_te,trades,trades_te,mart,awp")
    parser.add_argument("--dataset", choices=PAPER_DATASETS, default="cifar10", help="paper scale only")
    parser.add_argument("--aa-n", type=int, default=None,
                        help="AutoAttack on the first N test images (default: tiny 16, small 500, paper 1000; 0 skips)")
    parser.add_argument("--aa-seeds", type=int, default=None, metavar="K",
                        help="AutoAttack on the checkpoints of seeds 0..K-1 only (default: every seed at tiny, 1 at "
                             "small and paper: on a CPU one AutoAttack of 500 images costs several minutes); the "
                             "other seeds get natural and PGD accuracy")
    parser.add_argument("--aa-version", choices=["standard", "lite"], default=None,
                        help="AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) or lite (APGD-CE + APGD-T with "
                             "the standard settings); default lite at small (FAB-T and Square take tens of minutes "
                             "per checkpoint on a CPU), standard otherwise")
    parser.add_argument("--pgd-steps", type=int, default=20, help="steps of the final PGD evaluation (default 20)")


def check_sets(sets: list[str]) -> None:
    for o in sets:
        key = o.split("=", 1)[0].strip()
        if key == "name" or key.split(".")[0] == "method":
            raise UserError("--set name / method.*: the study names its runs and sets their methods (TE's ramp is "
                            "the scale's); use --methods to choose methods")
        if key in SEED_KEYS:
            raise UserError(f"--set {o}: the study seeds each run itself (seed and data.label_noise.seed follow the "
                            "run's seed, 0..N-1); use --seeds N")


@STUDIES.register("robust-overfitting")
def run(args) -> int:
    t0 = time.time()
    scale = args.scale
    setting = getattr(args, "setting", "noise20")
    aa_n = SCALES[scale]["aa_n"] if args.aa_n is None else args.aa_n
    aa_seeds = SCALES[scale]["aa_seeds"] if getattr(args, "aa_seeds", None) is None else args.aa_seeds
    aa_version = getattr(args, "aa_version", None) or SCALES[scale]["aa_version"]
    if aa_n < 0 or args.pgd_steps < 1 or aa_seeds < 0:
        raise UserError("--aa-n and --aa-seeds must be >= 0 and --pgd-steps >= 1")
    parallel = check_parallel(args.parallel if getattr(args, "parallel", None) is not None else
                              (2 if scale == "small" else 1))
    if args.dataset != "cifar10" and scale != "paper":
        raise UserError("--dataset applies to --scale paper only (small is Fashion-MNIST, tiny synthetic)")
    if scale == "paper" and setting != "noise20":
        raise UserError(f"--setting {setting} applies to scales tiny and small; the paper scale trains the paper's recipes")
    seeds = seed_list(SCALES[scale]["seeds"] if getattr(args, "seeds", None) is None else args.seeds)
    n_seeds = len(seeds)
    specs = method_specs(scale, args.baselines or bool(args.methods), args.dataset, setting)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(wanted) - {s.key for s in specs})
        if unknown or not wanted:
            raise UserError(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from "
                            f"{', '.join(s.key for s in specs)}")
        specs = [s for s in specs if s.key in wanted]
    sets = list(getattr(args, "set", []) or [])
    check_sets(sets)
    recipes = [(spec, seed, build_recipe(scale, spec, args.device, sets, seed, setting))
               for spec in specs for seed in seeds]  # validates everything before writing
    section = SETTINGS[setting]["section"]
    repro_path, repro_why = reproduction_target(scale, explicit=args.reproduction, disabled=args.no_reproduction,
                                                default_scales=REPRODUCTION_SCALES)
    out = Path(args.out or f"studies/robust-overfitting-{scale}" + ("" if setting == "noise20" else f"-{setting}"))
    runs_dir = out / "runs"
    # refuse foreign run directories before training or writing anything
    status = {r.name: study_status(runs_dir / r.name, r, mismatch=MISMATCH) for _, _, r in recipes}
    runs_dir.mkdir(parents=True, exist_ok=True)

    # torch: only when a study runs
    from advmem.device import resolve_device

    first = recipes[0][2]
    device = resolve_device(first.device)
    hard_fraction = SCALES[scale]["hard_fraction"]
    todo = [r for _, _, r in recipes if status[r.name] != "complete"]
    if parallel > 1 and len(todo) > 1:
        log(f"training {len(todo)} runs, {parallel} at a time")
        train_parallel(todo, runs_dir, hard_fraction=hard_fraction, parallel=parallel, quiet=args.quiet)
    results: dict[str, Any] = {"methods": {}}
    for spec, seed, recipe in recipes:
        path = ensure_trained(recipe, runs_dir, hard_fraction=hard_fraction, quiet=args.quiet)
        entry = results["methods"].setdefault(spec.key, {"label": spec.label, "ema": recipe.optim.ema is not None,
                                                         "method": recipe.method.model_dump(mode="json"),
                                                         "seeds": [], "runs": [], "per_seed": {}})
        entry["seeds"].append(seed)
        entry["runs"].append(str(path))
    n_test = first.data.test_size
    keep = ("epoch", "test_rob_acc", "test_nat_acc", "train_rob_acc", "val_rob_acc", "ema_test_rob_acc",
            "hard_train_rob_acc", "lr")
    log(f"evaluating best/last of {len(recipes)} runs (PGD-{args.pgd_steps} on {n_test or 'all'} test images, "
        f"AutoAttack on {aa_n} for seeds < {aa_seeds}), {parallel} at a time")
    evals = evaluate_all([(runs_dir / r.name, r, aa_n if seed < aa_seeds else 0) for _, seed, r in recipes],
                         parallel=parallel, n_test=n_test, pgd_steps=args.pgd_steps, device=device,
                         aa_version=aa_version)
    for (spec, seed, recipe), ev in zip(recipes, evals):
        run_dir = RunDir(runs_dir / recipe.name)
        rows = run_dir.read_metrics()
        results["methods"][spec.key]["per_seed"][str(seed)] = {
            "run": str(run_dir.path), "eval": ev,
            "run_minutes": common.run_minutes(rows),
            "curve": [{k: row[k] for k in keep if k in row} for row in rows],
            "hard": [(row["epoch"], row["hard_train_rob_acc"]) for row in rows if "hard_train_rob_acc" in row],
            "hard_tracked": tracked_hardest(run_dir.path, hard_fraction)}
    milestones = first.optim.schedule.milestones if first.optim.schedule.name == "multistep" else []
    results["settings"] = {
        "scale": scale, "setting": setting, "setting_about": SETTINGS[setting]["about"], "section": section,
        "seeds": seeds, "aa_n": aa_n, "aa_seeds": [x for x in seeds if x < aa_seeds], "aa_version": aa_version,
        "pgd_steps": args.pgd_steps, "n_test": n_test or "all",
        "noisy_labels": first.data.label_noise.kind != "none" and first.data.label_noise.rate > 0,
        "milestones": milestones, "select_epoch": milestones[0] if milestones else first.optim.epochs // 2,
        "hard_fraction": hard_fraction, "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.time() - t0, "summary": settings_summary(first, SCALES[scale], te_ramp(scale, setting)
                                                               if scale != "paper" else SCALES[scale]["te"]),
        "command": f"advmem study robust-overfitting --scale {scale}"
                   + (f" --setting {setting}" if setting != "noise20" else "")
                   + f" --seeds {n_seeds}"
                   + (f" --dataset {args.dataset}" if scale == "paper" else "")
                   + (f" --methods {args.methods}" if args.methods else " --baselines" if args.baselines else "")
                   + "".join(f" --set {o}" for o in sets)
                   + (f" --aa-n {args.aa_n}" if args.aa_n is not None else "")
                   + (f" --aa-seeds {args.aa_seeds}" if getattr(args, "aa_seeds", None) is not None else "")
                   + (f" --aa-version {args.aa_version}" if getattr(args, "aa_version", None) else "")
                   + (f" --pgd-steps {args.pgd_steps}" if args.pgd_steps != 20 else ""),
    }
    results["summary"] = {"methods": summarize_methods(results), "paired": paired_rows(results)}
    results["memorized_markdown"] = common.memorized_samples(
        {spec.label: [runs_dir / r.name for s2, _, r in recipes if s2.key == spec.key] for spec in specs}, out)
    write_tables(results, out)
    plot(results, out)
    common.publish(markdown(results), out, files=("table.md", "README.md"), section=section, repro_path=repro_path,
                   repro_why=repro_why, t0=t0, log=log)
    return 0


def settings_summary(recipe, scale_cfg: dict[str, Any], te: dict[str, int]) -> str:
    d, o, a = recipe.data, recipe.optim, recipe.attack
    size = f"{d.train_size} training images" if d.train_size else "all training images"
    if d.label_noise.kind != "none" and d.label_noise.rate > 0:
        size += f" with {d.label_noise.kind} label noise at rate {d.label_noise.rate} (drawn per seed)"
    else:
        size += " with clean labels"
    sched = schedule_text(o)
    return (f"{d.dataset}, {size} ({d.val_size} held out for validation), {recipe.model.name} "
            f"{recipe.model.kwargs or ''}, {a.norm} eps {a.eps} ({a.steps} steps of {a.step_size}), "
            f"{o.epochs} epochs, {sched}, batch {o.batch_size}, weight decay {o.weight_decay}, augment {d.augment}, "
            f"evaluated every {recipe.eval.every} epoch(s); TE momentum 0.9, ramp epochs "
            f"{te['start_epoch']}-{te['end_epoch']}, weight 300 (code units); "
            f"EMA decay {scale_cfg['ema']['decay']} on the PGD-AT run")
