"""What the studies share: checking and training their runs (in this process or as `advmem train`
subprocesses), work spread over worker processes, their common command-line arguments, the
numbers over seeds (mean ± std) and how they are written, and publishing the README and the
REPRODUCTION.md section.

Whether a run is done is `RunDir.status` (engine/rundir.py), the rule the sweep uses too; a study
only adds its refusal of a directory it must not touch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from advmem.engine.rundir import RunDir
from advmem.errors import RunFailure, UserError
from advmem.io import atomic_write_text
from advmem.studies.reproduction import update_reproduction
from advmem.report.memorized import memorized_figures
from advmem.sweep import SweepRun, launch_local, usable_cores

# The refusal of a run directory holding another recipe's run (robust-overfitting words it its own way).
MISMATCH = "was trained with different settings than this study asks for; remove it (or choose another --out) to train it again"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
# Arguments


def check_parallel(parallel: int) -> int:
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: must be at least 1")
    return parallel


def seed_list(n: int) -> list[int]:
    """Seeds 0..N-1 (N from --seeds)."""
    if n < 1:
        raise UserError(f"--seeds {n}: must be at least 1")
    return list(range(n))


def add_study_arguments(parser, *, scales: dict[str, Any], reproduction_scales: frozenset[str], scale_help: str,
                        out: str, set_help: str, seeds_help: str, parallel_help: str, seeds_default: int | None = None,
                        parallel_default: int | None = 1, device_default: str | None = None,
                        device_help: str | None = None, with_device: bool = True) -> None:
    """--scale, --out, --device, --set, --seeds, --parallel, --reproduction and --no-reproduction, the
    arguments every study has (--quiet comes with every command); what differs per study is passed in."""
    parser.add_argument("--scale", choices=list(scales), default="small", help=scale_help)
    parser.add_argument("--out", default=None, help=f"output folder (default {out})")
    if with_device:
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=device_default, help=device_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help=set_help)
    parser.add_argument("--seeds", type=int, default=seeds_default, metavar="N", help=seeds_help)
    parser.add_argument("--parallel", type=int, default=parallel_default, help=parallel_help)
    where = " or ".join(s for s in scales if s in reproduction_scales)
    parser.add_argument("--reproduction", default=None,
                        help=f"REPRODUCTION.md to update (default: at scale {where}, the REPRODUCTION.md of the "
                             "advmem checkout holding the current directory; tiny never by default)")
    parser.add_argument("--no-reproduction", action="store_true", help="do not update REPRODUCTION.md")


# -------------------------------------------------------------------------------------------------
# Runs: checked, then trained in this process or as `advmem train` subprocesses


def study_status(path: Path, recipe, *, mismatch: str = MISMATCH) -> str:
    """`RunDir.status` of `recipe` in `path`; a directory that is not a run, or holds another
    recipe's run, is refused (the study would otherwise train over it or report it)."""
    status = RunDir(path).status(recipe)
    if status == "foreign":
        raise UserError(f"{path} exists but is not a run directory; remove it or choose another --out")
    if status == "mismatch":
        raise UserError(f"{path} {mismatch}")
    return status


def ensure_trained(recipe, runs_dir: Path, *, quiet: bool, callbacks: list[Any] | None = None,
                   mismatch: str = MISMATCH, log: Callable[[str], None] = log) -> Path:
    """Train `recipe` in this process unless its run in `runs_dir` is complete: resumed from
    resume.pt when there is one, else started again (a run that never committed an epoch)."""
    from advmem.training import train  # torch: only when something is trained

    path = runs_dir / recipe.name
    status = study_status(path, recipe, mismatch=mismatch)
    if status == "complete":
        log(f"{recipe.name}: complete, skipped")
        return path
    resume = status != "new" and RunDir(path).resume_path.exists()
    log(f"{recipe.name}: {'resuming' if resume else 'training'} ({recipe.optim.epochs} epochs)")
    train(recipe, run_root=runs_dir, resume=resume, overwrite=status != "new" and not resume, quiet=quiet,
          callbacks=callbacks)
    return path


def launch_runs(jobs: list[tuple[Any, str, int, list[str]]], runs_dir: Path, parallel: int) -> None:
    """`jobs`: (recipe, its recipe spec, seed, --set overrides). The runs not yet complete in
    `runs_dir` are trained as `advmem train` subprocesses, `parallel` at a time (`launch_sweep_runs`)."""
    runs = []
    for recipe, spec, seed, overrides in jobs:
        run = SweepRun(name=recipe.name, point={}, seed=seed, overrides=overrides + [f"output_root={runs_dir}"],
                       recipe=recipe, spec=spec)
        run.status = study_status(runs_dir / recipe.name, recipe)
        if run.status == "complete":
            log(f"{recipe.name}: complete, skipped")
        runs.append(run)
    launch_sweep_runs(runs, runs_dir, parallel)


