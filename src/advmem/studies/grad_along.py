"""F2 along training, for the random-labels study: the same-weights probe at several epochs of
every run, and the training-time gradient-consistency signal.

The study's runs keep only their init, best and last weights. The weights at the early epochs
come from a *replay*: the same recipe and seed (so the same initialization, data order and attack
noise) trained only up to the last probed epoch, at the same learning rate in every epoch (checked
with `lr_at`), with no per-epoch evaluation or per-sample tracking (neither draws from the
training's random streams: tests/test_study_grad_along.py checks a replay's weights bitwise
against a full run's epoch checkpoints), keeping `checkpoints/epoch-N` and logging
`track.grad_consistency` every epoch. So the probes cost a fraction of a run, and the study's
runs stay exactly as they were trained.

At every probed checkpoint, `analysis.same_weights` takes the gradient of BOTH losses (PGD-AT and
TRADES, inner maximization re-solved, and held fixed as the control) at the same weights, batch
and directions; the number compared is the relative gradient change at the smallest alpha (a
smooth loss gives a change that vanishes with alpha; the proposition's term does not), with the
log-log slope over the smallest alphas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from advmem.analysis.stats import paired_difference
from advmem.errors import UserError
from advmem.io import atomic_write_json
from advmem.analysis.same_weights import probe_checkpoint
from advmem.engine.rundir import RunDir

# Epochs whose weights the replays keep (init and the study run's last checkpoint are added).
ALONG_EPOCHS = {"tiny": (1,), "small": (1, 5, 20), "paper": (1, 5, 20)}
PROBES = {
    "tiny": {"directions": 1, "batch_size": 8, "alphas": [1e-2, 1e-6]},  # a smoke test of the plumbing
    # 4 alphas and 64 samples keep 60 probes (4 run kinds x 3 seeds x 5 checkpoints) near 25 CPU-minutes
    "small": {"directions": 5, "batch_size": 64, "alphas": [1e-2, 1e-4, 1e-5, 1e-6]},
    "paper": {"directions": 5, "batch_size": 128, "alphas": [1e-2, 1e-4, 1e-5, 1e-6]},
}
LOSS_LABELS = {"pgd_at": "PGD-AT loss", "trades": "TRADES loss"}


def replay_sets(recipe, epochs: tuple[int, ...], batch_size: int) -> list[str]:
    """--set overrides that turn a study run's recipe into its replay up to max(epochs).

    Refused when the recipe's learning rate changes before that epoch (the replay trains at a
    constant rate, so it would leave the run's trajectory)."""
    # pydantic: only when a study runs (the CLI's parser imports this module)
    from advmem.engine.schedules import lr_at

    upto = max(epochs)
    if upto > recipe.optim.epochs:
        raise UserError(f"the along-training probe keeps epoch {upto}, after the run's last epoch "
                        f"{recipe.optim.epochs}; train longer or use a smaller scale")
    changed = [e for e in range(1, upto + 1) if lr_at(recipe.optim, e) != recipe.optim.lr]
    if changed:
        raise UserError(f"the along-training replay needs a constant learning rate up to epoch {upto}, "
                        f"but {recipe.name}'s schedule changes it at epoch {changed[0]}")
    keep = ", ".join(str(e) for e in sorted(set(epochs)))
    return [f"optim.epochs={upto}", "optim.schedule={name: constant}", f"eval.every={upto}",
            "eval.final_full=false", "track.per_sample=null",
            f"track.grad_consistency={{every: 1, batch_size: {batch_size}}}",
            f"log.checkpoint_epochs=[{keep}]"]


def probe_plan(run_path: Path, replay_path: Path, epochs: tuple[int, ...]) -> list[tuple[Path, str]]:
    """(run directory, checkpoint) in epoch order: init, the replay's epochs, the run's last."""
    return ([(replay_path, "init")] + [(replay_path, f"epoch-{e}") for e in sorted(set(epochs))]
            + [(run_path, "last")])


