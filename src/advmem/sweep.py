"""`advmem sweep`: a grid of recipe overrides times seeds, run locally or on Slurm, then one table.

    advmem sweep RECIPE --grid optim.lr=0.05,0.1 --grid method.name=pgd_at,trades --seeds 0,1,2 \\
        [--launcher local|slurm|submitit-local] [--parallel N] [--out DIR]

Every run is validated before anything is written or launched. Run names are deterministic
(`<recipe name>_<key>-<value>..._seed<s>`), so running the same command again skips complete runs
(summary.json and every epoch present), resumes incomplete ones (`advmem train --resume`), leaves
failed ones alone unless `--retry-failed`, and ends with the comparison table: mean and standard
deviation over seeds of best and last test natural/robust accuracy, printed and written to
`DIR/sweep.csv` and `DIR/sweep.md`. See docs/distributed.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any


from advmem.commands import COMMANDS
from advmem.engine.rundir import RunDir
from advmem.errors import UserError
from advmem.io import atomic_write_json, atomic_write_text
from advmem.progress import Progress, interval


@dataclass
class SweepRun:
    name: str
    point: dict[str, Any]          # the grid values of this run (without the seed)
    seed: int
    overrides: list[str]           # --set arguments that make this run from the base recipe
    recipe: Any                    # the validated recipe those make
    status: str = "new"            # RunDir.status: new | incomplete | complete | failed | running
    result: str = ""
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    spec: str | None = None        # this run's base recipe when it is not the sweep's (studies mixing recipes)

    @property
    def epochs(self) -> int:
        return self.recipe.optim.epochs

    @property
    def recipe_hash(self) -> str:
        return self.recipe.hash()


# ---------------------------------------------------------------------------------- expansion


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so `--grid optim.schedule.milestones=[50,75],[100,150]` works."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"malformed --grid '{item}': expected key.path=v1,v2 (e.g. --grid optim.lr=0.05,0.1)")
        if key in grid:
            raise UserError(f"--grid {key} given twice; list all its values in one --grid {key}=v1,v2")
        if key == "name":
            raise UserError("--grid name=... is not allowed: sweep run names are derived from the grid values")
        vals = split_values(values)
        if any(v == "" for v in vals) or len(set(vals)) != len(vals):
            raise UserError(f"--grid {item}: empty or repeated value; list distinct values separated by commas")
        grid[key] = vals
    return grid


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in split_values(text)]
    except ValueError:
        raise UserError(f"--seeds '{text}': expected integers separated by commas, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds '{text}': expected distinct non-negative integers, e.g. --seeds 0,1,2")
    return seeds


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "x"


def key_labels(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous label per key: the last part unless two keys share it."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k.replace(".", "_")) for k, short in zip(keys, last)}


def expand(spec: str, grid: dict[str, list[str]], seeds: list[int] | None, sets: list[str],
           out: Path | None) -> tuple[list[SweepRun], Path, Any]:
    """All runs of the sweep, each validated as a full recipe (UserError names the bad one)."""
    # pydantic: only when a sweep runs (the CLI's parser imports this module)
    from advmem.recipe import load_recipe

    base = load_recipe(spec, list(sets))
    if seeds is not None and "seed" in grid:
        raise UserError("give seeds either with --seeds or with --grid seed=..., not both")
    if seeds is None:
        seeds = parse_seeds(",".join(grid.pop("seed"))) if "seed" in grid else [base.seed]
    out = Path(out) if out is not None else Path(base.output_root) / f"sweep-{base.name}"
    labels = key_labels(list(grid))
    runs: list[SweepRun] = []
    names: dict[str, str] = {}
    for values in product(*grid.values()) if grid else [()]:
        point = dict(zip(grid, values))
        for seed in seeds:
            name = "_".join([base.name] + [f"{labels[k]}-{_slug(v)}" for k, v in point.items()] + [f"seed{seed}"])
            described = " ".join(f"{k}={v}" for k, v in point.items()) + f" seed={seed}"
            if name in names:
                raise UserError(f"grid points '{names[name]}' and '{described}' give the same run name {name}; "
                                "use values that differ in letters or digits")
            names[name] = described
            overrides = list(sets) + [f"{k}={v}" for k, v in point.items()] + [
                f"seed={seed}", f"name={name}", f"output_root={out}"]
            try:
                recipe = load_recipe(spec, overrides)
            except UserError as err:
                raise UserError(f"sweep run {described.strip()}: {err}") from None
            runs.append(SweepRun(name=name, point=point, seed=seed, overrides=overrides, recipe=recipe))
    return runs, out, base


# ------------------------------------------------------------------------------------ status


def sweep_status(run: SweepRun, out: Path) -> str:
    """The run's `RunDir.status`; a directory that is not a run or holds another recipe's is refused."""
    rd = RunDir(out / run.name)
    status = rd.status(run.recipe)
    if status == "foreign":
        raise UserError(f"{rd.path} exists but is not an advmem run; remove it or pick another --out")
    if status == "mismatch":
        raise UserError(f"{rd.path} holds a run of a different recipe (hash {rd.load_recipe().hash()}, sweep wants "
                        f"{run.recipe_hash}); pick another --out for this sweep")
    return status


def train_argv(spec: str, run: SweepRun, out: Path) -> list[str]:
    if run.status in ("incomplete", "failed"):
        return ["train", "--resume", str(out / run.name), "--quiet"]
    args = ["train", run.spec or spec, "--quiet"]
    for o in run.overrides:
        args += ["--set", o]
    return args


# ---------------------------------------------------------------------------------- launchers


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def epochs_done(path: Path) -> int:
    """The last epoch a run directory has completed (its metrics.jsonl); 0 when none can be read."""
    try:
        rows = RunDir(path).read_metrics()
    except (UserError, OSError):
        return 0
    return max((r["epoch"] for r in rows if isinstance(r.get("epoch"), int)), default=0)


def sweep_postfix(finished: int, total: int, running: list[tuple[str, int, int]]) -> str:
    """What the sweep's progress line says after its rate: runs finished, then each running run's epoch."""
    shown = ", ".join(f"{name} {done}/{epochs}" for name, done, epochs in running[:3])
    more = f" +{len(running) - 3} more" if len(running) > 3 else ""
    return f"{finished}/{total} runs done" + (f"; running {shown}{more}" if running else "")


POLL_S = 2.0  # how often the progress display rereads each running run's metrics.jsonl


class RunsProgress:
    """The progress of runs trained by other processes, read from their metrics.jsonl: epochs done
    over all runs (rate and time left from the epochs this process saw done), runs finished, and
    each running run's epoch of how many. `runs`: name -> (run directory, epochs)."""

    def __init__(self, runs: dict[str, tuple[Path, int]], *, desc: str = "sweep", enabled: bool = True) -> None:
        self.runs = runs
        self.epochs = {name: epochs_done(path) for name, (path, _) in runs.items()}
        self.finished = 0
        self.bar = Progress(desc, sum(n for _, n in runs.values()), unit="epoch", enabled=enabled,
                            initial=sum(self.epochs.values()))
        self.polled = 0.0

    def run_ended(self, name: str) -> None:
        self.finished += 1
        self.epochs[name] = epochs_done(self.runs[name][0])

    def poll(self, running: list[str], *, force: bool = False) -> None:
        """Reread the running runs' metrics (at most every POLL_S seconds unless `force`)."""
        if not force and time.monotonic() - self.polled < POLL_S:
            return
        self.polled = time.monotonic()
        for name in running:
            self.epochs[name] = epochs_done(self.runs[name][0])
        self.bar.set(sum(self.epochs.values()), sweep_postfix(self.finished, len(self.runs), [
            (name, self.epochs[name], self.runs[name][1]) for name in running]))

    def close(self) -> None:
        self.bar.close()


