"""Complexity measures against robust generalization on a family of models (the paper's section 6).

Trains a family: PGD-AT and TRADES x symmetric label-noise rate {0, 0.2, 0.4, 0.6, 0.8, 1.0} x
seeds 0..N-1 (seed S sets `seed` and `data.label_noise.seed`, as in the random-labels study),
plus a train-set-size axis (true labels, seed 0, two smaller training sets), which changes
generalization without touching the labels. Runs already complete are skipped and incomplete
ones resumed. Every model stays in the table; one whose natural training accuracy stays within
10 points of chance is flagged as not converged (PGD-AT at high noise).

Then every registered complexity measure (`advmem.analysis.measures`) of every final checkpoint,
cached per run (`study_measures.json`), and per measure:

- Kendall's tau with the robust gap and with the natural gap over all models, with a seeded
  percentile-bootstrap 95% interval (models resampled);
- Jiang et al. 2020's granulated tau per axis (method, noise rate, train-set size; models of one
  seed at a time) and its mean over the axes;
- the random-label sanity check: does the measure put every converged random-label model of a
  method above every true-label model of that method?

A measure *passes* when it passes the sanity check for every method that has a converged
random-label model and its tau with the robust gap is positive with the interval above 0
(measures where larger means simpler, such as margins and PAC-Bayes sigma, are judged with
the sign flipped). Output folder:

    runs/                       one run directory per model
    measures/                   measures.csv (one row per model), measures.md (analyze measures' table)
    measures_vs_robust_gap.png  each measure against the robust gap, one point per model
    results.json, README.md     the numbers and the verdict; README.md also becomes the
                                `measures-SCALE` section of REPRODUCTION.md (small scale inside
                                the checkout; tiny only with --reproduction PATH)

Scales: tiny (synthetic data, seconds, for the tests), small (Fashion-MNIST, about 90 minutes on
2 cores with --parallel 2; the choice is explained in docs/analysis.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from advmem.errors import UserError
from advmem.io import atomic_write_json
from advmem.studies.cli import STUDIES
from advmem.studies.common import (add_study_arguments, check_parallel, ensure_trained, launch_runs, log,
                                   map_in_workers, pct, publish, schedule_text, seed_list, study_status)
from advmem.studies.random_labels import METHODS, TRUE_LABEL_OVERRIDES, check_seed_sets, seed_overrides, verdict
from advmem.studies.reproduction import reproduction_target, smoke_note
from advmem.analysis.measures.table import measure_names, write_tables
from advmem.analysis.stats import granulated_tau, kendall_ci, sanity_check
from advmem.engine.rundir import RunDir

SECTION = "measures"
REPRODUCTION_SCALES = frozenset({"small"})
RECIPES = {"pgd_at": "studies/random-labels-small-pgd-at", "trades": "studies/random-labels-small-trades"}
# The hyperparameter axes of the family (granulated tau); the seed is held fixed within a group.
AXES = ("method", "noise", "train_size")
# Measures where a larger value means a simpler model: judged with the sign flipped.
SIMPLER_IF_LARGER = frozenset({"clean_margin", "adv_margin", "pacbayes_sigma_clean", "pacbayes_sigma_robust",
                               "robust_train_loss"})
# Measured properties of the models that are not complexity measures but are worth the same test.
GAPS = ("robust_gap", "natural_gap")

SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "overrides": [
            "device=cpu", "data.dataset=synthetic", "data.train_size=null", "data.test_size=null",
            "data.synthetic={n_train: 48, n_test: 24, image_size: 6, num_classes: 4}",
            "model.name=mlp", "model.kwargs={hidden: [16]}",
            "attack.steps=2", "attack.step_size=0.05",
            "optim.epochs=3", "optim.batch_size=16", "optim.schedule={name: constant}",
            "eval.every=3", "eval.train_subset=1000", "eval.attack.steps=2", "eval.final_full=false",
            "track.per_sample=null",
        ],
        "noise": [0.0, 0.5, 1.0],
        "size_key": "data.synthetic.n_train", "size": 48, "sizes": [24],
        "seeds": 2,
        "n_samples": 48,
        "measure_settings": {"flatness_depth": 2, "flatness_draws": 1, "sharpness_steps": 1},
    },
    # The random-labels small recipes at eps 0.1 (where TRADES memorizes random labels, 62% robust
    # train accuracy at 150 epochs, so the random-label models have the largest robust gap) with a
    # shorter schedule and no per-epoch evaluation or tracking, to fit ~90 minutes (docs/analysis.md).
    "small": {
        "overrides": [
            "data.dataset=fashion-mnist", "data.train_size=300", "data.test_size=500", "data.augment=none",
            "model.name=small_cnn", "model.kwargs={width: 16, hidden: 256}",
            "attack.eps=0.1", "attack.step_size=0.025", "attack.steps=5",
            "optim.epochs=120", "optim.lr=0.01", "optim.batch_size=16", "optim.momentum=0.9",
            "optim.weight_decay=0.0", "optim.schedule={name: multistep, milestones: [100], gamma: 0.1}",
            "eval.every=120", "eval.train_subset=1000", "eval.attack.steps=10", "eval.final_full=false",
            "track.per_sample=null",
        ],
        "noise": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        "size_key": "data.train_size", "size": 300, "sizes": [100, 200],
        "seeds": 2,
        "n_samples": 300,
        "measure_settings": {},
    },
}


# -------------------------------------------------------------------------------------------------
# The family


def family(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The models: method x noise rate x seed at the base train-set size, then the size axis
    (true labels, seed 0)."""
    cfg = SCALES[scale]
    points = [{"method": m, "noise": r, "train_size": cfg["size"], "seed": s}
              for m in METHODS for r in cfg["noise"] for s in seeds]
    points += [{"method": m, "noise": 0.0, "train_size": n, "seed": 0} for m in METHODS for n in cfg["sizes"]]
    return points


