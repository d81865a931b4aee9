"""`log.tensorboard: true`: per-epoch scalars in TensorBoard (runs/<name>/tb/).

A trainer callback: it only mirrors the numeric entries of each epoch's metrics row, so
metrics.jsonl/.csv remain the source of truth. Tags group by split: `train/nat_acc`,
`val/rob_acc`, `test/nat_loss`, `optim/lr`, `time/epoch_time`, ...
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from advmem.engine.callbacks import Callback, TrainerView
from advmem.errors import UserError


def tag_of(key: str) -> str:
    for split in ("train", "val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    if key in ("lr", "grad_norm_sq"):
        return f"optim/{key}"
    if key.endswith("_time") or key == "images_per_s":
        return f"time/{key}"
    return f"other/{key}"


class TensorBoardCallback(Callback):
    def __init__(self, log_dir: str | Path) -> None:
        try:  # refused here, before training, when the optional package is missing
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError("log.tensorboard is true but the tensorboard package is not installed; "
                            "pip install tensorboard, or set log.tensorboard: false") from None
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_epoch_end(self, view: TrainerView, epoch: int, row: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional package, checked in __init__

        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag_of(key), value, global_step=epoch)
        self.writer.flush()
        if epoch == view.recipe.optim.epochs:
            self.writer.close()
            self.writer = None