def launch_local(runs: list[SweepRun], spec: str, out: Path, parallel: int, log, *, quiet: bool = False) -> None:
    """N `advmem train` subprocesses at a time; output to DIR/logs/NAME.log. With several CUDA
    devices each concurrent run gets its own (CUDA_VISIBLE_DEVICES); each run gets cores/N CPU
    threads unless OMP_NUM_THREADS is set. Unless `quiet`, a progress display (RunsProgress)."""

    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # CUDA probing problems only cost the GPU assignment
        gpus = 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending = list(runs)
    active: list[tuple[subprocess.Popen, SweepRun, int, float, Any]] = []
    free_slots = list(range(parallel))
    total, done = len(runs), 0
    progress = RunsProgress({run.name: (out / run.name, run.epochs) for run in runs}, enabled=not quiet)
    try:
        while pending or active:
            while pending and free_slots:
                run = pending.pop(0)
                slot = free_slots.pop(0)
                env = dict(os.environ)
                if parallel > 1 and "OMP_NUM_THREADS" not in env:
                    # concurrent CPU runs each take all cores by default and slow each other down many times over
                    env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // min(parallel, total)))
                if gpus > 1 and parallel > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                run.log = out / "logs" / f"{run.name}.log"
                fh = open(run.log, "a")
                proc = subprocess.Popen([sys.executable, "-m", "advmem", *train_argv(spec, run, out)],
                                        stdout=fh, stderr=subprocess.STDOUT, env=env)
                log(f"[start] {run.name} ({run.status}) -> {run.log}")
                active.append((proc, run, slot, time.monotonic(), fh))
            time.sleep(0.2)
            for item in list(active):
                proc, run, slot, t0, fh = item
                if proc.poll() is None:
                    continue
                fh.close()
                active.remove(item)
                free_slots.append(slot)
                done += 1
                run.result = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                log(f"[{done}/{total}] {'done' if proc.returncode == 0 else 'FAILED'} {run.name} "
                    f"({time.monotonic() - t0:.0f}s){'' if proc.returncode == 0 else f' see {run.log}'}")
                progress.run_ended(run.name)
            progress.poll([run.name for _, run, *_ in active], force=not (pending or active))
    except KeyboardInterrupt:
        for proc, run, *_ in active:
            proc.terminate()  # each run stops cleanly after its current step
        for proc, run, *_ in active:
            proc.wait()
        raise
    finally:
        progress.close()


