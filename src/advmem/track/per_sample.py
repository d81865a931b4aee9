"""Per-sample memorization tracker: which training samples the model fits, and when.

At every tracked epoch (multiples of `track.per_sample.every`, and the last epoch) each tracked
training sample is evaluated in eval mode with respect to the label it is *trained on*:
clean correctness, loss and logit margin (one inference pass), and robust correctness, loss and
margin under the evaluation attack (`eval.attack`, PGD from a generator seeded per epoch, so
tracking never shifts the training RNG). Rows go to `per_sample.parquet` in the run directory,
one row per (epoch, sample), rewritten atomically at each tracked epoch. On resume the rows of
epochs at or after the resume point are dropped first, so each epoch appears once.

Epoch summaries (added to the metrics row, omitted when the group is empty):
  track_nat_acc / track_rob_acc                   clean / robust accuracy on all tracked samples
  track_nat_acc_clean / track_nat_acc_corrupted   clean accuracy on clean vs corrupted samples
  track_rob_acc_clean / track_rob_acc_corrupted   robust accuracy on clean vs corrupted samples
  track_memorized_frac   among samples whose label was changed by the noise, the fraction that
                         are robustly correct w.r.t. the wrong label (fit only by memorization)
  track_forget_nat / track_forget_rob   forgetting events: samples correct at the previous
                         tracked epoch and incorrect now (absent at the first tracked epoch)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from advmem.engine.callbacks import Callback, TrainerView
from advmem.engine.evaluate import clean_per_sample, robust_per_sample
from advmem.engine.seeding import PER_SAMPLE_TRACKER, TRACKED_SUBSET, epoch_generator, subset_generator
from advmem.io import atomic_write
from advmem.progress import pass_of
from advmem.errors import UserError

PER_SAMPLE_FILE = "per_sample.parquet"

SCHEMA = pa.schema([
    ("epoch", pa.int32()),
    ("index", pa.int64()),
    ("label", pa.int64()),
    ("true_label", pa.int64()),
    ("corrupted", pa.bool_()),
    ("label_changed", pa.bool_()),
    ("nat_correct", pa.bool_()),
    ("rob_correct", pa.bool_()),
    ("nat_loss", pa.float32()),
    ("rob_loss", pa.float32()),
    ("nat_margin", pa.float32()),
    ("rob_margin", pa.float32()),
])


def tracked_indices(n: int, subset: str | int, seed: int) -> np.ndarray:
    """Sorted positions of the tracked samples: all, or K drawn by a permutation seeded from `seed`."""
    if subset == "all":
        return np.arange(n)
    if subset > n:
        raise UserError(f"track.per_sample.subset {subset} exceeds the {n} training samples; "
                        f"set it to at most {n} or to 'all'")
    g = subset_generator(seed, TRACKED_SUBSET)
    return np.sort(torch.randperm(n, generator=g)[:subset].numpy())


def epoch_summary(current: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None) -> dict[str, float]:
    """The metrics-row summary of one tracked epoch (arrays aligned by sample)."""
    out: dict[str, float] = {}
    corrupted = current["corrupted"]
    for kind in ("nat", "rob"):
        correct = current[f"{kind}_correct"]
        out[f"track_{kind}_acc"] = float(correct.mean())
        for group, mask in (("clean", ~corrupted), ("corrupted", corrupted)):
            if mask.any():
                out[f"track_{kind}_acc_{group}"] = float(correct[mask].mean())
    changed = current["label_changed"]
    if changed.any():
        out["track_memorized_frac"] = float(current["rob_correct"][changed].mean())
    if previous is not None and np.array_equal(previous["index"], current["index"]):
        for kind in ("nat", "rob"):
            out[f"track_forget_{kind}"] = int((previous[f"{kind}_correct"] & ~current[f"{kind}_correct"]).sum())
    return out


class PerSampleTracker(Callback):
    """Trainer callback built from `recipe.track.per_sample`."""

    def __init__(self, recipe) -> None:
        self.cfg = recipe.track.per_sample
        self.seed = recipe.seed
        self.epochs = recipe.optim.epochs
        self.batch_size = self.cfg.batch_size or recipe.eval.batch_size

    def setup(self, view: TrainerView) -> None:
        """The tracked samples: their positions, labels and corruption (fixed for the whole run)."""
        r = view.recipe
        train = view.bundle.train
        idx = tracked_indices(len(train), self.cfg.subset, r.seed)
        self.dataset = train.subset(idx) if self.cfg.subset != "all" else train
        positions = self.dataset.index.cpu().numpy()
        labels = self.dataset.y.cpu().numpy()
        corruption = getattr(view.bundle, "corruption", None)
        if corruption is None:
            true_labels, corrupted = labels.copy(), np.zeros(len(labels), dtype=bool)
        else:
            true_labels, corrupted = corruption.true_labels[positions], corruption.mask[positions]
        self.static = {"index": positions.astype(np.int64), "label": labels.astype(np.int64),
                       "true_labels": true_labels.astype(np.int64), "corrupted": corrupted,
                       "label_changed": labels != true_labels}
        self.table: pa.Table | None = None
        self.previous: dict[str, np.ndarray] | None = None

    def is_tracked(self, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == self.epochs

    def path(self, view: TrainerView) -> Path:
        return view.run.path / PER_SAMPLE_FILE

    def on_fit_start(self, view: TrainerView) -> None:
        """On resume keep only the rows of epochs before the resume point, and the last of them as `previous`."""
        path = self.path(view)
        self.table, self.previous = None, None
        if view.start_epoch <= 1 or not path.exists():
            return
        table = pq.read_table(path)
        table = table.filter(pc.less(table["epoch"], view.start_epoch))
        self.table = table if table.num_rows else None
        if self.table is not None:
            last = pc.max(table["epoch"]).as_py()
            rows = table.filter(pc.equal(table["epoch"], last))
            self.previous = {"index": rows["index"].to_numpy(),
                             "nat_correct": rows["nat_correct"].to_numpy(zero_copy_only=False),
                             "rob_correct": rows["rob_correct"].to_numpy(zero_copy_only=False)}

    def on_epoch_end(self, view: TrainerView, epoch: int, row: dict[str, Any]) -> None:
        if not self.is_tracked(epoch):
            return
        model = view.model
        with pass_of(view.progress, "per-sample clean", len(self.dataset)) as bar:
            clean = clean_per_sample(model, self.dataset, self.batch_size, on_batch=bar.update)
        gen = epoch_generator(self.seed, epoch, stream=PER_SAMPLE_TRACKER)
        with pass_of(view.progress, f"per-sample PGD-{view.eval_attack.steps}", len(self.dataset)) as bar:
            rob = robust_per_sample(model, self.dataset, view.eval_attack, self.batch_size, generator=gen,
                                    on_batch=bar.update)
        values = {f"{kind}_{key}": res[key].float().cpu().numpy() if key != "correct" else res[key].cpu().numpy()
                  for kind, res in (("nat", clean), ("rob", rob)) for key in ("correct", "loss", "margin")}
        s = self.static
        n = len(s["index"])
        current = {"index": s["index"], "corrupted": s["corrupted"], "label_changed": s["label_changed"],
                   "nat_correct": values["nat_correct"].astype(bool), "rob_correct": values["rob_correct"].astype(bool)}
        part = pa.table({
            "epoch": np.full(n, epoch, dtype=np.int32), "index": s["index"], "label": s["label"],
            "true_label": s["true_labels"], "corrupted": s["corrupted"], "label_changed": s["label_changed"],
            "nat_correct": current["nat_correct"], "rob_correct": current["rob_correct"],
            "nat_loss": values["nat_loss"].astype(np.float32), "rob_loss": values["rob_loss"].astype(np.float32),
            "nat_margin": values["nat_margin"].astype(np.float32),
            "rob_margin": values["rob_margin"].astype(np.float32),
        }, schema=SCHEMA)
        self.table = part if self.table is None else pa.concat_tables([self.table, part])
        table = self.table
        atomic_write(self.path(view), lambda fh: pq.write_table(table, fh))
        row.update(epoch_summary(current, self.previous))
        self.previous = current


def read_per_sample(run_dir: str | Path) -> pa.Table:
    path = Path(run_dir) / PER_SAMPLE_FILE
    if not path.exists():
        raise UserError(f"{path}: missing; enable tracking with track.per_sample in the recipe")
    return pq.read_table(path)
