"""Which training samples a run memorized, read back from its per-sample table (`per_sample.parquet`).

The definitions live here, next to the tracker whose columns they read, so the report, the
studies and the tests use one set of rules. Only tracked epochs count; "robust-correct" is the
tracker's `rob_correct`: the eval attack's PGD example is classified as the label trained on.

- memorized epoch: the first tracked epoch from which a sample stays robust-correct through the
  last tracked epoch (0: not robust-correct at the last one). With `track.per_sample.every: k` it
  is known to within k epochs.
- D, the first decay: the last epoch at the initial learning rate (`engine.schedules.first_decay`;
  multistep milestones [m, ...] give D = m).
- (a) `after_decay`: robust-correct at the last tracked epoch and at no tracked epoch <= D: fitted
  only once the learning rate fell, the memorization the paper ties to robust overfitting.
  Undefined (None, with a note) without a step decay or without tracked epochs on both sides of D.
- (b) `corrupted_fit`: the label was changed by the noise (`label != true_label`; a redraw that
  landed on the true class is not a wrong label) and the sample is robust-correct at the last
  tracked epoch, i.e. robustly fitted to the wrong label.
- (c) `hardest`: the k samples with the largest robust loss averaged over the tracked epochs <= D
  (all tracked epochs without a decay). At a few hundred samples the end of training fits almost
  everything, so final losses do not separate samples; one epoch's loss at the high learning rate
  swings with the oscillating model and PGD's random start, and a set chosen by it is robustly
  wrong at that epoch almost by construction. The mean over the high-rate phase ranks samples by how
  persistently the model failed on them before it could memorize (mislabeled and atypical ones).
- counts: per tracked epoch, the robust-correct samples among those with a clean and with a
  changed label.

(a) and (b) are listed hardest first (the same score as (c)), ties by index.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advmem.errors import UserError
from advmem.engine.rundir import RunDir

DEFINITIONS = {
    "memorized_epoch": "first tracked epoch from which the sample stays robust-correct (w.r.t. the label "
                       "trained on) through the last tracked epoch",
    "after_decay": "robust-correct at the last tracked epoch, at no tracked epoch up to the first lr decay",
    "corrupted_fit": "label changed by the noise and robust-correct (to that wrong label) at the last tracked epoch",
    "hardest": "largest robust loss averaged over the tracked epochs up to the first lr decay (all tracked "
               "epochs without one)",
    "counts": "robust-correct samples per tracked epoch, among clean-label and changed-label samples",
}


@dataclass
class MemorizedSamples:
    """The selections of one run; every index is a position in the training set as used."""

    epochs: np.ndarray            # tracked epochs, ascending (E,)
    index: np.ndarray             # tracked samples, ascending (S,)
    label: np.ndarray             # label trained on (S,)
    true_label: np.ndarray        # clean label (S,)
    label_changed: np.ndarray     # (S,)
    rob_correct: np.ndarray       # (S, E)
    memorized_epoch: np.ndarray   # (S,), 0 = not robust-correct at the last tracked epoch
    hardness: np.ndarray          # (S,) mean robust loss over `hardness_epochs`
    hardness_epochs: np.ndarray
    decay: int | None
    after_decay: np.ndarray | None
    corrupted_fit: np.ndarray
    hardest: np.ndarray
    notes: list[str] = field(default_factory=list)
    rob_loss: np.ndarray | None = None   # (S, E) robust loss of each sample at each tracked epoch
    te_label: np.ndarray | None = None   # TE target's top class per training position (-1: never visited)
    te_conf: np.ndarray | None = None

    def row(self, index: np.ndarray) -> np.ndarray:
        """Rows (into the per-sample arrays) of sample positions `index`."""
        return np.searchsorted(self.index, index)

    def counts(self) -> dict[str, Any]:
        clean, changed = ~self.label_changed, self.label_changed
        return {"epoch": self.epochs.tolist(),
                "clean": self.rob_correct[clean].sum(axis=0).tolist(),
                "corrupted": self.rob_correct[changed].sum(axis=0).tolist(),
                "n_clean": int(clean.sum()), "n_corrupted": int(changed.sum())}


def _grid(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, index, order): `order` (E, S) puts the rows of tracked epoch e, sample s at [e, s]."""
    epoch_col, index_col = np.asarray(columns["epoch"]), np.asarray(columns["index"])
    epochs, index = np.unique(epoch_col), np.unique(index_col)
    if len(epoch_col) == 0:
        raise UserError("per_sample.parquet: no rows yet (no tracked epoch has finished)")
    order = np.lexsort((index_col, epoch_col))
    if len(order) != len(epochs) * len(index) or not (index_col[order].reshape(len(epochs), -1) == index).all():
        raise UserError("per_sample.parquet: the tracked epochs do not all hold the same samples, each once; "
                        "it was not written by one run's tracker (restore it or train the run again)")
    return epochs, index, order.reshape(len(epochs), len(index))