def launch_sweep_runs(runs: list, runs_dir: Path, parallel: int) -> None:
    """The sweep runs (`sweep.SweepRun`, `status` set) neither complete nor running (another process
    writes those), as `advmem train` subprocesses `parallel` at a time (the sweep's launcher, logs in
    RUNS_DIR/logs); a run not complete at the end is a RunFailure naming the logs."""
    todo = [r for r in runs if r.status not in ("complete", "running")]
    if todo:
        runs_dir.mkdir(parents=True, exist_ok=True)
        launch_local(todo, "", runs_dir, parallel, log)
    bad = [r.name for r in runs if r.status != "complete" and RunDir(runs_dir / r.name).status(r.recipe) != "complete"]
    if bad:
        raise RunFailure(f"{len(bad)} runs did not finish ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                         f"see {runs_dir / 'logs'}, then run the same command again to resume them")


def call_with_threads(threads: int, fn: Callable, args: tuple) -> Any:
    """`fn(*args)` with `threads` torch threads (what a worker process of `map_in_workers` runs)."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def map_in_workers(fn: Callable, jobs: list[tuple], parallel: int) -> list[Any]:
    """`fn(*job)` of every job, in order: here when `parallel` is 1 (or there is one job), else in
    `parallel` spawned worker processes with cores/N torch threads each (small models on a CPU scale
    poorly across threads, so N one-thread workers beat one N-thread process). `fn` must be picklable."""
    if parallel <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(parallel, len(jobs))
    threads = max(1, usable_cores() // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(call_with_threads, threads, fn, tuple(job)) for job in jobs]
        return [f.result() for f in futures]


# -------------------------------------------------------------------------------------------------
# Numbers over seeds


def run_minutes(rows: list[dict[str, Any]]) -> float:
    """What a run's training cost, whatever invocations trained it: the sum of its metrics rows'
    epoch times (per-epoch evaluation and tracking included), in minutes."""
    return sum(float(r.get("epoch_time") or 0.0) for r in rows) / 60


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; 0 for one value), min, max and n of the values present."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    out: dict[str, Any] = {"mean": None, "std": None, "min": None, "max": None, "n": len(vals),
                           "values": [None if v is None else float(v) for v in values]}
    if vals:
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out.update(mean=mean, std=std, min=min(vals), max=max(vals))
    return out


def pct(value: float | None, *, unit: str = "", missing: str = "—") -> str:
    """An accuracy in points with one decimal ('45.3' + unit); `missing` for None or a non-finite value."""
    if value is None or not math.isfinite(float(value)):
        return missing
    return f"{100 * value:.1f}{unit}"


def fmt(value: float | None, *, missing: str = "—") -> str:
    """A number to three significant digits (gradient norms, probe changes)."""
    return missing if value is None else f"{value:.3g}"


def pm(mean: float | None, std: float | None, n: int, *, percent: bool = True, unit: str = "",
       missing: str = "—", signed: bool = False) -> str:
    """Mean ± sample std over n seeds: '45.3 ± 2.1' in points (`percent`) or '0.0123 ± 0.004';
    one seed: the mean alone. `unit` follows the whole ('45.3 ± 2.1%')."""
    if mean is None:
        return missing
    sign = "+" if signed else ""
    text, spread = (f"{100 * mean:{sign}.1f}", f"{100 * (std or 0.0):.1f}") if percent else (
        f"{mean:{sign}.3g}", f"{std or 0.0:.2g}")
    return text + (f" ± {spread}" if n > 1 else "") + unit


def pm_stats(st: dict[str, Any] | None, **kwargs) -> str:
    """`pm` of a `stats` dict (None or one without a mean: the `missing` text)."""
    if not st:
        return kwargs.get("missing", "—")
    return pm(st.get("mean"), st.get("std"), st.get("n", 0), **kwargs)


def ci(d: dict[str, Any], *, missing: str = "—") -> str:
    """A paired difference (`analysis.stats.paired_difference`) in points: '+2.0 ± 1.1 [-0.7, +4.7]'
    (mean ± std over seeds, 95% t interval); one seed: '+2.0'."""
    if d.get("mean") is None:
        return missing
    text = f"{100 * d['mean']:+.1f}"
    if d.get("std") is None:
        return text
    return f"{text} ± {100 * d['std']:.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def schedule_text(optim) -> str:
    """'lr 0.1 x0.1 after epochs [30, 60]' or 'lr 0.01 (constant)'."""
    if optim.schedule.name == "multistep":
        return f"lr {optim.lr} x{optim.schedule.gamma} after epochs {optim.schedule.milestones}"
    return f"lr {optim.lr} ({optim.schedule.name})"


# -------------------------------------------------------------------------------------------------
# Figures and files


def std_band(ax, xs: list, ys: list[float], sd: list[float], colour: str, *, alpha: float = 0.15) -> None:
    """The ± std band around a mean curve over seeds."""
    ax.fill_between(xs, [y - d for y, d in zip(ys, sd)], [y + d for y, d in zip(ys, sd)], color=colour,
                    alpha=alpha, lw=0)


def seed_band(ax, curves: list[list[tuple[int, float]]], colour: str, label: str, ls: str = "-",
              scale: float = 100.0) -> None:
    """The mean over seeds of per-seed (epoch, value) curves, times `scale` (fractions drawn in points
    by default), with a ± std band when there are several seeds."""
    by: dict[int, list[float]] = {}
    for curve in curves:
        for epoch, v in curve:
            by.setdefault(epoch, []).append(v)
    if not by:
        return
    xs = sorted(by)
    st = [stats(by[x]) for x in xs]
    ys = [scale * t["mean"] for t in st]
    ax.plot(xs, ys, color=colour, ls=ls, label=label)
    if max(t["n"] for t in st) > 1:
        std_band(ax, xs, ys, [scale * t["std"] for t in st], colour)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One CSV row per dict (the first one's keys are the header); a list cell is written as its items' reprs."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: (" ".join("" if x is None else repr(x) for x in v) if isinstance(v, list) else v)
                           for k, v in row.items()} for row in rows])
    atomic_write_text(path, buf.getvalue())


def publish(text: str, out: Path, *, files: tuple[str, ...], section: str, repro_path: Path | None, repro_why: str,
            t0: float, log: Callable[[str], None] = log) -> None:
    """The study's markdown: into each of `files` in `out`, into REPRODUCTION.md's `section` when a
    target was given (else the reason why not is logged), and to stdout; then the time taken."""
    for name in files:
        atomic_write_text(out / name, text)
    if repro_path is not None:
        log(f"updated {update_reproduction(section, text, repro_path)}")
    else:
        log(repro_why)
    print(text)
    log(f"done in {(time.time() - t0) / 60:.1f} min; results in {out}")


def _mean_sd(values: list[float]) -> str:
    st = stats(values)
    return f"{st['mean']:.1f}" + (f" ± {st['std']:.1f}" if st["n"] > 1 else "")


def _of(values: list[float], n: int) -> str:
    return f"{_mean_sd(values)} of {n}" if n else "— (none)"


def memorized_samples(groups: dict[str, list[Path]], out: Path) -> list[str]:
    """The memorized-samples grids (advmem.report.memorized) of every run with per-sample tracking,
    into `out`/memorized/<run>/, and markdown lines with their counts at the last tracked epoch,
    mean ± std over the runs of each group (label -> run directories: one method, its seeds).
    Groups without tracking are left out; no line at all when no run has it."""
    # torch and pyarrow: only when per-sample tracking is read (the CLI's parser imports this module)
    from advmem.track.per_sample import PER_SAMPLE_FILE

    rows = []
    for label, runs in groups.items():
        found = [memorized_figures(run, out / "memorized" / run.name) for run in runs
                 if (run / PER_SAMPLE_FILE).is_file()]
        if not found:
            continue
        summaries = [json.loads(Path(f["json"]).read_text()) for f in found]

        changed = [s["counts"]["corrupted"][-1] for s in summaries]
        clean = [s["counts"]["clean"][-1] for s in summaries]
        after = [s["selections"]["after_decay"]["n"] for s in summaries  # None: no step decay to be after
                 if (s["selections"].get("after_decay") or {}).get("n") is not None]
        n_changed = round(stats([s["counts"]["n_corrupted"] for s in summaries])["mean"])
        n_clean = round(stats([s["counts"]["n_clean"] for s in summaries])["mean"])
        rows.append(f"| {label} | {len(found)} | {_of(changed, n_changed)} | {_of(clean, n_clean)} | "
                    f"{_mean_sd(after) if after else '—'} |")
    if not rows:
        return []
    return ["", "Memorized samples (per-sample tracking; definitions in docs/memorization.md, \"Memorized samples\"): "
            "training samples robustly correct at the last tracked epoch, by whether the given label was changed, "
            "and those robustly fitted only after the first learning-rate decay; mean ± std over seeds. Grids of "
            "them, captioned with given and true label, the epoch memorized and the TE target: "
            "`memorized/<run>/` in the study folder (and `advmem report` on any run).", "",
            "| run | seeds | robust-correct, changed label | robust-correct, clean label | fitted only after the decay |",
            "|---|---|---|---|---|", *rows]