def run_name(point: dict[str, Any], scale: str) -> str:
    """`pgd-at-noise0.4`, `trades-noise0-n100`, with `_seedS` for seed S > 0."""
    name = f"{point['method'].replace('_', '-')}-noise{point['noise']:g}"
    if point["train_size"] != SCALES[scale]["size"]:
        name += f"-n{point['train_size']}"
    return name if point["seed"] == 0 else f"{name}_seed{point['seed']}"


def point_overrides(point: dict[str, Any], scale: str, device: str | None, extra: list[str]) -> list[str]:
    cfg = SCALES[scale]
    noise = (list(TRUE_LABEL_OVERRIDES) if point["noise"] == 0 else
             ["data.label_noise.kind=symmetric", f"data.label_noise.rate={point['noise']:g}"])
    return (list(cfg["overrides"]) + list(extra) + ([f"device={device}"] if device else []) + noise
            + [f"{cfg['size_key']}={point['train_size']}"] + seed_overrides(point["seed"])
            + [f"name={run_name(point, scale)}"])


def check_sets(sets: list[str], scale: str) -> None:
    check_seed_sets(sets)
    for item in sets:
        key = item.split("=", 1)[0].strip()
        if key == "name" or key.startswith("data.label_noise") or key == SCALES[scale]["size_key"]:
            raise UserError(f"--set {item}: the study sets the run names, the label noise and "
                            f"{SCALES[scale]['size_key']} of every model itself")


def build_recipes(scale: str, device: str | None, extra: list[str], seeds: list[int]) -> list[tuple[dict, Any, list[str]]]:
    """(point, recipe, overrides) for every model, validated before anything is written."""
    # pydantic: only when a study runs (the CLI's parser imports this module)
    from advmem.recipe import load_recipe

    check_sets(extra, scale)
    out = []
    for point in family(scale, seeds):
        overrides = point_overrides(point, scale, device, extra)
        recipe = load_recipe(RECIPES[point["method"]], overrides)
        if recipe.method.name != point["method"]:
            raise UserError(f"recipe {RECIPES[point['method']]}: method is {recipe.method.name}, expected {point['method']}")
        out.append((point, recipe, overrides))
    return out


def train_subprocesses(jobs: list[tuple[dict, Any, list[str]]], runs_dir: Path, parallel: int) -> None:
    """The runs not yet complete as `advmem train` subprocesses, `parallel` at a time (sweep machinery)."""
    launch_runs([(recipe, RECIPES[point["method"]], point["seed"], overrides) for point, recipe, overrides in jobs],
                runs_dir, parallel)