def select_memorized(columns: dict[str, np.ndarray], decay: int | None, k_hardest: int = 16) -> MemorizedSamples:
    """Apply the module's rules to a per-sample table (`columns`: name -> array, the parquet's
    columns) with first decay `decay` (None: the schedule has none)."""
    epochs, index, grid = _grid(columns)
    col = {k: np.asarray(columns[k]) for k in ("label", "true_label", "rob_correct", "rob_loss")}
    first = grid[0]
    label, true_label = col["label"][first].astype(np.int64), col["true_label"][first].astype(np.int64)
    changed = label != true_label
    rob_correct = col["rob_correct"][grid].T.astype(bool)             # (S, E)
    rob_loss = col["rob_loss"][grid].T.astype(np.float64)
    stays = np.logical_and.accumulate(rob_correct[:, ::-1], axis=1)[:, ::-1]  # correct from e to the end
    memorized_epoch = np.where(stays[:, -1], epochs[stays.argmax(axis=1)], 0)
    notes: list[str] = []
    before = epochs <= decay if decay is not None else np.zeros(len(epochs), dtype=bool)
    if decay is None:
        notes.append("the schedule has no step decay: (a) is undefined and the hardness averages all tracked epochs")
    elif not before.any():
        notes.append(f"no tracked epoch at or before the first decay (epoch {decay}): (a) is undefined and the "
                     "hardness averages all tracked epochs; track more often (track.per_sample.every)")
    elif before.all():
        notes.append(f"no tracked epoch after the first decay (epoch {decay}): (a) is undefined")
    hard_cols = before if before.any() else np.ones(len(epochs), dtype=bool)
    losses = np.where(np.isfinite(rob_loss), rob_loss, np.nan)[:, hard_cols]
    finite = (~np.isnan(losses)).sum(axis=1)
    hardness = np.where(finite > 0, np.nansum(losses, axis=1) / np.maximum(finite, 1), -np.inf)  # diverged: last
    by_hardness = np.lexsort((index, -hardness))                  # hardest first, ties by index

    def pick(mask: np.ndarray) -> np.ndarray:
        return index[by_hardness[mask[by_hardness]]]

    fitted = rob_correct[:, -1]
    after = None
    if before.any() and not before.all():
        after = pick(fitted & ~rob_correct[:, before].any(axis=1))
    return MemorizedSamples(
        epochs=epochs, index=index, label=label, true_label=true_label, label_changed=changed,
        rob_correct=rob_correct, memorized_epoch=memorized_epoch, hardness=hardness,
        hardness_epochs=epochs[hard_cols], decay=decay, after_decay=after,
        corrupted_fit=pick(changed & fitted), hardest=index[by_hardness[:k_hardest]], notes=notes, rob_loss=rob_loss)


