"""Plots readable in print: labelled axes with units, integer epoch ticks, legends; one colour per split
(one run) or per run (comparisons), the best epoch and the lr decays marked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from advmem.io import atomic_write_bytes  # noqa: E402

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def save_figure(fig, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_run_curves(run) -> None:
    """A run directory's curves.png, from its metrics.jsonl (`run`: an `engine.rundir.RunDir`)."""
    plot_learning_curves(run.read_metrics(), run.curves_path, title=run.path.name)


def best_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The epoch the trainer keeps as `best` (engine.checkpoint.improved_best, on val, or test when
    the run has no val split)."""
    # torch: `advmem report` draws without it; only the best rule comes from the engine
    from advmem.engine.checkpoint import improved_best

    split = "val" if any(r.get("val_rob_acc") is not None for r in rows) else "test"
    best = None
    for row in rows:
        best = improved_best(best, row, epoch=row["epoch"], split=split) or best
    return None if best is None else best["epoch"]


def lr_decays(rows: list[dict[str, Any]]) -> list[int]:
    """Epochs m after which a step schedule lowered the learning rate (its milestones), read from the
    `lr` column: a drop next to a plateau, or by the same factor as another drop (consecutive
    milestones). A smooth schedule (cosine) neither plateaus nor repeats a factor, so it has none."""
    lr = {r["epoch"]: r["lr"] for r in rows if isinstance(r.get("lr"), (int, float)) and r["lr"] > 0}
    drops = {m: lr[m + 1] / lr[m] for m in sorted(lr) if m + 1 in lr and lr[m + 1] < lr[m]}

    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))

    return [m for m, f in drops.items()
            if lr.get(m - 1) == lr[m] or lr.get(m + 2) == lr[m + 1] or any(same(f, g) for k, g in drops.items() if k != m)]


def _mark_schedule(ax, decays: list[int], best: int | None, legend: bool) -> None:
    """Dotted grey lines between the epochs around each lr decay; a dash-dot line at the best epoch."""
    for i, m in enumerate(decays):
        ax.axvline(m + 0.5, color="grey", lw=0.9, ls=":", label="lr decay" if legend and i == 0 else None)
    if best is not None:
        ax.axvline(best, color="black", lw=0.9, ls="-.", label=f"best (epoch {best})" if legend else None)


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_learning_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "",
                         best: int | None = None, decays: list[int] | None = None) -> None:
    """Natural and robust accuracy against epoch for train/val/test (the robust-overfitting figure),
    with the best epoch and the lr decays marked (derived from `rows` unless given)."""
    best = best_epoch(rows) if best is None else best
    decays = lr_decays(rows) if decays is None else decays
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind, label in ((axes[0], "nat", "natural"), (axes[1], "rob", "robust (PGD)")):
        for split, colour in SPLIT_COLOURS.items():
            pts = [(r["epoch"], 100 * r[f"{split}_{kind}_acc"]) for r in rows if r.get(f"{split}_{kind}_acc") is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, color=colour, label=split)
        _mark_schedule(ax, decays, best, legend=True)
        ax.set_title(f"{label} accuracy")
        _epoch_axis(ax)
        if ax.get_legend_handles_labels()[0]:  # nothing to name before the first evaluated epoch
            ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


# One colour per run (Okabe-Ito, distinguishable in colour-blind vision, then tab10), the same in
# every figure of a report; line style tells the split apart.
RUN_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
               "#8c564b", "#7f7f7f", "#9467bd", "#17becf"]
SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def run_colour(i: int) -> str:
    return RUN_COLOURS[i % len(RUN_COLOURS)]


def figure_png(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def compare_learning_curves(runs: list[tuple[str, str, list[dict[str, Any]]]],
                            best: list[int | None] | None = None, colours: list[str] | None = None) -> bytes:
    """Natural and robust accuracy (%) per epoch for several runs: colour = run (`colours`, else
    `run_colour` of its position), line style = split; a star on each run's robust curve at its best epoch (`best`, one per
    run, e.g. from summary.json; None: derived from the rows) and the runs' lr decays as dotted lines."""
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    handles = []
    for i, (name, method, rows) in enumerate(runs):
        colour = colours[i] if colours else run_colour(i)
        epoch = (best[i] if best else None) or best_epoch(rows)
        for ax, kind in ((axes[0], "nat"), (axes[1], "rob")):
            for split, style in SPLIT_STYLES.items():
                pts = [(r["epoch"], 100 * r[f"{split}_{kind}_acc"]) for r in rows
                       if r.get(f"{split}_{kind}_acc") is not None]
                if pts:
                    ax.plot(*zip(*pts), linestyle=style, color=colour)
        sel = "val" if any(r.get("val_rob_acc") is not None for r in rows) else "test"
        at = [100 * r[f"{sel}_rob_acc"] for r in rows if r["epoch"] == epoch and r.get(f"{sel}_rob_acc") is not None]
        if at:
            axes[1].plot([epoch], at[:1], marker="*", ms=11, color=colour, markeredgecolor="black", ls="none")
        handles.append(Line2D([], [], color=colour, lw=2, label=f"{name} ({method})"))
    shared = sorted({m for _, _, rows in runs for m in lr_decays(rows)})  # any run's (an unfinished one lacks its late ones)
    for ax, title in ((axes[0], "natural accuracy"), (axes[1], "robust accuracy (PGD, training eval)")):
        _mark_schedule(ax, shared, None, legend=False)
        ax.set_title(title)
        _epoch_axis(ax)
    axes[0].set_ylabel("accuracy (%)")
    handles += [Line2D([], [], color="grey", ls=style, label=split) for split, style in SPLIT_STYLES.items()]
    handles.append(Line2D([], [], marker="*", ms=10, color="grey", markeredgecolor="black", ls="none",
                          label="best epoch"))
    if shared:
        handles.append(Line2D([], [], color="grey", ls=":", lw=0.9, label="lr decay"))
    axes[1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure_png(fig)


def bar_chart(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str,
              colours: list[str] | None = None) -> bytes:
    """Grouped bars (e.g. clean / robust accuracy per checkpoint); the legend sits above the axes, so
    it never covers a bar, and labels are drawn whole (rotated, never wrapped)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 3), 4.2))
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(labels))
    hatches = ["", "//", "..", "xx"]
    for i, (name, values) in enumerate(series.items()):
        ax.bar(xs + i * width - 0.4 + width / 2, values, width, label=name, hatch=hatches[i % len(hatches)],
               color=colours if colours else None, edgecolor="black", alpha=0.85 if i == 0 else 0.55)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=28)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False)
    return figure_png(fig)


def line_plot(x: list[float], ys: dict[str, list[float]], xlabel: str, ylabel: str, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, y in ys.items():
        ax.plot(x[:len(y)], y, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)