class TrainJob:
    """What a Slurm job runs: `advmem train` in-process. Requeued after preemption or timeout
    with `--resume` (submitit calls `checkpoint`). With several tasks per node it exports the
    torch.distributed variables, so the job trains with DDP across its GPUs."""

    def __init__(self, argv: list[str], resume_argv: list[str]) -> None:
        self.argv, self.resume_argv = argv, resume_argv

    def __call__(self) -> int:
        import submitit

        # circle: advmem.cli imports this module (a Slurm job runs the CLI in-process)
        from advmem.cli import main

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        code = main(self.argv)
        if code != 0:
            raise RuntimeError(f"advmem {' '.join(self.argv)} exited with code {code}; see this job's log")
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.resume_argv, self.resume_argv))


def slurm_parameters(args, launcher_cfg) -> dict[str, Any]:
    cfg = launcher_cfg.model_dump()
    for key in ("partition", "gpus_per_node", "nodes", "cpus_per_task", "mem_gb", "time_min", "account", "qos"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    params: dict[str, Any] = {
        "timeout_min": cfg["time_min"], "nodes": cfg["nodes"], "gpus_per_node": cfg["gpus_per_node"],
        "tasks_per_node": max(1, cfg["gpus_per_node"]), "cpus_per_task": cfg["cpus_per_task"],
        "name": "advmem",
    }
    if cfg["mem_gb"] is not None:
        params["mem_gb"] = cfg["mem_gb"]
    for key in ("partition", "account", "qos"):
        if cfg[key]:
            params[f"slurm_{key}"] = cfg[key]
    if args.parallel:
        params["slurm_array_parallelism"] = args.parallel
    return params


def _check_submitit(launcher: str) -> None:
    """Fail before anything is written when the Slurm path cannot run here."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("submitit") is None:
        raise UserError(f"--launcher {launcher} needs the submitit package: pip install 'advmem[slurm]' "
                        "(or pip install submitit), or use --launcher local")
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch not found on this machine; run the sweep on a Slurm "
                        "login node, or use --launcher local / submitit-local")


def launch_submitit(runs: list[SweepRun], spec: str, out: Path, params: dict[str, Any], cluster: str | None,
                    wait: bool, log) -> None:
    import submitit

    folder = out / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    if cluster == "local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k not in ("mem_gb", "cpus_per_task")}
        import torch

        if torch.cuda.device_count() < params["gpus_per_node"]:  # this machine's GPUs, not the cluster's
            params["gpus_per_node"] = torch.cuda.device_count()
            params["tasks_per_node"] = max(1, params["gpus_per_node"])
    executor.update_parameters(**params)
    jobs = []
    with executor.batch():
        for run in runs:
            resume = ["train", "--resume", str(out / run.name), "--quiet"]
            jobs.append(executor.submit(TrainJob(train_argv(spec, run, out), resume)))
    for run, job in zip(runs, jobs):
        run.extra["job_id"] = job.job_id
        run.log = Path(str(job.paths.stderr))
        log(f"[submitted] {run.name}: job {job.job_id}")
    if not wait:
        return
    for i, (run, job) in enumerate(zip(runs, jobs), start=1):
        try:
            job.result()
            run.result = "ok"
            log(f"[{i}/{len(runs)}] done {run.name} (job {job.job_id})")
        except Exception as err:  # submitit re-raises the job's failure here
            first = str(err).strip().splitlines()[-1][:160] if str(err).strip() else type(err).__name__
            run.result = "failed"
            log(f"[{i}/{len(runs)}] FAILED {run.name} (job {job.job_id}): {first}; log {job.paths.stderr}")


# ------------------------------------------------------------------------------------- table


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


METRICS = [("best", "test_nat_acc"), ("best", "test_rob_acc"), ("last", "test_nat_acc"), ("last", "test_rob_acc")]


def comparison(runs: list[SweepRun], out: Path) -> list[dict[str, Any]]:
    """One row per grid point: mean and sample std over the seeds whose run is complete."""
    groups: dict[tuple, list[SweepRun]] = {}
    for run in runs:
        groups.setdefault(tuple(run.point.items()), []).append(run)
    table = []
    for point, members in groups.items():
        summaries = [json.loads((out / run.name / "summary.json").read_text()) for run in members
                     if sweep_status(run, out) == "complete"]
        row: dict[str, Any] = dict(point)
        row["seeds_complete"] = len(summaries)
        row["seeds"] = len(members)
        for which, metric in METRICS:
            vals = [s[which][metric] for s in summaries if s.get(which, {}).get(metric) is not None]
            row[f"{which}_{metric}_mean"], row[f"{which}_{metric}_std"] = _mean_std(vals)
        table.append(row)
    return table


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def markdown(table: list[dict[str, Any]], keys: list[str]) -> str:
    header = keys + ["seeds", "best test nat %", "best test rob %", "last test nat %", "last test rob %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table:
        cells = [str(row[k]) for k in keys] + [f"{row['seeds_complete']}/{row['seeds']}"]
        cells += [_pct(row[f"{w}_{m}_mean"], row[f"{w}_{m}_std"]) for w, m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: list[dict[str, Any]], keys: list[str], out: Path) -> str:
    text = markdown(table, keys)
    atomic_write_text(out / "sweep.md", "Mean ± sample standard deviation over seeds (complete runs only).\n\n" + text)
    buffer = io.StringIO()
    fields = keys + ["seeds_complete", "seeds"] + [f"{w}_{m}_{s}" for w, m in METRICS for s in ("mean", "std")]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows([{k: row.get(k) for k in fields} for row in table])
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    return text


# --------------------------------------------------------------------------------------- CLI


@COMMANDS.register("sweep")
def add_parser(sub, common) -> None:
    p = sub.add_parser("sweep", help="run a grid of recipe overrides x seeds and compare them",
                       description="Run a grid of recipe overrides times seeds (locally or on Slurm), skip complete "
                                   "runs, resume incomplete ones, and print the comparison table (docs/distributed.md).")
    p.add_argument("recipe", help="recipe file or shipped recipe name")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and its values (repeatable; the grid is their product)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the recipe's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local subprocesses, Slurm via submitit, or submitit's local executor (to try the Slurm path)")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at a time (local, default 1) or Slurm array parallelism")
    p.add_argument("--out", default=None, help="directory for the runs and the table (default OUTPUT_ROOT/sweep-NAME)")
    p.add_argument("--retry-failed", action="store_true", help="resume runs that stopped with failure.json")
    p.add_argument("--report-only", action="store_true", help="launch nothing; print the table of complete runs")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (run again later for the table)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each")
    for flag, kind, text in (("--partition", str, "Slurm partition"), ("--gpus-per-node", int, "GPUs per run"),
                             ("--nodes", int, "nodes per run"), ("--cpus-per-task", int, "CPUs per task"),
                             ("--mem-gb", int, "memory per node (GB)"), ("--time-min", int, "time limit (minutes)"),
                             ("--account", str, "Slurm account"), ("--qos", str, "Slurm QOS")):
        p.add_argument(flag, type=kind, default=None, help=f"{text} (overrides the recipe's launcher: section)")
    common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if not args.quiet:
        interval()  # a bad ADVMEM_PROGRESS_INTERVAL is refused before anything is written
    if args.parallel is not None and args.parallel < 1:
        raise UserError("--parallel must be at least 1")
    grid = parse_grid(args.grid)
    seeds = parse_seeds(args.seeds)
    runs, out, base = expand(args.recipe, grid, seeds, args.set, args.out)
    keys = list(grid)  # expand() moved any --grid seed=... into the seeds
    for r in runs:
        r.status = sweep_status(r, out)
    todo = [r for r in runs if r.status in ("new", "incomplete") or (r.status == "failed" and args.retry_failed)]
    counts = {s: sum(r.status == s for r in runs) for s in ("new", "incomplete", "complete", "failed", "running")}
    log(f"advmem sweep: {len(runs)} runs in {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if args.dry_run:
        for r in runs:
            action = "launch" if r in todo and r.status == "new" else "resume" if r in todo else "skip"
            print(f"{action:<7}{r.status:<11}{r.name}")
        return 0
    if counts["failed"] and not args.retry_failed:
        log(f"note: {counts['failed']} failed runs are not relaunched (see their failure.json); pass --retry-failed")
    if counts["running"]:
        log(f"note: {counts['running']} runs are being written by another process; they are skipped")
    if todo and not args.report_only:
        if args.launcher != "local":
            _check_submitit(args.launcher)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sweep.json", {"recipe": args.recipe, "grid": grid, "seeds": sorted({r.seed for r in runs}),
                                               "set": args.set, "runs": [r.name for r in runs]})
        if args.launcher == "local":
            launch_local(todo, args.recipe, out, args.parallel or 1, log, quiet=args.quiet)
        else:
            params = slurm_parameters(args, base.launcher)
            cluster = "local" if args.launcher == "submitit-local" else "slurm"
            launch_submitit(todo, args.recipe, out, params, cluster, wait=not args.no_wait, log=log)
            if args.no_wait:
                log(f"submitted {len(todo)} jobs; run the same command again (or with --report-only) for the table")
                return 0
    if not out.exists():
        raise UserError(f"{out}: no runs yet; run the sweep without --report-only first")
    table = comparison(runs, out)
    text = write_table(table, keys, out)
    print(text, end="")
    print(f"table: {out / 'sweep.md'}   csv: {out / 'sweep.csv'}")
    failed = [r for r in runs if sweep_status(r, out) != "complete"]
    if failed and not args.report_only:
        log(f"{len(failed)} runs not complete: {', '.join(r.name for r in failed[:5])}"
            f"{' ...' if len(failed) > 5 else ''} (logs in {out / 'logs'} or {out / 'slurm'})")
        return 1
    return 0
