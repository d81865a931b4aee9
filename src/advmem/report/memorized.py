"""The memorized-samples figures of a run with per-sample tracking: image grids and counts.

The selections and their definitions are `advmem.track.memorized`'s (next to the tracker whose
table they read); this module fetches the images and draws: one thumbnail grid each for (a) the
samples robustly fitted only after the first lr decay, (b) the samples robustly fitted to a
corrupted label, (c) the hardest samples, and a line plot of the robust-correct samples per tracked
epoch with a clean vs a changed label. Each tile is captioned with the sample's position, the label
it was trained on ("given"), its true label, the epoch it was memorized and, for TE runs, the
TE target's top class and probability; a tile whose label was changed is captioned in red.

The images are the training set as the run used it, rebuilt from the recipe's `data:` section
with the data builders (never downloading) with label noise off, so one rebuild serves every seed
of a study; the rebuilt clean labels must equal the table's `true_label`, else the images are
refused (the data on disk is not the run's).

`memorized_figures(run_dir, out_dir)` writes the PNGs and `memorized.json` (for the studies);
`report_entries(runs)` draws them in memory for `advmem report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advmem.errors import UserError
from advmem.track.memorized import DEFINITIONS, MemorizedSamples, read_memorized
from advmem.io import atomic_write_bytes, atomic_write_text

FIGURES = {"after_decay": "memorized_after_decay.png", "corrupted_fit": "memorized_corrupted.png",
           "hardest": "memorized_hardest.png", "counts": "memorized_counts.png"}
SUMMARY_FILE = "memorized.json"
TITLES = {"after_decay": "(a) robustly fitted only after the first lr decay",
          "corrupted_fit": "(b) robustly fitted to a corrupted label",
          "hardest": "(c) hardest: largest mean robust loss before the first lr decay"}
TILES = 16
COLUMNS = 8
DPI = 90  # thumbnails: a 16-tile grid of 28x28 images is about 20 KB


class TrainImages:
    """The training images of runs, rebuilt once per data setting (label noise aside)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[np.ndarray, np.ndarray] | UserError] = {}

    def get(self, recipe) -> tuple[np.ndarray, np.ndarray]:
        """(images N x H x W x C uint8, clean labels N) of the training set as used; UserError when
        the data cannot be read here."""
        # torch and pydantic: only when training images are read (the CLI's parser imports this via report/html)
        from advmem.data.config import LabelNoiseConfig
        from advmem.data.dataset import build_data

        cfg = recipe.data.model_copy(update={"download": False, "label_noise": LabelNoiseConfig()})
        key = cfg.model_dump_json()
        if key not in self.cache:
            if len(self.cache) >= 2:  # a CIFAR training set is 150 MB: keep few
                self.cache.pop(next(iter(self.cache)))
            try:
                train = build_data(cfg, "cpu").train
                order = np.argsort(train.index.numpy())
                self.cache[key] = (train.x.numpy()[order].transpose(0, 2, 3, 1), train.y.numpy()[order])
            except UserError as err:
                self.cache[key] = err
        found = self.cache[key]
        if isinstance(found, UserError):
            raise found
        return found


def small_png(png: bytes, colours: int = 128) -> bytes:
    """A palette PNG (about a third of matplotlib's RGBA file): thumbnails stay legible and the
    report stays small (a study's report embeds four figures per run)."""
    import io

    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT) \
        .save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def tile_captions(sel: MemorizedSamples, index: np.ndarray) -> list[dict[str, Any]]:
    """What each tile of samples `index` says (also written to memorized.json)."""
    rows = sel.row(index)
    out = []
    for i, r in zip(index.tolist(), rows.tolist()):
        tile = {"index": i, "given": int(sel.label[r]), "true": int(sel.true_label[r]),
                "memorized_epoch": int(sel.memorized_epoch[r]) or None}
        if sel.te_label is not None and i < len(sel.te_label):
            tile["te_label"] = int(sel.te_label[i]) if sel.te_label[i] >= 0 else None
            tile["te_conf"] = None if tile["te_label"] is None else round(float(sel.te_conf[i]), 4)
        out.append(tile)
    return out


def caption_text(tile: dict[str, Any]) -> str:
    mem = f"mem {tile['memorized_epoch']}" if tile["memorized_epoch"] else "not fit"
    lines = [f"#{tile['index']} given {tile['given']}", f"true {tile['true']}, {mem}"]
    if "te_label" in tile:
        lines.append("TE -" if tile["te_label"] is None else f"TE {tile['te_label']} ({tile['te_conf']:.2f})")
    return "\n".join(lines)


