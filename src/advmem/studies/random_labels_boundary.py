"""Where do the random-label findings hold? PGD-AT and TRADES on random labels over a grid of settings.

The paper's pattern is: with random labels PGD-AT fails to converge (train accuracy near chance)
while TRADES memorizes, and PGD-AT's gradient is the unstable one. When the small random-label
study does not show it, this command maps where it does: it trains the study's two random-label
recipes over a grid (by default eps x train-set size; any recipe key with --grid), then reads
final natural/robust train accuracy, the gradient norm, and the gradient-stability probe at one
weight-perturbation size for every run, and writes:

    runs/          one run directory per method, grid point and seed, NAME_..._seedS (complete runs
                   are skipped)
    boundary.png   natural train accuracy against the first grid key, both methods
    table.md/.csv, results.json, README.md

The README becomes the `random-labels-boundary` section of REPRODUCTION.md (small scale, run inside
the advmem checkout, or --reproduction PATH). The attack step
follows eps (eps/4, as in the study recipes) unless `--set attack.step_size=...` fixes it.
Runs go `--parallel` at a time as `advmem train` subprocesses (sweep machinery).
`--seeds N` (default 1) trains every grid point with seeds 0..N-1, each seed setting the recipe's
`seed` (initialization, data order) and `data.label_noise.seed` (the label draw); with N > 1 the
table gives mean ± sample std over the seeds and every verdict is that of the mean.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from advmem.io import atomic_write_json
from advmem.errors import UserError
from advmem.studies.cli import STUDIES
from advmem.studies.common import (add_study_arguments, check_parallel, launch_sweep_runs, log, pm,
                                   publish, seed_list, stats, write_csv)
from advmem.studies.reproduction import reproduction_target, smoke_note
from advmem.studies import random_labels as rl
from advmem.engine.rundir import RunDir
from advmem.sweep import expand, parse_grid, sweep_status

SECTION = "random-labels-boundary"
REPRODUCTION_SCALES = frozenset({"small"})  # the scales whose results belong in REPRODUCTION.md
PROBE_ALPHA = 1e-2

SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"recipes": rl.SCALES["tiny"]["recipes"], "overrides": rl.SCALES["tiny"]["overrides"],
             "grid": {"attack.eps": ["0.1", "0.3"]},
             "probe": {"directions": 2, "batch_size": 16}, "last_epochs": 1},
    "small": {"recipes": rl.SCALES["small"]["recipes"], "overrides": [],
              "grid": {"attack.eps": ["0.05", "0.1", "0.2"], "data.train_size": ["300", "1000"]},
              "probe": {"directions": 3, "batch_size": 128}, "last_epochs": 10},
}


def eps_step(eps: str) -> str:
    """eps/4 written as a plain number (the study recipes' step)."""
    # pydantic: only when a study runs (the CLI's parser imports this module)
    from advmem.recipe import budget_value

    try:
        return repr(budget_value(eps) / 4)
    except ValueError as err:
        raise UserError(f"--grid attack.eps: {err}") from None


def plan(scale: str, grid: dict[str, list[str]], sets: list[str], out: Path, seeds: list[int] | None = None) -> list:
    """Every run (both methods x grid points x seeds) as a validated sweep run with its own base recipe.

    Names are the sweep's (`BASE_KEY-VALUE_seedS`), so seed 0 keeps the names of the single-seed study."""
    cfg = SCALES[scale]
    for item in sets:
        if item.split("=", 1)[0].strip() in ("name", "output_root"):
            raise UserError(f"--set {item}: the study names its runs and puts them in OUT/runs; use --out instead")
    rl.check_seed_sets(sets)
    seeds = [0] if seeds is None else seeds
    base_sets = list(cfg["overrides"]) + list(sets)
    fixed_step = any(s.startswith("attack.step_size=") for s in sets) or "attack.step_size" in grid
    eps_values = grid.get("attack.eps", [None])
    runs = []
    for method, spec in cfg["recipes"].items():
        for eps in eps_values:
            sub = {k: (v if k != "attack.eps" else [eps]) for k, v in grid.items()}
            extra = [] if eps is None or fixed_step else [f"attack.step_size={eps_step(eps)}"]
            for seed in seeds:  # the label draw follows the seed (expand sets only `seed`)
                point_runs, _, base = expand(spec, dict(sub), [seed],
                                             base_sets + extra + [f"data.label_noise.seed={seed}"], out / "runs")
                if base.method.name != method:
                    raise UserError(f"recipe {spec}: method is {base.method.name}, expected {method}")
                if base.data.label_noise.rate < 1.0:
                    raise UserError(f"recipe {spec}: labels are not random (label_noise.rate "
                                    f"{base.data.label_noise.rate}); this study trains on random labels only")
                for run in point_runs:
                    run.spec, run.extra["method"] = spec, method
                runs += point_runs
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("two runs of this grid get the same name; use grid values that differ in letters or digits")
    return runs


def point_key(point: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(str(point.get(k)) for k in keys)


def collect(runs: list, runs_dir: Path, keys: list[str], last_epochs: int) -> dict[tuple, dict[str, Any]]:
    """Numbers per grid point and method: a list with one entry per seed, from the run directories."""
    table: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        numbers = rl.run_numbers(runs_dir / run.name, last_epochs)
        numbers.pop("curve", None)
        numbers["name"], numbers["seed"] = run.name, run.seed
        table.setdefault(point_key(run.point, keys), {}).setdefault(run.extra["method"], []).append(numbers)
    return table


fmt_pm = partial(pm, percent=False)  # '0.0123 ± 0.004' over seeds; one seed: '0.0123'


# row column -> per-run key
ROW_KEYS = {"train_nat": "train_nat_acc", "train_rob": "train_rob_acc", "grad_norm_sq": "grad_norm_sq_last",
            "probe": "probe_regenerated", "probe_fixed": "probe_fixed"}


def rows(table: dict[tuple, dict[str, Any]], keys: list[str], chance: float) -> list[dict[str, Any]]:
    """One row per grid point: per method the mean over seeds (`{method}_{col}`), its sample std
    (`_std`), the number of seeds (`{method}_seeds`), and the fit verdict of the mean."""
    out = []
    for point, methods in table.items():
        row: dict[str, Any] = dict(zip(keys, point))
        for method in rl.METHODS:
            per_seed = methods.get(method, [])
            row[f"{method}_seeds"] = len(per_seed)
            for col, key in ROW_KEYS.items():
                st = stats([r.get(key) for r in per_seed])
                row[f"{method}_{col}"], row[f"{method}_{col}_std"] = st["mean"], st["std"]
            row[f"{method}_fit"] = rl.verdict(row[f"{method}_train_nat"], chance)
            row[f"{method}_train_nat_per_seed"] = [r.get("train_nat_acc") for r in per_seed]
        row["paper_pattern"] = row["pgd_at_fit"] == "near chance" and row["trades_fit"] == "memorized"
        p, t = row["pgd_at_probe"], row["trades_probe"]
        row["pgd_at_less_stable"] = None if p is None or t is None else p > t
        out.append(row)
    return out


def describe(point: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {point[k]}" for k in keys)


def markdown(results: dict[str, Any]) -> str:
    s, keys, table = results["settings"], results["keys"], results["rows"]
    seeds = s.get("seeds", [0])
    n = len(seeds)

    def cell(r: dict[str, Any], method: str, col: str, form) -> str:
        return form(r[f"{method}_{col}"], r.get(f"{method}_{col}_std"), r.get(f"{method}_seeds", 1))

    lines = [
        "## Random labels: where the findings hold (small scale)" if s["scale"] == "small"
        else f"## Random labels: where the findings hold ({s['scale']} scale)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s['command']}` (generated {s['date']}, {s['wall_min']:.1f} min wall time for what this "
        "invocation ran; runs already complete are not retrained).",
        "",
        f"Settings of the first run (the random-label recipes of `advmem study random-labels --scale {s['scale']}`, all labels "
        f"random): {s['settings']}. Varied: {', '.join(f'`{k}`' for k in keys)}"
        + ("; the attack step is eps/4." if "attack.eps" in keys and not s["fixed_step"] else "."),
        "",
        (f"Every grid point is trained with {n} seeds ({', '.join(map(str, seeds))}; each seed draws the labels, "
         "the initialization and the data order): each number is the mean ± the sample standard deviation over "
         "the seeds, and the fit verdicts and the findings below are those of the means. " if n > 1 else
         "One seed per grid point (seed 0; `--seeds N` gives mean ± std over N). ")
        + f"Final training accuracy (%) w.r.t. the random labels (chance {100 * results['chance']:.1f}%), natural / "
        f"robust; fit: memorized >= 90% natural, near chance < chance + 10 points. Gradient: mean squared norm of "
        f"the training-loss gradient over the last {s['last_epochs']} epochs. "
        + (f"Probe: relative gradient change at weight perturbation alpha = {PROBE_ALPHA:g} with x_adv re-solved "
           f"(mean over {s['probe_directions']} filter-normalized directions)." if s["probe"]
           else "Probe: skipped (--no-probe)."),
        "",
        "| " + " | ".join(k.split(".")[-1] for k in keys)
        + " | PGD-AT nat / rob | PGD-AT fit | TRADES nat / rob | TRADES fit | grad² PGD-AT / TRADES "
          "| probe PGD-AT / TRADES | paper's pattern |",
        "|" + "---|" * (len(keys) + 7),
    ]
    for r in table:
        lines.append("| " + " | ".join(str(r[k]) for k in keys)
                     + f" | {cell(r, 'pgd_at', 'train_nat', pm)} / {cell(r, 'pgd_at', 'train_rob', pm)} "
                     f"| {r['pgd_at_fit']} "
                     f"| {cell(r, 'trades', 'train_nat', pm)} / {cell(r, 'trades', 'train_rob', pm)} "
                     f"| {r['trades_fit']} "
                     f"| {cell(r, 'pgd_at', 'grad_norm_sq', fmt_pm)} / {cell(r, 'trades', 'grad_norm_sq', fmt_pm)} "
                     f"| {cell(r, 'pgd_at', 'probe', fmt_pm)} / {cell(r, 'trades', 'probe', fmt_pm)} "
                     f"| {'yes' if r['paper_pattern'] else 'no'} |")

    def where(pred) -> str:
        hits = [describe(r, keys) for r in table if pred(r)]
        return "; ".join(hits) if hits else "none of the settings tried"

    lines += [
        "",
        "Where each finding holds" + (" (judged on the means over seeds):" if n > 1 else ":"),
        "",
        f"- PGD-AT fails to converge (near chance): {where(lambda r: r['pgd_at_fit'] == 'near chance')}.",
        f"- TRADES memorizes (>= 90% natural train accuracy): {where(lambda r: r['trades_fit'] == 'memorized')}.",
        f"- Both at once (the paper's Figure 1): {where(lambda r: r['paper_pattern'])}.",
        f"- PGD-AT near chance while TRADES fits at least half of the random labels (the same contrast, TRADES "
        f"not yet at 90%): {where(lambda r: r['pgd_at_fit'] == 'near chance' and not r['paper_pattern'] and (r['trades_train_nat'] or 0) >= 0.5)}.",
        f"- PGD-AT's gradient less stable than TRADES' (probe, x_adv re-solved): "
        f"{where(lambda r: r['pgd_at_less_stable'])}.",
    ]
    for note in results.get("notes", []):
        lines.append(f"- Note: {note}")
    files = "`boundary.png`, `table.md`, `table.csv`, `results.json`, " + ("`grad-stability/`, " if s["probe"] else "")
    lines += ["", f"Files: {files}`runs/` in the study folder."]
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], keys: list[str], chance: float, path: Path) -> None:
    """Natural train accuracy against the first grid key; one line per method and remaining grid point."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    first, rest = keys[0], keys[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in table:
        groups.setdefault(tuple(r[k] for k in rest), []).append(r)
    styles = {"pgd_at": ("#1f77b4", "o"), "trades": ("#ff7f0e", "s")}
    dashes = ["-", "--", ":", "-."]
    for gi, (group, items) in enumerate(groups.items()):
        for method, (colour, marker) in styles.items():
            pts = [(str(r[first]), 100 * r[f"{method}_train_nat"], 100 * (r.get(f"{method}_train_nat_std") or 0.0))
                   for r in items if r[f"{method}_train_nat"] is not None]
            if not pts:
                continue
            label = rl.METHODS[method] + ("" if not rest else " (" + describe(dict(zip(rest, group)), rest) + ")")
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[p[2] for p in pts] if any(r.get(f"{method}_seeds", 1) > 1 for r in items) else None,
                        fmt=dashes[gi % len(dashes)], color=colour, marker=marker, capsize=3, label=label)
    ax.axhline(100 * chance, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel(first)
    ax.set_ylabel("natural train accuracy on random labels (%)")
    ax.set_ylim(-2, 102)
    n = max((r.get("pgd_at_seeds", 1) for r in table), default=1)
    ax.set_title("Random labels: which settings fit them" + (f" (mean ± std, {n} seeds)" if n > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    add_study_arguments(
        parser, scales=SCALES, reproduction_scales=REPRODUCTION_SCALES, out="studies/random-labels-boundary-SCALE",
        with_device=False,
        scale_help="tiny: synthetic smoke test (seconds); small: the small study's random-label recipes on "
                   "Fashion-MNIST (default grid: eps 0.05,0.1,0.2 x train size 300,1000)",
        set_help="override a value in every run, e.g. --set optim.epochs=100",
        seeds_default=1, seeds_help="train every grid point with seeds 0..N-1 (each seed draws the random labels, "
                                    "the initialization and the data order); N > 1 reports mean ± std (default 1)",
        parallel_default=2, parallel_help="runs at a time (default 2; each gets cores/N threads)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a recipe key and its values (repeatable; replaces the default grid), "
                             "e.g. --grid model.kwargs.width=16,32")
    parser.add_argument("--no-probe", action="store_true", help="skip the gradient-stability probe")


@STUDIES.register("random-labels-boundary")
def run(args) -> int:
    t0 = time.time()
    check_parallel(args.parallel)
    seeds = seed_list(getattr(args, "seeds", 1))
    cfg = SCALES[args.scale]
    grid = parse_grid(args.grid) if args.grid else {k: list(v) for k, v in cfg["grid"].items()}
    for key in ("seed", "data.label_noise.seed"):
        if key in grid:
            raise UserError(f"--grid {key}: the study seeds each run itself; use --seeds N")
    for key in ("name", "output_root", "method.name", "data.label_noise.rate"):
        if key in grid:
            raise UserError(f"--grid {key} is not varied by this study (both methods, random labels); "
                            "use `advmem sweep` for that")
    keys = list(grid)
    out = Path(args.out or f"studies/random-labels-boundary-{args.scale}")
    runs = plan(args.scale, grid, args.set, out, seeds)  # validates every recipe before anything is written
    repro_path, repro_why = reproduction_target(args.scale, explicit=args.reproduction,
                                                disabled=args.no_reproduction, default_scales=REPRODUCTION_SCALES)
    runs_dir = out / "runs"
    for r in runs:
        r.status = sweep_status(r, runs_dir)
    log(f"{len(runs)} runs ({sum(r.status == 'complete' for r in runs)} complete) in {runs_dir}")
    launch_sweep_runs(runs, runs_dir, args.parallel)

    notes: list[str] = []
    table = collect(runs, runs_dir, keys, cfg["last_epochs"])
    if not args.no_probe:
        probe = rl.run_probe([runs_dir / r.name for r in runs], out / "grad-stability",
                             dict(cfg["probe"], alphas=[0.0, PROBE_ALPHA]), None, notes)
        summary = rl.probe_summary(probe)
        for r in runs:
            p = summary.get(r.name)
            if p:
                entry = next(e for e in table[point_key(r.point, keys)][r.extra["method"]] if e["name"] == r.name)
                entry["probe_regenerated"], entry["probe_fixed"] = p["regenerated"], p["fixed"]

    info = json.loads((runs_dir / runs[0].name / "data.json").read_text())
    chance = 1.0 / int(info["num_classes"])
    example = RunDir(runs_dir / runs[0].name).load_recipe()
    command = f"advmem study {SECTION} --scale {args.scale}" + (
        f" --seeds {len(seeds)}" if len(seeds) > 1 else "") + "".join(
        f" --grid {g}" for g in args.grid) + "".join(f" --set {s}" for s in args.set)
    results = {
        "study": SECTION, "chance": chance, "keys": keys,
        "settings": {"scale": args.scale, "command": command, "date": time.strftime("%Y-%m-%d"),
                     "wall_min": (time.time() - t0) / 60, "last_epochs": cfg["last_epochs"],
                     "probe_directions": cfg["probe"]["directions"], "seeds": seeds,
                     "std": "sample standard deviation over seeds (n - 1 denominator; 0 for one seed)",
                     "settings": rl.settings_text(example, seeds),
                     "fixed_step": any(s.startswith("attack.step_size=") for s in args.set)
                                   or "attack.step_size" in keys,
                     "probe": not args.no_probe},
        "rows": rows(table, keys, chance),
        "notes": notes,
    }
    plot(results["rows"], keys, chance, out / "boundary.png")
    write_csv(results["rows"], out / "table.csv")
    atomic_write_json(out / "results.json", results)
    publish(markdown(results), out, files=("table.md", "README.md"), section=SECTION, repro_path=repro_path,
            repro_why=repro_why, t0=t0)
    return 0