def _probe_one(job: tuple[str, str, dict[str, Any], str | None]) -> dict[str, Any]:
    """One checkpoint (a worker process: one thread, so parallel probes do not oversubscribe)."""
    import torch

    torch.set_num_threads(1)
    run_dir, checkpoint, opts, device = job
    result = probe_checkpoint(run_dir, checkpoint, alphas=opts["alphas"], directions=opts["directions"],
                              batch_size=opts["batch_size"], seed=0, fit_points=3, dtype="float64", device=device)
    return summarize(result)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers the study reports from one same-weights probe (the full curves stay in the cache)."""
    out = {"run": result["run"], "checkpoint": result["checkpoint"], "epoch": result["checkpoint_epoch"],
           "alphas": result["alphas"], "losses": {}}
    small = result["alphas"].index(min(result["alphas"]))
    for name, loss in result["losses"].items():
        out["losses"][name] = {
            "grad_norm": loss["grad_norm"],
            "rel_small": loss["regenerated"]["relative"]["mean"][small],
            "rel_small_fixed": loss["fixed"]["relative"]["mean"][small],
            "slope": loss["regenerated"]["slope"], "slope_fixed": loss["fixed"]["slope"],
            "relative": loss["regenerated"]["relative"]["mean"], "relative_fixed": loss["fixed"]["relative"]["mean"],
        }
    return out


def run_probes(plan: list[tuple[Path, str]], cache_dir: Path, opts: dict[str, Any], device: str | None,
               parallel: int, log) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (run, checkpoint) of `plan`, `parallel` at a time; each result is cached as JSON
    (cache_dir/RUN--CHECKPOINT.json, with the probe settings), so an interrupted study resumes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    todo = []
    for run_dir, ckpt in plan:
        path = cache_dir / f"{run_dir.parent.name}--{run_dir.name}--{ckpt}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("opts") == opts:
                results[(str(run_dir), ckpt)] = cached["summary"]
                continue
        todo.append((run_dir, ckpt, path))
    if todo:
        log(f"same-weights probe along training: {len(todo)} checkpoints ({len(results)} cached), "
            f"{parallel} at a time")
    jobs = [(str(r), c, opts, device) for r, c, _ in todo]

    def keep(item, summary):
        run_dir, ckpt, path = item
        atomic_write_json(path, {"opts": opts, "summary": summary})
        results[(str(run_dir), ckpt)] = summary
        log(f"  probed {run_dir.name} at {ckpt} ({len(results)}/{len(plan)})")

    if parallel > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            for item, summary in zip(todo, pool.map(_probe_one, jobs)):
                keep(item, summary)
    else:
        for item, job in zip(todo, jobs):
            keep(item, _probe_one(job))
    return results


def consistency_curve(replay_path: Path) -> list[dict[str, float]]:
    """Per epoch of a replay: the gradient-consistency numbers it logged."""
    keys = ("grad_cos_step", "grad_cos_step_fixed", "grad_rel_step")
    return [{"epoch": row["epoch"], **{k: row[k] for k in keys if k in row}}
            for row in RunDir(replay_path).read_metrics() if "grad_cos_step" in row]


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd, len(vals)


def pm(values: list[float | None], fmt: str = ".3g") -> str:
    mean, sd, n = mean_sd(values)
    if mean is None:
        return "—"
    return f"{mean:{fmt}} ± {sd:.2g}" if n > 1 else f"{mean:{fmt}}"


def along_results(keys: list[tuple[str, str]], seeds: list[int], plans: dict[tuple[str, str, int], list],
                  probes: dict[tuple[str, str], dict[str, Any]], replays: dict[tuple[str, str, int], Path],
                  epochs: tuple[int, ...]) -> dict[str, Any]:
    """Per run kind (method/labels) and checkpoint position: per loss, the per-seed numbers."""
    out: dict[str, Any] = {"epochs": ["init", *[f"epoch-{e}" for e in sorted(set(epochs))], "last"], "runs": {}}
    for method, labels in keys:
        rows = []
        for i, name in enumerate(out["epochs"]):
            row: dict[str, Any] = {"checkpoint": name, "epoch": [], "losses": {}}
            for seed in seeds:
                run_dir, ckpt = plans[(method, labels, seed)][i]
                summary = probes[(str(run_dir), ckpt)]
                row["epoch"].append(summary["epoch"])
                for loss, numbers in summary["losses"].items():
                    entry = row["losses"].setdefault(loss, {k: [] for k in ("rel_small", "rel_small_fixed", "slope",
                                                                            "slope_fixed", "grad_norm")})
                    for k in entry:
                        entry[k].append(numbers[k])
            rows.append(row)
        curves = [consistency_curve(replays[(method, labels, seed)]) for seed in seeds]
        out["runs"][f"{method}/{labels}"] = {"checkpoints": rows, "consistency": curves}
    return out


def _less_stable(row: dict[str, Any]) -> tuple[int, int]:
    """Seeds at which the PGD-AT loss's relative change (re-solved, smallest alpha) exceeds TRADES'."""
    p, t = row["losses"]["pgd_at"]["rel_small"], row["losses"]["trades"]["rel_small"]
    pairs = [(a, b) for a, b in zip(p, t) if a is not None and b is not None]
    return sum(a > b for a, b in pairs), len(pairs)


def markdown_lines(along: dict[str, Any], method_names: dict[str, str], label_names: dict[str, str],
                   opts: dict[str, Any]) -> list[str]:
    n = len(next(iter(along["runs"].values()))["checkpoints"][0]["epoch"])
    alpha, batch = min(opts["alphas"]), opts["batch_size"]
    lines = [
        "", "Gradient instability (the paper's second finding), same weights and both losses, along training:", "",
        f"At each checkpoint of each run, the gradient of the PGD-AT loss and of the TRADES loss at the same "
        f"weights, on the same {batch}-sample training batch and the same filter-normalized directions; the number is "
        f"||g(θ+αd) − g(θ)|| / ||g(θ)|| at α = {alpha:g} with the inner maximization re-solved at θ+αd (the "
        "adversarial examples held fixed, in brackets, are the smooth control), and the log-log slope over the "
        "three smallest α (1: smooth; about 0: a change that does not vanish, the proposition's term). "
        f"Mean ± std over {n} seeds. Early checkpoints come from replays of each run (same seed, same learning "
        "rate) up to the last early epoch.", "",
        "| run | checkpoint | PGD-AT loss: rel. change | slope | TRADES loss: rel. change | slope | "
        "PGD-AT loss less stable |",
        "|---|---|---|---|---|---|---|",
    ]
    holds, total = 0, 0
    for key, entry in along["runs"].items():
        method, labels = key.split("/")
        for row in entry["checkpoints"]:
            p, t = row["losses"]["pgd_at"], row["losses"]["trades"]
            k, m = _less_stable(row)
            holds, total = holds + k, total + m
            epoch = f"last (epoch {pm(row['epoch'], '.0f')})" if row["checkpoint"] == "last" else row["checkpoint"]
            lines.append(f"| {method_names[method]}, {label_names[labels]} | {epoch} | {pm(p['rel_small'])} "
                         f"({pm(p['rel_small_fixed'])}) | {pm(p['slope'], '.2f')} | {pm(t['rel_small'])} "
                         f"({pm(t['rel_small_fixed'])}) | {pm(t['slope'], '.2f')} | {k} of {m} seeds |")
    lines += ["", f"- Verdict (same weights): the PGD-AT loss's gradient changes more than TRADES' at the same "
              f"weights in **{holds} of {total}** (run, checkpoint, seed) cases; the table shows where it does not."]
    lines += consistency_lines(along, method_names, label_names, batch)
    return lines


def consistency_lines(along: dict[str, Any], method_names: dict[str, str], label_names: dict[str, str],
                      batch: int) -> list[str]:
    lines = ["", f"Training-time signal (`track.grad_consistency`, logged every epoch of the replays): the cosine "
             f"between the gradient of one fixed {batch}-sample batch before and after one real optimizer step, x_adv "
             "re-solved (held fixed in brackets); 1 means the step's gradient still points the same way. Chosen "
             "because it measures the proposition directly: a real step of the real loss on fixed data, with the "
             "inner maximizer's part separated by the control. Mean over the replay's epochs, then ± std over "
             "seeds.", "",
             "| run | cos, x_adv re-solved | cos, x_adv fixed | relative change |", "|---|---|---|---|"]
    per_run: dict[str, list[float | None]] = {}
    for key, entry in along["runs"].items():
        method, labels = key.split("/")
        per_seed = {k: [] for k in ("grad_cos_step", "grad_cos_step_fixed", "grad_rel_step")}
        for curve in entry["consistency"]:
            for k in per_seed:
                vals = [p[k] for p in curve if p.get(k) is not None]
                per_seed[k].append(sum(vals) / len(vals) if vals else None)
        per_run[key] = per_seed["grad_cos_step"]
        lines.append(f"| {method_names[method]}, {label_names[labels]} | {pm(per_seed['grad_cos_step'])} | "
                     f"{pm(per_seed['grad_cos_step_fixed'])} | {pm(per_seed['grad_rel_step'])} |")
    lines.append("")
    for labels in ("random", "true"):
        p, t = per_run.get(f"pgd_at/{labels}"), per_run.get(f"trades/{labels}")
        if p is None or t is None:
            continue
        d = paired_difference(dict(enumerate(p)), dict(enumerate(t)))  # the same seed: same init, labels, order
        if d["lo"] is None:
            lines.append(f"- Verdict (training-time signal, {label_names[labels]}): {d['verdict']}.")
            continue
        lower = d["distinguishable"] and d["mean"] < 0
        lines.append(f"- Verdict (training-time signal, {label_names[labels]}): PGD-AT − TRADES mean cosine "
                     f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] (paired over {d['n']} seeds, 95% t "
                     f"interval), {d['verdict']}: PGD-AT's gradient is "
                     + ("**less** consistent from one step to the next than TRADES'." if lower else
                        "**not** shown to be less consistent from one step to the next than TRADES'."))
    return lines


def plot_along(along: dict[str, Any], path: Path, method_names: dict[str, str], label_names: dict[str, str]) -> None:
    """Left: relative gradient change (re-solved, smallest alpha) per checkpoint, both losses, every run
    kind (mean ± std over seeds); right: the step cosine per epoch of the replays."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import plt, save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = along["epochs"]
    colours = {"pgd_at/random": "#d62728", "trades/random": "#ff7f0e", "pgd_at/true": "#1f77b4", "trades/true": "#2ca02c"}
    for key, entry in along["runs"].items():
        method, labels = key.split("/")
        for loss, style in (("pgd_at", "-"), ("trades", "--")):
            stats = [mean_sd(row["losses"][loss]["rel_small"]) for row in entry["checkpoints"]]
            xs = [i for i, s in enumerate(stats) if s[0] is not None]
            ys = [stats[i][0] for i in xs]
            sd = [stats[i][1] for i in xs]
            ax.errorbar(xs, ys, yerr=sd, fmt=style, marker="o", ms=3, capsize=2, color=colours[key],
                        label=f"{LOSS_LABELS[loss]} at {method_names[method]}'s weights ({label_names[labels]})")
        epochs = sorted({p["epoch"] for c in entry["consistency"] for p in c})
        by_epoch = [mean_sd([p.get("grad_cos_step") for c in entry["consistency"] for p in c if p["epoch"] == e])
                    for e in epochs]
        if epochs:
            bx.plot(epochs, [m for m, _, _ in by_epoch], color=colours[key],
                    label=f"{method_names[method]}, {label_names[labels]}")
            bx.fill_between(epochs, [m - s for m, s, _ in by_epoch], [m + s for m, s, _ in by_epoch],
                            color=colours[key], alpha=0.15, lw=0)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("relative gradient change at the smallest α")
    ax.set_title("Same weights, both losses (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    bx.set_xlabel("epoch")
    bx.set_ylabel("cos(g(θ), g(θ − lr g)), x_adv re-solved")
    bx.set_title("Training-time signal (replays; mean ± std over seeds)", fontsize=9)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    save_figure(fig, path)
