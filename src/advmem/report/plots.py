"""Plots readable in print: labelled axes with units, legends, one colour per split."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from advmem.engine.io import atomic_write_bytes  # noqa: E402

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def save_figure(fig, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


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
