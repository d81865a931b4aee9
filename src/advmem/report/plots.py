"""Plots readable in print: labelled axes with units, legends, one colour per split."""

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


def plot_learning_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Natural and robust accuracy against epoch for train/val/test (the robust-overfitting figure)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind, label in ((axes[0], "nat", "natural"), (axes[1], "rob", "robust (PGD)")):
        for split, colour in SPLIT_COLOURS.items():
            pts = [(r["epoch"], 100 * r[f"{split}_{kind}_acc"]) for r in rows if r.get(f"{split}_{kind}_acc") is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, color=colour, label=split)
        ax.set_title(f"{label} accuracy")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("accuracy (%)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


# A fixed colour per training method, so the same method has the same colour in every figure
# of every report (Okabe-Ito palette: distinguishable in colour-blind vision and in greyscale print
# together with the line styles below).
METHOD_COLOURS = {
    "standard": "#000000",
    "pgd_at": "#0072B2",
    "trades": "#D55E00",
    "mart": "#009E73",
    "awp": "#CC79A7",
    "te": "#E69F00",
    "mem_te": "#E69F00",
    "fgsm_rs": "#56B4E9",
}
EXTRA_COLOURS = ["#F0E442", "#7f7f7f", "#8c564b", "#9467bd", "#17becf"]
SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def method_colour(method: str) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return EXTRA_COLOURS[sum(map(ord, method)) % len(EXTRA_COLOURS)]


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def compare_learning_curves(runs: list[tuple[str, str, list[dict[str, Any]]]]) -> bytes:
    """Natural and robust accuracy (%) per epoch for several runs: colour = method, line style = split,
    marker = run (when two runs share a method)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    seen: dict[str, int] = {}
    for name, method, rows in runs:
        k = seen.get(method, 0)
        seen[method] = k + 1
        for ax, kind in ((axes[0], "nat"), (axes[1], "rob")):
            for split, style in SPLIT_STYLES.items():
                pts = [(r["epoch"], 100 * r[f"{split}_{kind}_acc"]) for r in rows
                       if r.get(f"{split}_{kind}_acc") is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, linestyle=style, color=method_colour(method), marker=markers[k % len(markers)],
                            ms=3, markevery=max(1, len(xs) // 10), label=f"{name} ({method}) {split}")
    from matplotlib.ticker import MaxNLocator

    for ax, title in ((axes[0], "natural accuracy"), (axes[1], "robust accuracy (PGD, training eval)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure_png(fig)


def bar_chart(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str,
              colours: list[str] | None = None) -> bytes:
    """Grouped bars (e.g. clean / robust accuracy per checkpoint)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels) + 2), 3.8))
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(labels))
    hatches = ["", "//", "..", "xx"]
    for i, (name, values) in enumerate(series.items()):
        ax.bar(xs + i * width - 0.4 + width / 2, values, width, label=name, hatch=hatches[i % len(hatches)],
               color=colours if colours else None, edgecolor="black", alpha=0.85 if i == 0 else 0.55)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
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