# -------------------------------------------------------------------------------------------------
# Measures (cached per run, computed `parallel` at a time)


def measure_key(run_path: Path, n_samples: int, settings: dict[str, Any]) -> dict[str, Any]:
    # torch: only when a study runs
    from advmem.engine.checkpoint import read_sidecar

    return {"epoch": read_sidecar(run_path / "checkpoints" / "last")["epoch"],
            "recipe_hash": RunDir(run_path).load_recipe().hash(), "n_samples": n_samples, "settings": settings}


def measure_cached(run_path: str, n_samples: int, settings: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The run's measures row at its last checkpoint, from `study_measures.json` when its key matches."""
    # torch: only when measures are computed
    from advmem.analysis.measures.api import measure_run
    from advmem.analysis.measures.base import MeasureSettings
    from advmem.device import resolve_device

    path = Path(run_path)
    cache = path / "study_measures.json"
    key = measure_key(path, n_samples, settings)
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["row"]
    row = measure_run(path, checkpoint="last", n_samples=n_samples, seed=0, device=resolve_device(device or "auto"),
                      settings=MeasureSettings(**settings))
    atomic_write_json(cache, {"key": key, "row": row})
    return row


def measure_all(paths: list[Path], n_samples: int, settings: dict[str, Any], device: str | None,
                parallel: int) -> list[dict[str, Any]]:
    return map_in_workers(measure_cached, [(str(p), n_samples, settings, device) for p in paths], parallel)


# -------------------------------------------------------------------------------------------------
# Statistics per measure


def sign_of(measure: str) -> float:
    return -1.0 if measure in SIMPLER_IF_LARGER else 1.0


def analyse(rows: list[dict[str, Any]], names: list[str], n_boot: int) -> list[dict[str, Any]]:
    """Per measure (and per gap, as the reference): taus with intervals, granulated taus, sanity check, pass."""
    converged = [r for r in rows if r["converged"]]
    out = []
    for name in list(GAPS) + names:
        sign = sign_of(name)
        entry: dict[str, Any] = {"measure": name, "sign": sign, "reference": name in GAPS}
        values = [float(r.get(name, float("nan"))) for r in rows]
        for gap in GAPS:
            entry[f"tau_{gap}"] = kendall_ci(values, [r[gap] for r in rows], n_boot=n_boot, seed=0)
            entry[f"granulated_{gap}"] = granulated_tau(rows, name, gap, AXES, fixed=("seed",))
        entry["sanity"] = sanity_check(converged, name, group="method", is_random=lambda r: r["noise"] == 1.0,
                                       is_true=lambda r: r["noise"] == 0.0, sign=sign)
        t = entry["tau_robust_gap"]
        lo, hi = sign * t["lo"], sign * t["hi"]
        entry["tau_robust_positive"] = bool(math.isfinite(t["lo"]) and min(lo, hi) > 0)
        entry["passes"] = bool(entry["sanity"]["passes"]) and entry["tau_robust_positive"]
        out.append(entry)
    return out


# -------------------------------------------------------------------------------------------------
# Figure and markdown


def plot_measures(rows: list[dict[str, Any]], names: list[str], path: Path) -> None:
    """One panel per measure: the measure against the robust gap; colour = noise rate, marker = method,
    hollow = not converged."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    cols = 5
    nrows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.7 * nrows), squeeze=False)
    markers = {"pgd_at": "o", "trades": "^"}
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, names):
        for method, marker in markers.items():  # one collection per (method, converged): few artists
            for converged in (True, False):
                pts = [r for r in rows if r["method"] == method and r["converged"] == converged
                       and r.get(name) is not None and math.isfinite(float(r[name]))]
                if pts:
                    colours = [cmap(r["noise"]) for r in pts]
                    ax.scatter([100 * r["robust_gap"] for r in pts], [float(r[name]) for r in pts], marker=marker,
                               s=22, facecolors=colours if converged else "none", edgecolors=colours, linewidths=1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("robust gap (points)", fontsize=7)
    handles = [plt.Line2D([], [], ls="", marker=m, color="k", label=METHODS[k]) for k, m in markers.items()]
    handles += [plt.Line2D([], [], ls="", marker="s", color=cmap(r), label=f"noise {r:g}")
                for r in sorted({r["noise"] for r in rows})]
    handles.append(plt.Line2D([], [], ls="", marker="o", markerfacecolor="none", color="k", label="not converged"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.subplots_adjust(hspace=0.45, wspace=0.3, top=1 - 0.5 / fig.get_figheight())
    save_figure(fig, path)


def num(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(float(v)) else f"{v:+.2f}"


def ci_text(t: dict[str, Any]) -> str:
    if not math.isfinite(t["tau"]):
        return "—"
    if not math.isfinite(t["lo"]):
        return f"{t['tau']:+.2f}"
    return f"{t['tau']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"


def sanity_text(s: dict[str, Any], method: str) -> str:
    g = s["groups"].get(method)
    if g is None or g["verdict"] == "n/a":
        return "n/a"
    return f"{g['verdict']} ({g['fraction']:.2f})"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows, stats_ = results["models"], results["measures"]
    lines = [
        f"## Complexity measures against robust generalization ({s['scale']} scale)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s['command']}` (generated {s['date']}, {s['wall_min']:.1f} min wall time for what this "
        "invocation ran; complete runs and cached measures are reused).",
        "",
        f"Family: {len(rows)} models: PGD-AT and TRADES x symmetric label noise {', '.join(f'{r:g}' for r in s['noise'])} "
        f"x seeds {', '.join(map(str, s['seeds']))} (each seed draws the initialization, the data order and the "
        f"noisy labels), plus train-set sizes {', '.join(map(str, s['sizes']))} (true labels, seed 0). "
        f"Settings: {s['summary']}. Measures on {s['n_samples']} training samples with their training labels at "
        f"the last checkpoint; margins: 10th percentile over {s['margin_text']}. Gaps: train - test accuracy "
        "(robust: PGD with the runs' evaluation attack), train accuracy w.r.t. the training labels.",
        "",
        f"Not converged (natural train accuracy within 10 points of chance, {pct(results['chance'])}%): "
        + (", ".join(r["run"] for r in rows if not r["converged"]) or "none")
        + ". They stay in the taus; the sanity check uses converged random-label models only.",
        "",
        "| model | method | noise | train size | seed | train nat | train rob | test nat | test rob | robust gap | natural gap | converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {METHODS[r['method']]} | {r['noise']:g} | {r['train_size']} | {r['seed']} | "
                     f"{pct(r['train_nat_acc'])} | {pct(r['train_rob_acc'])} | {pct(r['test_nat_acc'])} | "
                     f"{pct(r['test_rob_acc'])} | {pct(r['robust_gap'])} | {pct(r['natural_gap'])} | "
                     f"{'yes' if r['converged'] else '**no**'} |")
    lines += [
        "",
        f"Per measure: Kendall's tau-b over all models with the robust and the natural gap [95% percentile-bootstrap "
        f"interval, {s['n_boot']} resamples of the models]; granulated tau (Jiang et al. 2020: tau within groups "
        "of models that differ in one axis only, one seed at a time, averaged per axis, then over the axes) with "
        "the robust gap, per axis method / noise / train size and the mean Psi; the random-label sanity check per "
        "method (pass: every converged random-label model above every true-label one; the fraction of such pairs). "
        "Sign -: larger means simpler, so the expected tau is negative and the check is reversed. **pass**: the "
        "sanity check passes for every method judged and the tau with the robust gap has the expected sign with its "
        "interval excluding 0. The first two rows are the gaps themselves (the premise: does the robust gap of the "
        "random-label models exceed that of the true-label ones?).",
        "",
        "| measure | sign | tau robust gap | tau natural gap | granulated (method / noise / size) | Psi | sanity PGD-AT | sanity TRADES | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in stats_:
        g = e["granulated_robust_gap"]
        per = " / ".join(num(g["per_axis"][a]["psi"]) for a in AXES)
        lines.append(f"| {e['measure']}{' (reference)' if e['reference'] else ''} | {'-' if e['sign'] < 0 else '+'} | "
                     f"{ci_text(e['tau_robust_gap'])} | {ci_text(e['tau_natural_gap'])} | {per} | {num(g['psi'])} | "
                     f"{sanity_text(e['sanity'], 'pgd_at')} | {sanity_text(e['sanity'], 'trades')} | "
                     f"{'**pass**' if e['passes'] else 'fail'} |")
    lines += ["", "Verdict:", ""] + [f"- {v}" for v in results["verdict"]]
    for note in results.get("notes", []):
        lines.append(f"- Note: {note}")
    lines += ["", "Files: `measures_vs_robust_gap.png` (each measure against the robust gap; colour = noise rate, "
              "marker = method, hollow = not converged), `measures/measures.csv`, `results.json`, `runs/`."]
    return "\n".join(lines) + "\n"


def verdict_lines(stats_: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    measures = [e for e in stats_ if not e["reference"]]
    passing = [e["measure"] for e in measures if e["passes"]]
    sane = [e["measure"] for e in measures if e["sanity"]["passes"]]
    premise = next(e for e in stats_ if e["measure"] == "robust_gap")["sanity"]
    judged = [METHODS[m] for m, g in premise["groups"].items() if g["verdict"] != "n/a"]
    out = []
    if premise["passes"] is None:
        out.append("No method has a converged random-label model, so the sanity check cannot be judged.")
    else:
        out.append(f"Premise: the converged random-label models have a larger robust gap than the true-label ones "
                   f"for {', '.join(m for m, g in premise['groups'].items() if g['verdict'] == 'pass') or 'no method'} "
                   f"(judged: {', '.join(judged)}).")
    out.append(f"{len(sane)} of {len(measures)} measures pass the random-label sanity check"
               + (f" ({', '.join(sane)})" if sane else "") + f"; {len(passing)} also rank the robust gap "
               "over the whole family with the expected sign and an interval excluding 0"
               + (f" ({', '.join(passing)})" if passing else "") + ".")
    if premise["passes"] is None:
        reproduced = "not judged (no converged random-label model)"
    else:
        reproduced = "yes" if 2 * len(passing) < len(measures) else "no"
    out.append("The paper: complexity measures cannot explain robust generalization (most fail the random-label "
               f"test). Reproduced: **{reproduced}** ({len(passing)} of {len(measures)} measures pass; 'yes' when "
               "fewer than half do).")
    return out


def settings_text(recipe) -> str:
    d, o, a, m = recipe.data, recipe.optim, recipe.attack, recipe.method
    sched = schedule_text(o)
    return (f"{d.dataset}, {recipe.model.name} {recipe.model.kwargs or ''}, {a.norm} eps {a.eps} ({a.steps} steps of "
            f"{a.step_size}; TRADES beta {getattr(m, 'beta', 6.0)}), {o.epochs} epochs, {sched}, batch {o.batch_size}, "
            f"momentum {o.momentum}, weight decay {o.weight_decay}, augment {d.augment}; test set {d.test_size or 'all'} "
            f"images; evaluation attack PGD-{recipe.eval.attack.steps}")


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    add_study_arguments(
        parser, scales=SCALES, reproduction_scales=REPRODUCTION_SCALES, out="studies/measures-SCALE",
        scale_help="tiny: synthetic smoke test (seconds); small: Fashion-MNIST family, about 90 min on 2 cores with "
                   "--parallel 2",
        device_help="device for training and measures (default: the recipes' 'auto')",
        set_help="override a value in every recipe (repeatable; not the seeds, the label noise or the train-set "
                 "size, which the study sets per model)",
        seeds_help="seeds 0..N-1 per (method, noise rate) (default 2); seed 0 keeps the unsuffixed names",
        parallel_help="runs trained and measured at a time (N > 1: subprocesses with cores/N threads each)")
    parser.add_argument("--margin-over", choices=["all", "correct"], default="correct",
                        help="margin of the margin-normalized measures: 10th percentile over the correctly "
                             "classified samples (default; positive for every model with a correct sample) or over "
                             "all samples (the textbook definition; NaN when more than 10%% are misclassified)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the models (default 2000)")


@STUDIES.register("measures")
def run(args) -> int:
    t0 = time.time()
    scale = args.scale
    cfg = SCALES[scale]
    parallel = check_parallel(args.parallel)
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: use at least 100 resamples")
    seeds = seed_list(cfg["seeds"] if args.seeds is None else args.seeds)
    n_seeds = len(seeds)
    jobs = build_recipes(scale, args.device, args.set, seeds)  # validates everything before writing
    repro_path, repro_why = reproduction_target(scale, explicit=args.reproduction, disabled=args.no_reproduction,
                                                default_scales=REPRODUCTION_SCALES)
    out = Path(args.out or f"studies/measures-{scale}")
    runs_dir = out / "runs"
    for _, recipe, _ in jobs:  # refuse foreign run directories before training anything
        study_status(runs_dir / recipe.name, recipe)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if parallel > 1:
        train_subprocesses(jobs, runs_dir, parallel)
    else:
        for _, recipe, _ in jobs:
            ensure_trained(recipe, runs_dir, quiet=args.quiet)

    settings = dict(cfg["measure_settings"], margin_over=args.margin_over)
    log(f"complexity measures of {len(jobs)} models")
    paths = [runs_dir / recipe.name for _, recipe, _ in jobs]
    measured = measure_all(paths, cfg["n_samples"], settings, args.device, parallel)
    chance = 1.0 / int(json.loads((paths[0] / "data.json").read_text())["num_classes"])
    rows = []
    for (point, _, _), row in zip(jobs, measured):
        rows.append({**row, **point, "converged": verdict(row["train_nat_acc"], chance) != "near chance"})

    # torch: only when measures are computed
    from advmem.analysis.measures.base import MeasureSettings

    write_tables(rows, out / "measures", {"seed": 0, **asdict(MeasureSettings(**settings))})
    names = [n for n in measure_names(rows) if n not in AXES and n not in ("seed", "converged")]
    stats_ = analyse(rows, names, args.n_boot)
    notes = []
    undefined = [e["measure"] for e in stats_ if not math.isfinite(e["tau_robust_gap"]["tau"])]
    if undefined:
        notes.append(f"tau undefined (a constant measure, or NaN on every model): {', '.join(undefined)}.")
    nan_models = sorted({r["run"] for r in rows for n in names if n.endswith("_adv_margin")
                         and not math.isfinite(float(r.get(n, float("nan"))))})
    if nan_models:
        notes.append(f"margin-normalized adversarial measures undefined (no positive margin) on: {', '.join(nan_models)}.")
    extra = " ".join(f"--set {s}" for s in args.set)
    command = (f"advmem study measures --scale {scale} --seeds {n_seeds}" + (f" {extra}" if extra else "")
               + (f" --parallel {parallel}" if parallel > 1 else "")
               + (f" --margin-over {args.margin_over}" if args.margin_over != "correct" else ""))
    model_keys = ("run", "method", "noise", "train_size", "seed", "converged", "epoch", "train_nat_acc",
                  "train_rob_acc", "test_nat_acc", "test_rob_acc", "robust_gap", "natural_gap", "gap_source")
    results = {
        "study": SECTION,
        "chance": chance,
        "settings": {"scale": scale, "command": command, "date": time.strftime("%Y-%m-%d"),
                     "wall_min": (time.time() - t0) / 60, "seeds": seeds, "noise": cfg["noise"],
                     "sizes": [cfg["size"]] + cfg["sizes"], "n_samples": cfg["n_samples"], "n_boot": args.n_boot,
                     "measure_settings": asdict(MeasureSettings(**settings)),
                     "margin_text": "the correctly classified samples" if args.margin_over == "correct" else "all samples",
                     "summary": settings_text(jobs[0][1]), "overrides": list(args.set)},
        "models": [{k: r.get(k) for k in model_keys} | {n: r.get(n) for n in names} for r in rows],
        "measures": stats_,
        "verdict": verdict_lines(stats_, rows),
        "notes": notes,
    }
    plot_measures(rows, names, out / "measures_vs_robust_gap.png")
    atomic_write_json(out / "results.json", results)
    publish(markdown(results), out, files=("README.md",), section=f"{SECTION}-{scale}", repro_path=repro_path,
            repro_why=repro_why, t0=t0)
    return 0
