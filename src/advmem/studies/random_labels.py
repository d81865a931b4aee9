"""Random labels: can adversarial training memorize them? PGD-AT and TRADES, true vs random labels.

Trains PGD-AT and TRADES each on true and on completely random training labels (symmetric label
noise at rate 1.0), with per-sample memorization tracking, skipping runs already complete in
the output folder (incomplete ones are resumed). Then runs the gradient-stability probe and the
complexity measures on the four final checkpoints (`advmem analyze grad-stability` /
`measures`; skipped with a note if this advmem lacks them) and writes one folder:

    runs/                     the four run directories
    training_curves.png       natural and robust train accuracy vs epoch (the paper's Figure 1 shape)
    grad_norm.png             mean squared gradient norm of the training loss vs epoch
    grad-stability/           the probe's JSON and log-log plot
    measures/                 the complexity-measure table
    results.json, README.md   the numbers, and what they show

The same markdown becomes the `random-labels-SCALE` section of REPRODUCTION.md (small and
paper scales, run inside the advmem checkout; tiny only with --reproduction PATH).

Scales: tiny (synthetic data, seconds, for the tests), small (Fashion-MNIST subset, a CPU
budget of about 45 minutes on 2 cores), paper (the CIFAR-10 recipes of the paper, for a GPU).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from advmem.engine.io import atomic_write_json, atomic_write_text
from advmem.errors import UserError
from advmem.studies.reproduction import reproduction_target, smoke_note, update_reproduction

SECTION = "random-labels"
REPRODUCTION_SCALES = frozenset({"small", "paper"})  # the scales whose results belong in REPRODUCTION.md
METHODS = {"pgd_at": "PGD-AT", "trades": "TRADES"}
LABELS = {"true": "true labels", "random": "random labels"}
TRUE_LABEL_OVERRIDES = ["data.label_noise.kind=none", "data.label_noise.rate=0"]

# Base recipes have random labels; the true-label runs are the same recipes with the noise off.
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
        "measures": {},
        "last_epochs": 1,
    },
    "small": {
        "recipes": {"pgd_at": "studies/random-labels-small-pgd-at", "trades": "studies/random-labels-small-trades"},
        "overrides": [],
        "probe": {"directions": 5, "batch_size": 128},
        "measures": {},
        "last_epochs": 10,
    },
    "paper": {
        "recipes": {"pgd_at": "paper/cifar10-random-labels-pgd-at", "trades": "paper/cifar10-random-labels-trades"},
        "overrides": [],
        "probe": {"directions": 5, "batch_size": 128},
        "measures": {},
        "last_epochs": 10,
    },
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
# Recipes and training


def build_recipes(scale: str, device: str | None, extra: list[str]) -> dict[tuple[str, str], Any]:
    """The four recipes, keyed by (method, labels); validated before anything is written."""
    from advmem.recipe import load_recipe

    cfg = SCALES[scale]
    recipes = {}
    for method, spec in cfg["recipes"].items():
        for labels in LABELS:
            overrides = list(cfg["overrides"]) + (TRUE_LABEL_OVERRIDES if labels == "true" else [])
            overrides += list(extra) + ([f"device={device}"] if device else [])
            overrides.append(f"name={method.replace('_', '-')}-{labels}")
            recipe = load_recipe(spec, overrides)
            if recipe.method.name != method:
                raise UserError(f"recipe {spec}: method is {recipe.method.name}, expected {method}")
            recipes[(method, labels)] = recipe
    return recipes


def run_state(run_path: Path, recipe) -> str:
    """'new', 'complete', 'resume' or 'restart' (started but no completed epoch) for `recipe` in `run_path`.

    Unlike `sweep.run_status` (which launches other processes and so also reports running and
    failed runs), a study trains in-process and only needs to know whether to resume."""
    from advmem.engine.rundir import RunDir

    run = RunDir(run_path)
    if not run.path.exists() or not any(run.path.iterdir()):
        return "new"
    if not run.is_run():
        raise UserError(f"{run.path} exists but is not a run directory; remove it or choose another --out")
    recorded = run.load_recipe()
    if recorded.hash() != recipe.hash():
        raise UserError(f"{run.path} was trained with different settings than this study asks for; "
                        "remove it (or choose another --out) to train it again")
    if run.finished(recipe.optim.epochs):
        return "complete"
    return "resume" if run.resume_path.exists() else "restart"


def ensure_trained(recipe, runs_dir: Path, quiet: bool) -> Path:
    from advmem.engine.trainer import train

    path = runs_dir / recipe.name
    state = run_state(path, recipe)
    if state == "complete":
        log(f"{recipe.name}: complete, skipped")
        return path
    log(f"{recipe.name}: {'resuming' if state == 'resume' else 'training'} ({recipe.optim.epochs} epochs)")
    train(recipe, run_root=runs_dir, resume=state == "resume", overwrite=state == "restart", quiet=quiet)
    return path


# -------------------------------------------------------------------------------------------------
# Numbers from the run directories


def train_curve(run_path: Path) -> list[dict[str, float]]:
    """Per epoch: natural/robust train accuracy (whole tracked set; else the trainer's train subset)."""
    from advmem.engine.rundir import RunDir

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
    from advmem.engine.rundir import RunDir

    last = RunDir(run_path).read_metrics()[-1]
    out["memorized_frac"] = last.get("track_memorized_frac")
    return out


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
    from advmem.report.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = {"true": "#1f77b4", "random": "#d62728"}
    for ax, (method, label) in zip(axes, METHODS.items()):
        for labels, colour in colours.items():
            curve = results["runs"][f"{method}/{labels}"]["curve"]
            for kind, style, name in (("nat", "-", "natural"), ("rob", "--", "robust")):
                pts = [(p["epoch"], 100 * p[f"train_{kind}_acc"]) for p in curve if f"train_{kind}_acc" in p]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, color=colour, marker="o" if len(pts) < 30 else None, ms=3,
                            label=f"{LABELS[labels]}, {name}")
        ax.axhline(100 * results["chance"], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(f"{label}: training accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("train accuracy w.r.t. training labels (%)")
    save_figure(fig, path)


def plot_grad_norms(results: dict[str, Any], path: Path) -> None:
    from advmem.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 3.8))
    styles = {("pgd_at", "true"): ("#1f77b4", "-"), ("pgd_at", "random"): ("#1f77b4", "--"),
              ("trades", "true"): ("#ff7f0e", "-"), ("trades", "random"): ("#ff7f0e", "--")}
    for (method, labels), (colour, style) in styles.items():
        curve = results["runs"][f"{method}/{labels}"]["curve"]
        pts = [(p["epoch"], p["grad_norm_sq"]) for p in curve if p.get("grad_norm_sq")]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, color=colour, label=f"{METHODS[method]}, {LABELS[labels]}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared gradient norm per step")
    ax.set_title("Gradient norm of the training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -------------------------------------------------------------------------------------------------
# Markdown


def pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def settings_text(recipe) -> str:
    d, o, a, m = recipe.data, recipe.optim, recipe.attack, recipe.method
    size = f"{d.train_size} training images" if d.train_size else "all training images"
    if d.dataset == "synthetic":
        size = f"{d.synthetic.n_train} synthetic images"
    extra = f", TRADES beta {m.beta}" if hasattr(m, "beta") else ""
    sched = (f"lr {o.lr} x{o.schedule.gamma} after epochs {o.schedule.milestones}" if o.schedule.name == "multistep"
             else f"lr {o.lr} ({o.schedule.name})")
    tr = recipe.track.per_sample
    return (f"{d.dataset}, {size}, random labels = symmetric noise at rate {recipe.data.label_noise.rate} "
            f"(seed {d.label_noise.seed}); {recipe.model.name} {recipe.model.kwargs or ''}; {a.norm} eps {a.eps}, "
            f"{a.steps} steps of {a.step_size}{extra}; {o.epochs} epochs, {sched}, batch {o.batch_size}, "
            f"momentum {o.momentum}, weight decay {o.weight_decay}, augment {d.augment}; training accuracy "
            + (f"on {'all' if tr.subset == 'all' else tr.subset} training images every {tr.every} epoch(s) (eval attack: {recipe.eval.attack.steps} steps)"
               if tr else f"on {recipe.eval.train_subset} training images"))


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    chance = results["chance"]
    runs = results["runs"]
    lines = [
        f"## Random labels ({s['scale']} scale)",
        "",
        *smoke_note(s["scale"]),
        f"Command: `{s['command']}` (generated {s['date']}, {s['wall_min']:.1f} min wall time for what "
        "this invocation ran; runs already complete are not retrained).",
        "",
        f"Settings (random-label runs; the true-label runs are identical with the noise off): {s['settings']}.",
        "",
        f"Training accuracy is measured w.r.t. the labels trained on; chance is {pct(chance)}. Mean squared "
        f"gradient norm: average over the last {s['last_epochs']} epochs of the per-epoch mean of "
        "||grad||^2 per step.",
        "",
        "| run | train nat | train rob | test nat | test rob | mean sq. grad norm | fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        method, labels = key.split("/")
        lines.append(f"| {METHODS[method]}, {LABELS[labels]} | {pct(r['train_nat_acc'])} | {pct(r['train_rob_acc'])} | "
                     f"{pct(r['test_nat_acc'])} | {pct(r['test_rob_acc'])} | {sci(r['grad_norm_sq_last'])} | "
                     f"{verdict(r['train_nat_acc'], chance)} |")
    lines += ["", "What this shows:", ""]
    pr, tr = runs["pgd_at/random"], runs["trades/random"]
    pgd_v, trades_v = verdict(pr["train_nat_acc"], chance), verdict(tr["train_nat_acc"], chance)
    lines.append(f"- PGD-AT on random labels: {pgd_v} (natural train accuracy {pct(pr['train_nat_acc'])}, "
                 f"robust {pct(pr['train_rob_acc'])}). The paper: PGD-AT fails to converge (near chance). "
                 f"Reproduced: **{'yes' if pgd_v == 'near chance' else 'no'}**.")
    lines.append(f"- TRADES on random labels: {trades_v} (natural train accuracy {pct(tr['train_nat_acc'])}, "
                 f"robust {pct(tr['train_rob_acc'])}"
                 + (f"; {pct(tr['memorized_frac'])} of the samples whose label was changed are robustly fitted"
                    if tr.get("memorized_frac") is not None else "")
                 + "). The paper: TRADES memorizes random labels (close to 100% natural train accuracy). "
                 f"Reproduced: **{ {'memorized': 'yes', 'partly fitted': 'partly'}.get(trades_v, 'no') }**.")
    if pr["grad_norm_sq_last"] is not None and tr["grad_norm_sq_last"] is not None:
        lines.append(f"- Mean squared gradient norm in the last epochs on random labels: PGD-AT "
                     f"{sci(pr['grad_norm_sq_last'])}, TRADES {sci(tr['grad_norm_sq_last'])}.")
    probe = results.get("grad_stability_summary") or {}
    if probe:
        parts = []
        for key in ("pgd_at/random", "trades/random", "pgd_at/true", "trades/true"):
            name = Path(runs[key]["run"]).name
            if name in probe:
                p = probe[name]
                parts.append(f"{METHODS[key.split('/')[0]]} {LABELS[key.split('/')[1]]}: {p['regenerated']:.3g} "
                             f"(x_adv fixed: {p['fixed']:.3g})")
        if parts:
            alpha = next(iter(probe.values()))["alpha"]
            lines.append(f"- Gradient stability (relative gradient change at weight perturbation alpha = {alpha:.2g}, "
                         "x_adv re-solved at the perturbed weights): " + "; ".join(parts) + ". The paper: PGD-AT's "
                         "gradient is the unstable one (larger change).")
            pa, ta = probe.get(Path(pr["run"]).name), probe.get(Path(tr["run"]).name)
            if pa and ta:
                lines.append(f"  Reproduced: **{'yes' if pa['regenerated'] > ta['regenerated'] else 'no'}** "
                             f"(PGD-AT {pa['regenerated']:.3g} vs TRADES {ta['regenerated']:.3g}).")
    for note in results.get("notes", []):
        lines.append(f"- Note: {note}")
    if s["scale"] == "small":
        lines.append("- Where the findings hold at other eps and train-set sizes: the section written by "
                     "`advmem study random-labels-boundary` (below).")
    files = ["`training_curves.png` (the paper's Figure 1 shape)", "`grad_norm.png`"]
    files += ["`grad-stability/`"] if results.get("grad_stability_summary") is not None and probe else []
    files += ["`measures/`"] if results.get("measures") is not None else []
    lines += ["", "Files: " + ", ".join(files + ["`results.json`", "`runs/`"]) + "."]
    measures_md = results.get("measures_markdown")
    if measures_md:
        lines += ["", "Complexity measures:", "", measures_md.strip()]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------
# Analyses from the other half of the issue (imported lazily; optional in this checkout)


def run_probe(run_paths: list[Path], out_dir: Path, opts: dict[str, Any], device: str | None,
              notes: list[str]) -> dict[str, Any] | None:
    try:
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
        from advmem.analysis.measures import measure_runs
    except (ModuleNotFoundError, ImportError) as err:
        if isinstance(err, ModuleNotFoundError) and err.name not in ("advmem.analysis.measures", None):
            raise
        notes.append("complexity measures skipped: advmem.analysis.measures.measure_runs is not in this advmem")
        log(notes[-1])
        return None
    log("complexity measures")
    return measure_runs(run_paths, out_dir, **opts)


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--scale", choices=list(SCALES), default="small",
                        help="tiny: synthetic smoke test (seconds); small: Fashion-MNIST subset on a CPU "
                             "(about 45 min on 2 cores); paper: the paper's CIFAR-10 WRN-28-10 recipes (GPU)")
    parser.add_argument("--out", default=None, help="output folder (default studies/random-labels-SCALE)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="device for training and analyses (default: the recipes' 'auto')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value in all four recipes (repeatable), e.g. --set optim.epochs=50")
    parser.add_argument("--reproduction", default=None,
                        help="REPRODUCTION.md to update (default: at scale small or paper, the REPRODUCTION.md "
                             "of the advmem checkout holding the current directory; tiny never by default)")
    parser.add_argument("--no-reproduction", action="store_true", help="do not update REPRODUCTION.md")


def run(args) -> int:
    t0 = time.time()
    scale = args.scale
    cfg = SCALES[scale]
    recipes = build_recipes(scale, args.device, args.set)  # validates everything before writing
    repro_path, repro_why = reproduction_target(scale, explicit=args.reproduction, disabled=args.no_reproduction,
                                                default_scales=REPRODUCTION_SCALES)
    out = Path(args.out or f"studies/random-labels-{scale}")
    runs_dir = out / "runs"
    for recipe in recipes.values():  # refuse foreign run directories before training anything
        run_state(runs_dir / recipe.name, recipe)
    runs_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: ensure_trained(recipe, runs_dir, args.quiet) for key, recipe in recipes.items()}

    notes: list[str] = []
    order = [("pgd_at", "true"), ("pgd_at", "random"), ("trades", "true"), ("trades", "random")]
    run_paths = [paths[k] for k in order]
    probe = run_probe(run_paths, out / "grad-stability", cfg["probe"], args.device, notes)
    measures = run_measures(run_paths, out / "measures", cfg["measures"], notes)
    measures_md = None
    if measures is not None:
        md_files = sorted((out / "measures").glob("*.md"))
        measures_md = md_files[0].read_text() if md_files else None

    import json

    example = recipes[("pgd_at", "random")]
    info = json.loads((paths[("pgd_at", "random")] / "data.json").read_text())
    num_classes = int(info["num_classes"])
    extra = " ".join(f"--set {s}" for s in args.set)
    command = f"advmem study random-labels --scale {scale}" + (f" {extra}" if extra else "")
    results: dict[str, Any] = {
        "study": SECTION,
        "chance": 1.0 / num_classes,
        "settings": {"scale": scale, "command": command, "date": time.strftime("%Y-%m-%d"),
                     "wall_min": (time.time() - t0) / 60, "last_epochs": cfg["last_epochs"],
                     "settings": settings_text(example), "overrides": list(args.set)},
        "runs": {f"{m}/{l}": run_numbers(paths[(m, l)], cfg["last_epochs"]) for m, l in order},
        "grad_stability_summary": probe_summary(probe),
        "measures": measures,
        "measures_markdown": measures_md,
        "notes": notes,
    }
    plot_training_curves(results, out / "training_curves.png")
    plot_grad_norms(results, out / "grad_norm.png")
    atomic_write_json(out / "results.json", results)
    text = markdown(results)
    atomic_write_text(out / "README.md", text)
    if repro_path is not None:
        log(f"updated {update_reproduction(f'{SECTION}-{scale}', text, repro_path)}")
    else:
        log(repro_why)
    print(text)
    log(f"done in {(time.time() - t0) / 60:.1f} min; results in {out}")
    return 0