def hardest_curve(sel: MemorizedSamples, fraction: float) -> dict[str, Any]:
    """Robust accuracy and mean robust loss, at every tracked epoch, of the `fraction` of tracked
    samples that rule (c) ranks hardest (needs `sel` selected with k_hardest >= that many)."""
    k = max(1, round(fraction * len(sel.index)))
    if len(sel.hardest) < k:
        raise ValueError(f"hardest_curve: {k} samples asked for, {len(sel.hardest)} selected")
    rows = sel.row(sel.hardest[:k])
    loss = sel.rob_loss[rows] if sel.rob_loss is not None else np.full((k, len(sel.epochs)), np.nan)
    loss = np.where(np.isfinite(loss), loss, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch where every selected loss diverged: NaN
        mean_loss = np.nanmean(loss, axis=0)
    return {"epochs": sel.epochs.tolist(), "rob_acc": sel.rob_correct[rows].mean(axis=0).tolist(),
            "rob_loss": mean_loss.tolist(), "k": k, "n": len(sel.index), "decay": sel.decay,
            "changed": int(sel.label_changed[rows].sum())}


def read_te_targets(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(top class, its probability) of each training sample's TE target from the run's
    `te_buffer.safetensors` (written when training ends); None when the run has none."""
    from safetensors.numpy import load_file

    # torch: only when a TE run's buffer is read
    from advmem.methods.te import TE_BUFFER_FILE

    path = Path(run_dir) / TE_BUFFER_FILE
    if not path.is_file():
        return None
    try:
        state = load_file(str(path))
        buffer, visits = state["buffer"].astype(np.float64), state["visits"]
    except Exception as err:  # a torn or foreign file: name it, do not guess
        raise UserError(f"{path}: unreadable ({type(err).__name__}); restore it or train the run again") from None
    with np.errstate(invalid="ignore", divide="ignore"):
        target = buffer / buffer.sum(axis=1, keepdims=True)
    visited = visits > 0
    return (np.where(visited, np.nan_to_num(target, nan=-1.0).argmax(axis=1), -1),
            np.where(visited, np.nan_to_num(target, nan=0.0).max(axis=1), np.nan))


def is_te(recipe) -> bool:
    """TE is the method, or the base of a composite (AWP around TE)."""
    method = recipe.method
    while method is not None:
        if method.name == "te":
            return True
        method = getattr(method, "base", None)
        method = method if hasattr(method, "name") else None
    return False


def read_memorized(run_dir: str | Path, k_hardest: int = 16) -> tuple[MemorizedSamples, Any]:
    """The selections of a run directory (its recipe's schedule gives D; TE targets when saved)
    and the run's recipe. UserError for a directory that is not a run or has no per-sample tracking."""
    import pyarrow.parquet as pq

    # torch and pyarrow: only when per-sample tracking is read
    from advmem.engine.schedules import first_decay
    from advmem.track.per_sample import PER_SAMPLE_FILE

    run = RunDir(run_dir)
    run.check_readable()
    path = run.path / PER_SAMPLE_FILE
    if not path.is_file():
        raise UserError(f"{run.path}: no {PER_SAMPLE_FILE}; enable tracking with track.per_sample in the recipe")
    recipe = run.load_recipe()
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow's errors: a torn or foreign file
        raise UserError(f"{path}: unreadable ({type(err).__name__}); restore it or train the run again") from None
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    missing = {"epoch", "index", "label", "true_label", "rob_correct", "rob_loss"} - set(columns)
    if missing:
        raise UserError(f"{path}: lacks the columns {', '.join(sorted(missing))}; not a per-sample table of advmem")
    sel = select_memorized(columns, first_decay(recipe.optim), k_hardest)
    te = read_te_targets(run.path)
    if te is not None:
        sel.te_label, sel.te_conf = te
    elif is_te(recipe):
        sel.notes.append("TE run without te_buffer.safetensors (written when training ends): captions lack the TE target")
    return sel, recipe
