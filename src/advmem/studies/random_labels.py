"""Random labels: can adversarial training memorize them? PGD-AT and TRADES, true vs random labels.

Trains PGD-AT and TRADES each on true and on completely random training labels (symmetric label
noise at rate 1.0), once per seed (`--seeds N`: seeds 0..N-1; the seed sets the recipe's `seed`,
which draws the initialization and the data order, and `data.label_noise.seed`, which draws the
random labels), with per-sample memorization tracking, skipping runs already complete in the
output folder (incomplete ones are resumed). Then runs the gradient-stability probe and the
complexity measures on the final checkpoints (`advmem analyze grad-stability` / `measures`;
skipped with a note if this advmem lacks them) and writes one folder:

    runs/                     the run directories: {pgd-at,trades}-{true,random} for seed 0 (the
                              names of the single-seed study, so its runs are reused), with
                              `_seedS` appended for seed S > 0
    training_curves.png       natural and robust train accuracy vs epoch (the paper's Figure 1
                              shape): mean over seeds, with a +- std band
    grad_norm.png             mean squared gradient norm of the training loss vs epoch (mean, +- std)
    grad-stability/           the probe's JSON and log-log plot (each run's own loss at its last weights)
    along/, grad-along/       F2 along training (studies/grad_along.py): replays of every run to its
                              early epochs, and the same-weights probe of both losses at init, those
                              epochs and the last checkpoint; grad_along.png (--skip along leaves them out)
    measures/                 the complexity-measure table
    results.json, README.md   the numbers (mean +- std over seeds per run), and what they show

The same markdown becomes the `random-labels-SCALE` section of REPRODUCTION.md (small and
paper scales, run inside the advmem checkout; tiny only with --reproduction PATH).

Scales: tiny (synthetic data, seconds, for the tests), small (Fashion-MNIST subset on a CPU:
the default 3 seeds with every analysis took 68 minutes on one core, 45 of them training;
docs/memorization.md), paper (the CIFAR-10 recipes of the paper,
for a GPU).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from advmem.io import atomic_write_json
from advmem.errors import UserError
from advmem.studies import common, grad_along
from advmem.studies.cli import STUDIES
from advmem.studies.common import (add_study_arguments, check_parallel, ensure_trained, launch_runs, log, pm_stats,
                                   schedule_text, seed_list, stats, study_status)
from advmem.studies.reproduction import reproduction_target, smoke_note
from advmem.engine.rundir import RunDir

SECTION = "random-labels"
REPRODUCTION_SCALES = frozenset({"small", "paper"})  # the scales whose results belong in REPRODUCTION.md
METHODS = {"pgd_at": "PGD-AT", "trades": "TRADES"}
LABELS = {"true": "true labels", "random": "random labels"}
TRUE_LABEL_OVERRIDES = ["data.label_noise.kind=none", "data.label_noise.rate=0"]
# Set per seed by the study (the recipe's `seed` draws the initialization and the data order,
# `data.label_noise.seed` the random labels); a --set of either is refused.
SEED_KEYS = ("seed", "data.label_noise.seed")
# Per-run numbers aggregated over seeds (mean +- sample std) in results.json and the README.
AGG_KEYS = ("train_nat_acc", "train_rob_acc", "test_nat_acc", "test_rob_acc", "grad_norm_sq_last", "memorized_frac",
            "run_minutes")
CURVE_KEYS = ("train_nat_acc", "train_rob_acc", "test_nat_acc", "test_rob_acc", "grad_norm_sq")

# Base recipes have random labels; the true-label runs are the same recipes with the noise off.
# Complexity measures at every scale: margins over the correctly classified samples, as `advmem study
# measures` (random-label runs fit under 90% of their samples, so the 10th percentile over all of
# them is <= 0 and the margin-normalized measures would be NaN).
MEASURES = {"margin_over": "correct"}
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "recipes": {"pgd_at": "studies/random-labels-small-pgd-at", "trades": "studies/random-labels-small-trades"},
        "overrides": [
            "device=cpu", "data.dataset=synthetic", "data.train_size=null", "data.test_size=null",
            "data.synthetic={n_train: 48, n_test: 24, image_size: 6, num_classes: 4}",
            "model.name=mlp", "model.kwargs={hidden: [16]}",
            "attack.steps=2", "attack.step_size=0.05",
            "optim.epochs=3", "optim.batch_size=16", "optim.schedule={name: constant}",
            "eval.every=1", "eval.attack.steps=2", "track.per_sample.every=1",
        ],
        "probe": {"directions": 2, "batch_size": 16, "alphas": [0.0, 1e-3, 1e-2, 1e-1]},
        "measures": MEASURES,
        "last_epochs": 1,
        "seeds": 2,  # two, so the smoke test exercises the seed machinery
    },
    "small": {
        "recipes": {"pgd_at": "studies/random-labels-small-pgd-at", "trades": "studies/random-labels-small-trades"},
        "overrides": [],
        "probe": {"directions": 5, "batch_size": 128},
        "measures": MEASURES,
        "last_epochs": 10,
        "seeds": 3,
    },
    "paper": {
        "recipes": {"pgd_at": "paper/cifar10-random-labels-pgd-at", "trades": "paper/cifar10-random-labels-trades"},
        "overrides": [],
        "probe": {"directions": 5, "batch_size": 128},
        "measures": MEASURES,
        "last_epochs": 10,
        "seeds": 1,  # CIFAR-10 WRN-28-10 for 300 epochs per run: ask for more with --seeds
    },
}


# -------------------------------------------------------------------------------------------------
# Recipes and training


def check_seed_sets(sets: list[str]) -> None:
    for item in sets:
        if item.split("=", 1)[0].strip() in SEED_KEYS:
            raise UserError(f"--set {item}: the study seeds each run itself (seed and data.label_noise.seed follow "
                            "the run's seed, 0..N-1); use --seeds N")


def seed_overrides(seed: int) -> list[str]:
    """The seed of a run sets the initialization and data order (`seed`) and the label draw."""
    return [f"seed={seed}", f"data.label_noise.seed={seed}"]


def run_name(method: str, labels: str, seed: int) -> str:
    """`pgd-at-random` for seed 0 (the single-seed study's names, so its runs are reused), then `_seedS`."""
    base = f"{method.replace('_', '-')}-{labels}"
    return base if seed == 0 else f"{base}_seed{seed}"


def recipe_overrides(scale: str, method: str, labels: str, seed: int, device: str | None,
                     extra: list[str]) -> list[str]:
    cfg = SCALES[scale]
    overrides = list(cfg["overrides"]) + (TRUE_LABEL_OVERRIDES if labels == "true" else [])
    overrides += list(extra) + ([f"device={device}"] if device else [])
    return overrides + seed_overrides(seed) + [f"name={run_name(method, labels, seed)}"]


def build_recipes(scale: str, device: str | None, extra: list[str],
                  seeds: list[int] | None = None) -> dict[tuple[str, str, int], Any]:
    """All recipes, keyed by (method, labels, seed); validated before anything is written."""
    # pydantic: only when a study runs (the CLI's parser imports this module)
    from advmem.recipe import load_recipe

    check_seed_sets(extra)
    seeds = [0] if seeds is None else seeds
    recipes = {}
    for method, spec in SCALES[scale]["recipes"].items():
        for labels in LABELS:
            for seed in seeds:
                recipe = load_recipe(spec, recipe_overrides(scale, method, labels, seed, device, extra))
                if recipe.method.name != method:
                    raise UserError(f"recipe {spec}: method is {recipe.method.name}, expected {method}")
                recipes[(method, labels, seed)] = recipe
    return recipes


def train_parallel(recipes: dict[tuple[str, str, int], Any], scale: str, device: str | None, extra: list[str],
                   runs_dir: Path, parallel: int) -> None:
    """Train the runs not yet complete as `advmem train` subprocesses, `parallel` at a time (sweep machinery)."""
    launch_runs([(recipe, SCALES[scale]["recipes"][method], seed,
                  recipe_overrides(scale, method, labels, seed, device, extra))
                 for (method, labels, seed), recipe in recipes.items()], runs_dir, parallel)


# -------------------------------------------------------------------------------------------------
# Numbers from the run directories


def train_curve(run_path: Path) -> list[dict[str, float]]:
    """Per epoch: natural/robust train accuracy (whole tracked set; else the trainer's train subset)."""
    out = []
    for row in RunDir(run_path).read_metrics():
        point = {"epoch": row["epoch"], "grad_norm_sq": row.get("grad_norm_sq")}
        for kind in ("nat", "rob"):
            value = row.get(f"track_{kind}_acc", row.get(f"train_{kind}_acc"))
            if value is not None:
                point[f"train_{kind}_acc"] = value
            if f"test_{kind}_acc" in row:
                point[f"test_{kind}_acc"] = row[f"test_{kind}_acc"]
        out.append(point)
    return out


def last_value(curve: list[dict[str, float]], key: str) -> float | None:
    values = [p[key] for p in curve if p.get(key) is not None]
    return values[-1] if values else None


def run_numbers(run_path: Path, last_epochs: int) -> dict[str, Any]:
    curve = train_curve(run_path)
    grads = [p["grad_norm_sq"] for p in curve if p.get("grad_norm_sq") is not None]
    k = max(1, min(last_epochs, len(grads)))
    out = {"run": str(run_path), "epochs": len(curve), "curve": curve,
           "grad_norm_sq_last": sum(grads[-k:]) / k if grads else None, "grad_epochs": k}
    for key in ("train_nat_acc", "train_rob_acc", "test_nat_acc", "test_rob_acc"):
        out[key] = last_value(curve, key)
    rows = RunDir(run_path).read_metrics()
    out["memorized_frac"] = rows[-1].get("track_memorized_frac")
    out["run_minutes"] = common.run_minutes(rows)
    return out


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Per epoch and key: the mean over seeds, with `KEY_std`, `KEY_min`, `KEY_max` and `KEY_n`."""
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for curve in curves:
        for point in curve:
            by_epoch.setdefault(point["epoch"], []).append(point)
    out = []
    for epoch in sorted(by_epoch):
        point: dict[str, Any] = {"epoch": epoch}
        for key in CURVE_KEYS:
            st = stats([p.get(key) for p in by_epoch[epoch]])
            if st["n"]:
                point[key] = st["mean"]
                for part in ("std", "min", "max", "n"):
                    point[f"{key}_{part}"] = st[part]
        out.append(point)
    return out


def aggregate(per_seed: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One run of the study over its seeds: mean +- std of each number, the mean curve, and each seed's numbers."""
    out: dict[str, Any] = {"seeds": list(seeds), "runs": [r["run"] for r in per_seed],
                           "epochs": per_seed[0]["epochs"], "grad_epochs": per_seed[0]["grad_epochs"]}
    for key in AGG_KEYS:
        out[key] = stats([r.get(key) for r in per_seed])
    out["curve"] = mean_curve([r["curve"] for r in per_seed])
    out["per_seed"] = [dict({k: v for k, v in r.items() if k != "curve"}, seed=s) for r, s in zip(per_seed, seeds)]
    return out


def mean_of(st: dict[str, Any] | None) -> float | None:
    return None if not st else st.get("mean")


def verdict(acc: float | None, chance: float) -> str:
    """How far a run fitted its training labels (natural train accuracy)."""
    if acc is None:
        return "not measured"
    if acc >= 0.9:
        return "memorized"
    if acc >= chance + 0.1:
        return "partly fitted"
    return "near chance"


def probe_summary(report: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """Relative gradient change at the largest probed alpha <= 1e-2, per run (re-solved and fixed x_adv)."""
    out: dict[str, dict[str, float]] = {}
    if not report:
        return out
    for res in report.get("runs", []):
        try:
            alphas = list(res["alphas"])
            candidates = [i for i, a in enumerate(alphas) if 0 < a <= 1e-2] or [len(alphas) - 1]
            i = max(candidates, key=lambda j: alphas[j])
            out[res["run"]] = {"alpha": alphas[i], "regenerated": float(res["regenerated"]["mean"][i]),
                               "fixed": float(res["fixed"]["mean"][i])}
        except (KeyError, IndexError, TypeError):
            continue
    return out


# -------------------------------------------------------------------------------------------------
# Figures


def plot_training_curves(results: dict[str, Any], path: Path) -> None:
    """One panel per method; natural (solid) and robust (dashed) train accuracy, true vs random labels."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = {"true": "#1f77b4", "random": "#d62728"}
    n_seeds = len(results["settings"].get("seeds", [0]))
    for ax, (method, label) in zip(axes, METHODS.items()):
        for labels, colour in colours.items():
            curve = results["runs"][f"{method}/{labels}"]["curve"]
            for kind, style, name in (("nat", "-", "natural"), ("rob", "--", "robust")):
                key = f"train_{kind}_acc"
                pts = [p for p in curve if key in p]
                if pts:
                    xs = [p["epoch"] for p in pts]
                    ys = [100 * p[key] for p in pts]
                    ax.plot(xs, ys, style, color=colour, marker="o" if len(pts) < 30 else None, ms=3,
                            label=f"{LABELS[labels]}, {name}")
                    if n_seeds > 1:
                        common.std_band(ax, xs, ys, [100 * p.get(f"{key}_std", 0.0) for p in pts], colour,
                                        alpha=0.15 if kind == "nat" else 0.08)
        ax.axhline(100 * results["chance"], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(f"{label}: training accuracy" + (f" (mean ± std, {n_seeds} seeds)" if n_seeds > 1 else ""))
        ax.set_xlabel("epoch")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("train accuracy w.r.t. training labels (%)")
    save_figure(fig, path)


def plot_grad_norms(results: dict[str, Any], path: Path) -> None:
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 3.8))
    styles = {("pgd_at", "true"): ("#1f77b4", "-"), ("pgd_at", "random"): ("#1f77b4", "--"),
              ("trades", "true"): ("#ff7f0e", "-"), ("trades", "random"): ("#ff7f0e", "--")}
    n_seeds = len(results["settings"].get("seeds", [0]))
    for (method, labels), (colour, style) in styles.items():
        curve = results["runs"][f"{method}/{labels}"]["curve"]
        pts = [p for p in curve if p.get("grad_norm_sq")]
        if pts:
            xs = [p["epoch"] for p in pts]
            ys = [p["grad_norm_sq"] for p in pts]
            ax.plot(xs, ys, style, color=colour, label=f"{METHODS[method]}, {LABELS[labels]}")
            if n_seeds > 1:  # a log axis: the band is clipped at the smallest seed's value
                lo = [max(y - p.get("grad_norm_sq_std", 0.0), p.get("grad_norm_sq_min", y)) for y, p in zip(ys, pts)]
                hi = [y + p.get("grad_norm_sq_std", 0.0) for y, p in zip(ys, pts)]
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared gradient norm per step")
    ax.set_title("Gradient norm of the training loss" + (f" (mean ± std, {n_seeds} seeds)" if n_seeds > 1 else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -------------------------------------------------------------------------------------------------
# Markdown


pct = partial(common.pct, unit="%")  # '45.3%'
pct_pm = partial(pm_stats, unit="%")  # '45.3 ± 2.1%' (mean ± sample std over seeds); one seed: '45.3%'
sci_pm = partial(pm_stats, percent=False)  # '0.0123 ± 0.004'


def per_seed_text(st: dict[str, Any] | None, seeds: list[int]) -> str:
    """'seed 0: 40.1%, seed 1: 38.2%' (empty for one seed)."""
    if not st or len(seeds) < 2:
        return ""
    return "; per seed: " + ", ".join(f"seed {s} {pct(v)}" for s, v in zip(seeds, st["values"]))


def seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def settings_text(recipe, seeds: list[int] | None = None) -> str:
    d, o, a, m = recipe.data, recipe.optim, recipe.attack, recipe.method
    size = f"{d.train_size} training images" if d.train_size else "all training images"
    if d.dataset == "synthetic":
        size = f"{d.synthetic.n_train} synthetic images"
    extra = f", TRADES beta {m.beta}" if hasattr(m, "beta") else ""
    sched = schedule_text(o)
    tr = recipe.track.per_sample
    return (f"{d.dataset}, {size}, random labels = symmetric noise at rate {recipe.data.label_noise.rate} "
            + (f"(seed {d.label_noise.seed}); " if seeds is None else
               f"({seeds_text(seeds)}: each seed draws the labels, the initialization and the data order); ")
            + f"{recipe.model.name} {recipe.model.kwargs or ''}; {a.norm} eps {a.eps}, "
            f"{a.steps} steps of {a.step_size}{extra}; {o.epochs} epochs, {sched}, batch {o.batch_size}, "
            f"momentum {o.momentum}, weight decay {o.weight_decay}, augment {d.augment}; training accuracy "
            + (f"on {'all' if tr.subset == 'all' else tr.subset} training images every {tr.every} epoch(s) (eval attack: {recipe.eval.attack.steps} steps)"
               if tr else f"on {recipe.eval.train_subset} training images"))


def fit_count(r: dict[str, Any], chance: float, wanted: str) -> str:
    """'2 of 3 seeds' whose natural train accuracy gives the verdict `wanted` (empty for one seed)."""
    values = [v for v in r["train_nat_acc"]["values"]]
    if len(values) < 2:
        return ""
    hits = sum(verdict(v, chance) == wanted for v in values)
    return f"; {wanted} in {hits} of {len(values)} seeds"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    chance = results["chance"]
    runs = results["runs"]
    seeds = s.get("seeds", [0])
    n = len(seeds)
    lines = [
        f"## Random labels ({s['scale']} scale)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s['command']}` (generated {s['date']}, {s['wall_min']:.1f} min wall time for what "
        "this invocation ran; runs already complete are not retrained).",
        "",
        f"Settings (random-label runs; the true-label runs are identical with the noise off): {s['settings']}.",
        "",
        (f"Every run is trained once per seed ({n} seeds: {', '.join(map(str, seeds))}); each number is the mean "
         "± the sample standard deviation over the seeds, and each verdict is that of the mean. "
         if n > 1 else "One seed (seed 0); `--seeds N` trains every run N times and reports mean ± std. ")
        + f"Training accuracy is measured w.r.t. the labels trained on; chance is {pct(chance)}. Mean squared "
        f"gradient norm: average over the last {s['last_epochs']} epochs of the per-epoch mean of "
        "||grad||^2 per step.",
        "",
        "| run | train nat | train rob | test nat | test rob | mean sq. grad norm | fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        method, labels = key.split("/")
        lines.append(f"| {METHODS[method]}, {LABELS[labels]} | {pct_pm(r['train_nat_acc'])} | "
                     f"{pct_pm(r['train_rob_acc'])} | {pct_pm(r['test_nat_acc'])} | {pct_pm(r['test_rob_acc'])} | "
                     f"{sci_pm(r['grad_norm_sq_last'])} | {verdict(mean_of(r['train_nat_acc']), chance)} |")
    lines += ["", "What this shows:", ""]
    pr, tr = runs["pgd_at/random"], runs["trades/random"]
    pgd_v, trades_v = verdict(mean_of(pr["train_nat_acc"]), chance), verdict(mean_of(tr["train_nat_acc"]), chance)
    lines.append(f"- PGD-AT on random labels: {pgd_v} (natural train accuracy {pct_pm(pr['train_nat_acc'])}"
                 f"{per_seed_text(pr['train_nat_acc'], seeds)}{fit_count(pr, chance, 'near chance')}; robust "
                 f"{pct_pm(pr['train_rob_acc'])}). The paper: PGD-AT fails to converge (near chance). "
                 f"Reproduced: **{'yes' if pgd_v == 'near chance' else 'no'}**.")
    memorized = mean_of(tr.get("memorized_frac"))
    lines.append(f"- TRADES on random labels: {trades_v} (natural train accuracy {pct_pm(tr['train_nat_acc'])}"
                 f"{per_seed_text(tr['train_nat_acc'], seeds)}{fit_count(tr, chance, 'memorized')}; robust "
                 f"{pct_pm(tr['train_rob_acc'])}"
                 + (f"; {pct_pm(tr['memorized_frac'])} of the samples whose label was changed are robustly fitted"
                    if memorized is not None else "")
                 + "). The paper: TRADES memorizes random labels (close to 100% natural train accuracy). "
                 f"Reproduced: **{ {'memorized': 'yes', 'partly fitted': 'partly'}.get(trades_v, 'no') }**.")
    if mean_of(pr["grad_norm_sq_last"]) is not None and mean_of(tr["grad_norm_sq_last"]) is not None:
        lines.append(f"- Mean squared gradient norm in the last epochs on random labels: PGD-AT "
                     f"{sci_pm(pr['grad_norm_sq_last'])}, TRADES {sci_pm(tr['grad_norm_sq_last'])}.")
    probe = results.get("grad_stability_summary") or {}
    if probe:
        parts = []
        for key in ("pgd_at/random", "trades/random", "pgd_at/true", "trades/true"):
            regen, fixed = runs[key].get("probe_regenerated"), runs[key].get("probe_fixed")
            if regen and regen["n"]:
                parts.append(f"{METHODS[key.split('/')[0]]} {LABELS[key.split('/')[1]]}: {sci_pm(regen)} "
                             f"(x_adv fixed: {sci_pm(fixed)})")
        if parts:
            alpha = next(iter(probe.values()))["alpha"]
            lines.append(f"- Gradient stability (relative gradient change at weight perturbation alpha = {alpha:.2g}, "
                         "x_adv re-solved at the perturbed weights" + (", mean ± std over seeds" if n > 1 else "")
                         + "): " + "; ".join(parts) + ". The paper: PGD-AT's gradient is the unstable one (larger "
                         "change).")
            pa, ta = mean_of(pr.get("probe_regenerated")), mean_of(tr.get("probe_regenerated"))
            if pa is not None and ta is not None:
                lines.append(f"  Reproduced: **{'yes' if pa > ta else 'no'}** "
                             f"(PGD-AT {pa:.3g} vs TRADES {ta:.3g}{', means' if n > 1 else ''}).")
    cost = [mean_of(r.get("run_minutes")) for r in runs.values()]
    if all(c is not None for c in cost):
        lines.append("- Compute: minutes per run (the sum of its epoch times, evaluation and tracking included, "
                     "over every invocation that trained it; mean ± std over seeds): "
                     + "; ".join(f"{METHODS[k.split('/')[0]]} {LABELS[k.split('/')[1]]} {sci_pm(r['run_minutes'])}"
                                 for k, r in runs.items())
                     + f"; {sum(c * n for c in cost):.0f} run-minutes in all.")
    for note in results.get("notes", []):
        lines.append(f"- Note: {note}")
    if s["scale"] == "small":
        lines.append("- How this setting was found, and where the findings stop holding at other eps, "
                     "train-set sizes and epochs: docs/memorization.md (the search, seed 0) and "
                     "`advmem study random-labels-boundary --seeds N` to map it with error bars.")
    if results.get("along"):
        lines += grad_along.markdown_lines(results["along"], METHODS, LABELS, grad_along.PROBES[s["scale"]])
    files = ["`training_curves.png` (the paper's Figure 1 shape" + (", mean ± std over seeds)" if n > 1 else ")"),
             "`grad_norm.png`"]
    files += ["`grad_along.png`", "`along/` (the replays)"] if results.get("along") else []
    files += ["`grad-stability/`"] if results.get("grad_stability_summary") is not None and probe else []
    files += ["`measures/`"] if results.get("measures") is not None else []
    files += ["`memorized/`"] if results.get("memorized_markdown") else []
    lines += results.get("memorized_markdown") or []
    measures_md = results.get("measures_markdown")
    if measures_md:
        body = measures_md.strip().splitlines()
        if body and body[0].startswith("# "):  # the analysis's own title: this section has its heading
            body = body[1:]
        lines += ["", "Complexity measures on these runs' last checkpoints (`advmem analyze measures`; the paper's "
                  "test of them, over a family of models, is `advmem study measures` and its section):"]
        lines += body
    lines += ["", "Files: " + ", ".join(files + ["`results.json`", "`runs/`"]) + "."]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------
# Analyses from the other half of the issue (imported lazily; optional in this checkout)


def run_probe(run_paths: list[Path], out_dir: Path, opts: dict[str, Any], device: str | None,
              notes: list[str]) -> dict[str, Any] | None:
    try:
        # torch when it probes; looked up at call time (tests put a stand-in in sys.modules)
        from advmem.analysis.grad_stability import probe_runs
    except ModuleNotFoundError as err:
        if err.name != "advmem.analysis.grad_stability":
            raise
        notes.append("gradient-stability probe skipped: advmem.analysis.grad_stability is not in this advmem")
        log(notes[-1])
        return None
    log("gradient-stability probe")
    kwargs = dict(opts)
    if device:
        kwargs["device"] = "cuda" if device == "cuda" else "cpu"
    return probe_runs(run_paths, out_dir, **kwargs)


def run_measures(run_paths: list[Path], out_dir: Path, opts: dict[str, Any], notes: list[str]) -> list[dict] | None:
    try:
        # torch: only when measures are computed (tests put a stand-in in sys.modules)
        from advmem.analysis.measures import measure_runs
    except (ModuleNotFoundError, ImportError) as err:
        if isinstance(err, ModuleNotFoundError) and err.name not in ("advmem.analysis.measures", None):
            raise
        notes.append("complexity measures skipped: advmem.analysis.measures.measure_runs is not in this advmem")
        log(notes[-1])
        return None
    log("complexity measures")
    opts = dict(opts)
    if "margin_over" in opts:
        from advmem.analysis.measures import MeasureSettings
        opts["settings"] = MeasureSettings(margin_over=opts.pop("margin_over"))
    return measure_runs(run_paths, out_dir, **opts)


SKIPPABLE = ("along", "grad-stability", "measures")


def skipped_parts(text: str) -> set[str]:
    parts = {p.strip() for p in (text or "").split(",") if p.strip()}
    unknown = sorted(parts - set(SKIPPABLE))
    if unknown:
        raise UserError(f"--skip {unknown[0]}: choose from {', '.join(SKIPPABLE)}")
    return parts


def along_replay_sets(recipes: dict[tuple[str, str, int], Any], scale: str) -> list[str]:
    """The replays' --set overrides (the same for every run: checked against each recipe)."""
    sets = [grad_along.replay_sets(recipe, grad_along.ALONG_EPOCHS[scale], grad_along.PROBES[scale]["batch_size"])
            for recipe in recipes.values()]
    return sets[0]


def train_and_probe_along(scale: str, args, recipes, replays, paths, order, seeds: list[int], out: Path,
                          parallel: int) -> dict[str, Any]:
    """Replay every run up to the last early epoch (out/along/), then the same-weights probe at
    init, the early epochs and the run's last checkpoint (grad_along's docstring says why)."""
    along_dir = out / "along"
    along_dir.mkdir(parents=True, exist_ok=True)
    along_sets = list(args.set) + along_replay_sets(recipes, scale)
    log("replays for the along-training probe")
    if parallel > 1:
        train_parallel(replays, scale, args.device, along_sets, along_dir, parallel)
        replay_paths = {key: along_dir / recipe.name for key, recipe in replays.items()}
    else:
        replay_paths = {key: ensure_trained(recipe, along_dir, quiet=True) for key, recipe in replays.items()}
    epochs = grad_along.ALONG_EPOCHS[scale]
    plans = {(m, l, seed): grad_along.probe_plan(paths[(m, l, seed)], replay_paths[(m, l, seed)], epochs)
             for m, l in order for seed in seeds}
    flat = [item for key in plans for item in plans[key]]
    probes = grad_along.run_probes(flat, out / "grad-along", grad_along.PROBES[scale], args.device, parallel, log)
    return grad_along.along_results(order, seeds, plans, probes, replay_paths, epochs)


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    add_study_arguments(
        parser, scales=SCALES, reproduction_scales=REPRODUCTION_SCALES, out="studies/random-labels-SCALE",
        scale_help="tiny: synthetic smoke test (seconds); small: Fashion-MNIST subset on a CPU (3 seeds with "
                   "every analysis: 68 min on one core, less with --parallel 2); paper: the paper's "
                   "CIFAR-10 WRN-28-10 recipes (GPU)",
        device_help="device for training and analyses (default: the recipes' 'auto')",
        set_help="override a value in every recipe (repeatable), e.g. --set optim.epochs=50 (not seed or "
                 "data.label_noise.seed: see --seeds)",
        seeds_help="train every run with seeds 0..N-1 (each seed draws the random labels, the initialization and "
                   "the data order) and report mean ± std; default 2 at tiny, 3 at small, 1 at paper. Seed 0 keeps "
                   "the single-seed run names, so its runs are reused",
        parallel_help="runs trained at a time: 1 (default) trains in this process; N > 1 starts N `advmem train` "
                      "subprocesses with cores/N threads each, logs in OUT/runs/logs")
    parser.add_argument("--skip", default="", metavar="PART[,PART]",
                        help="analyses to leave out, comma-separated: along (the replays of every run to its "
                             "early epochs, the same-weights probe there and the training-time signal), "
                             "grad-stability (each run's own loss at its last weights), measures (complexity "
                             "measures; `advmem study measures` is their study); the README says what was skipped")


@STUDIES.register("random-labels")
def run(args) -> int:
    t0 = time.time()
    scale = args.scale
    cfg = SCALES[scale]
    parallel = check_parallel(getattr(args, "parallel", 1))
    seeds = seed_list(cfg["seeds"] if getattr(args, "seeds", None) is None else args.seeds)
    recipes = build_recipes(scale, args.device, args.set, seeds)  # validates everything before writing
    repro_path, repro_why = reproduction_target(scale, explicit=args.reproduction, disabled=args.no_reproduction,
                                                default_scales=REPRODUCTION_SCALES)
    out = Path(args.out or f"studies/random-labels-{scale}")
    runs_dir = out / "runs"
    skip = skipped_parts(getattr(args, "skip", ""))
    with_along = "along" not in skip
    replays = build_recipes(scale, args.device, list(args.set) + along_replay_sets(recipes, scale), seeds) \
        if with_along else {}
    for recipe in recipes.values():  # refuse foreign run directories before training anything
        study_status(runs_dir / recipe.name, recipe)
    for recipe in replays.values():
        study_status(out / "along" / recipe.name, recipe)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if parallel > 1:
        train_parallel(recipes, scale, args.device, args.set, runs_dir, parallel)
        paths = {key: runs_dir / recipe.name for key, recipe in recipes.items()}
    else:
        paths = {key: ensure_trained(recipe, runs_dir, quiet=args.quiet) for key, recipe in recipes.items()}

    notes: list[str] = []
    order = [("pgd_at", "true"), ("pgd_at", "random"), ("trades", "true"), ("trades", "random")]
    run_paths = [paths[(m, l, seed)] for m, l in order for seed in seeds]
    along = train_and_probe_along(scale, args, recipes, replays, paths, order, seeds, out, parallel) \
        if with_along else None
    probe = None if "grad-stability" in skip else run_probe(run_paths, out / "grad-stability", cfg["probe"],
                                                            args.device, notes)
    measures = None if "measures" in skip else run_measures(run_paths, out / "measures", cfg["measures"], notes)
    notes += [f"{part} skipped (--skip)" for part in SKIPPABLE if part in skip]
    measures_md = None
    if measures is not None:
        md_files = sorted((out / "measures").glob("*.md"))
        measures_md = md_files[0].read_text() if md_files else None

    import json

    example = recipes[("pgd_at", "random", seeds[0])]
    info = json.loads((paths[("pgd_at", "random", seeds[0])] / "data.json").read_text())
    num_classes = int(info["num_classes"])
    extra = " ".join(f"--set {s}" for s in args.set)
    command = (f"advmem study random-labels --scale {scale} --seeds {len(seeds)}" + (f" {extra}" if extra else "")
               + (f" --parallel {parallel}" if parallel > 1 else "")
               + (f" --skip {','.join(p for p in SKIPPABLE if p in skip)}" if skip else ""))
    summary = probe_summary(probe)
    runs: dict[str, Any] = {}
    for m, l in order:
        entry = aggregate([run_numbers(paths[(m, l, seed)], cfg["last_epochs"]) for seed in seeds], seeds)
        if summary:
            names = [paths[(m, l, seed)].name for seed in seeds]
            entry["probe_regenerated"] = stats([summary.get(nm, {}).get("regenerated") for nm in names])
            entry["probe_fixed"] = stats([summary.get(nm, {}).get("fixed") for nm in names])
        runs[f"{m}/{l}"] = entry
    results: dict[str, Any] = {
        "study": SECTION,
        "chance": 1.0 / num_classes,
        "settings": {"scale": scale, "command": command, "date": time.strftime("%Y-%m-%d"),
                     "wall_min": (time.time() - t0) / 60, "last_epochs": cfg["last_epochs"], "seeds": seeds,
                     "std": "sample standard deviation over seeds (n - 1 denominator; 0 for one seed)",
                     "settings": settings_text(example, seeds), "overrides": list(args.set)},
        "runs": runs,
        "grad_stability_summary": summary,
        "measures": measures,
        "measures_markdown": measures_md,
        "notes": notes,
    }
    results["along"] = along
    results["memorized_markdown"] = common.memorized_samples(
        {f"{METHODS[m]}, {LABELS[l]}": [paths[(m, l, seed)] for seed in seeds] for m, l in order}, out)
    plot_training_curves(results, out / "training_curves.png")
    if along:
        grad_along.plot_along(along, out / "grad_along.png", METHODS, LABELS)
    plot_grad_norms(results, out / "grad_norm.png")
    atomic_write_json(out / "results.json", results)
    common.publish(markdown(results), out, files=("README.md",), section=f"{SECTION}-{scale}", repro_path=repro_path,
                   repro_why=repro_why, t0=t0)
    return 0