def grid_png(images: np.ndarray, tiles: list[dict[str, Any]], title: str, columns: int = COLUMNS) -> bytes:
    """Thumbnails (N x H x W x C uint8) with their captions; changed labels in red."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import figure_png, plt

    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    lines = caption_text(tiles[0]).count("\n") + 1
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.05 * cols, 3.2), (1.0 + 0.15 * lines) * rows + 0.45),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, tile in zip(axes.flat, images, tiles):
        rgb = image.shape[-1] == 3
        ax.imshow(image if rgb else image[..., 0], cmap=None if rgb else "gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(caption_text(tile), fontsize=7, pad=2, linespacing=1.05,
                     color="#c00000" if tile["given"] != tile["true"] else "black")
    fig.suptitle(title, fontsize=8)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, hspace=0.02, wspace=0.02)
    return small_png(figure_png(fig, dpi=DPI))


def counts_png(counts: dict[str, Any], decays: list[int], title: str) -> bytes:
    """Robust-correct samples per tracked epoch, clean vs changed labels, the lr decays dotted."""
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import _epoch_axis, _mark_schedule, figure_png, plt

    fig, ax = plt.subplots(figsize=(4.8, 2.7))
    ax.plot(counts["epoch"], counts["clean"], marker="o", ms=2.5, color="#0072B2",
            label=f"clean label (n={counts['n_clean']})")
    if counts["n_corrupted"]:
        ax.plot(counts["epoch"], counts["corrupted"], marker="s", ms=2.5, color="#D55E00",
                label=f"changed label (n={counts['n_corrupted']})")
    _mark_schedule(ax, decays, None, legend=True)
    _epoch_axis(ax)
    ax.set_ylabel("robust-correct samples", fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return small_png(figure_png(fig, dpi=DPI + 10))


@dataclass
class MemorizedFigures:
    """One run's figures (PNG bytes by FIGURES key; a selection with no sample has none) and summary."""

    run: str
    pngs: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def draw_memorized(run_dir: str | Path, tiles: int = TILES, images: TrainImages | None = None) -> MemorizedFigures:
    """Select and draw; UserError when the run has no per-sample table. Missing images (the data
    is not on this machine) leave the grids out with a note; the counts are drawn anyway."""
    # pydantic: only when a figure is drawn (the CLI's parser imports this module via report/html)
    from advmem.engine.schedules import decay_epochs

    run_dir = Path(run_dir)
    sel, recipe = read_memorized(run_dir, k_hardest=tiles)
    out = MemorizedFigures(run=run_dir.name, notes=list(sel.notes))
    counts = sel.counts()
    selections = {"after_decay": sel.after_decay, "corrupted_fit": sel.corrupted_fit, "hardest": sel.hardest}
    out.summary = {
        "run": run_dir.name, "definitions": DEFINITIONS, "first_decay_epoch": sel.decay,
        "tracked_epochs": sel.epochs.tolist(), "hardness_epochs": sel.hardness_epochs.tolist(),
        "n_tracked": len(sel.index), "counts": counts, "te_targets": sel.te_label is not None,
        "selections": {k: None if v is None else {"n": len(v), "index": v.tolist()} for k, v in selections.items()},
        "tiles": {},
    }
    out.summary["selections"]["hardest"]["score"] = [round(float(s), 6) if np.isfinite(s) else None
                                                     for s in sel.hardness[sel.row(sel.hardest)]]
    try:
        train_x, train_y = (images or TrainImages()).get(recipe)
        if len(train_y) <= sel.index.max() or not np.array_equal(train_y[sel.index], sel.true_label):
            raise UserError("the training set rebuilt from the recipe does not match the run's true labels "
                            "(different data on this machine)")
    except UserError as err:
        train_x = None
        out.notes.append(f"images unavailable, grids left out: {err}")
    for key, chosen in selections.items():
        if chosen is None:
            continue
        if not len(chosen):
            out.notes.append(f"{TITLES[key]}: none of the {len(sel.index)} tracked samples")
            continue
        shown = chosen[:tiles]
        captions = tile_captions(sel, shown)
        out.summary["tiles"][key] = captions
        if train_x is not None:
            more = f", the {tiles} hardest shown" if len(chosen) > tiles else ""
            title = f"{run_dir.name}: {TITLES[key]}\n{len(chosen)} of {len(sel.index)} tracked samples{more}"
            out.pngs[key] = grid_png(train_x[shown], captions, title)
    out.pngs["counts"] = counts_png(counts, decay_epochs(recipe.optim), f"{run_dir.name}: robust-correct per epoch")
    out.summary["notes"] = out.notes
    return out


def memorized_figures(run_dir: str | Path, out_dir: str | Path, tiles: int = TILES) -> dict[str, Any]:
    """Write a run's memorized-samples PNGs and memorized.json into `out_dir`.

    Returns {"figures": {key: path}, "json": path, "counts": per-epoch counts, "selected": {key:
    number of samples, None when undefined}, "notes": [...]}. UserError when the run has no
    per-sample tracking."""
    figs = draw_memorized(run_dir, tiles)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in FIGURES.items():
        if key in figs.pngs:
            paths[key] = str(out / name)
            atomic_write_bytes(out / name, figs.pngs[key])
        else:  # an earlier call's grid of a selection that is empty now
            (out / name).unlink(missing_ok=True)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(figs.summary, indent=1) + "\n")
    selected = {k: None if v is None else v["n"] for k, v in figs.summary["selections"].items()}
    return {"figures": paths, "json": str(out / SUMMARY_FILE), "counts": figs.summary["counts"],
            "selected": selected, "notes": figs.notes}


def report_entries(runs) -> tuple[list[MemorizedFigures], list[str]]:
    """The figures of every trained run (report.tables.RunInfo) with a per-sample table, and the
    names of the runs without one."""
    # torch and pyarrow: only when per-sample tracking is read
    from advmem.track.per_sample import PER_SAMPLE_FILE

    images = TrainImages()
    entries, untracked = [], []
    for r in runs:
        if not r.is_run:
            continue
        if not (r.path / PER_SAMPLE_FILE).is_file():
            untracked.append(r.name)
            continue
        try:
            entries.append(draw_memorized(r.path, images=images))
        except UserError as err:
            entries.append(MemorizedFigures(run=r.name, notes=[f"not drawn: {err}"]))
        except Exception as err:  # a report renders what it can (html._artifact_html); say what it could not
            entries.append(MemorizedFigures(run=r.name, notes=[f"not drawn: {type(err).__name__}: {str(err)[:200]}"]))
    return entries, untracked
