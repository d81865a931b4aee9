"""Weight averaging (EMA of the weights), a baseline against robust overfitting.

A trainer callback keeps a copy of the model whose floating-point state (parameters *and*
BatchNorm running statistics) is an exponential moving average of the trained model's, updated
after every optimizer step from `optim.ema.start_epoch` on (the copy is initialised to the
current weights at the first step of that epoch). Integer buffers (`num_batches_tracked`) are
copied. On evaluated epochs the averaged model is evaluated on val and test with the same
attack and the same random starts as the raw model, adding `ema_{val,test}_{nat,rob}_{acc,loss}`
to the metrics row, and checkpointed as `checkpoints/ema_last.*` and `ema_best.*` (best by the
same rule as the raw model: robust accuracy on val, or on test when there is no val split,
ties broken by natural accuracy). Its state survives `--resume`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from advmem.engine.callbacks import Callback, TrainerView
from advmem.engine.checkpoint import best_split, checkpoint_meta, improved_best, save_checkpoint
from advmem.engine.evaluate import evaluate_split
from advmem.engine.seeding import EVAL_STREAMS, epoch_generator


class WeightEMA(Callback):
    state_key = "weight_ema"

    def __init__(self, cfg) -> None:
        self.decay = float(cfg.decay)
        self.start_epoch = int(cfg.start_epoch)
        self.model: torch.nn.Module | None = None
        self.started = False
        self.best: dict[str, Any] | None = None

    # -- trainer hooks -------------------------------------------------------------------------
    def setup(self, view: TrainerView) -> None:
        self.model = copy.deepcopy(view.model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def on_step_end(self, view: TrainerView, epoch: int) -> None:
        if epoch < self.start_epoch:
            return
        source = view.model.state_dict()
        target = self.model.state_dict()
        if not self.started:
            for k, v in target.items():
                v.copy_(source[k])
            self.started = True
            return
        for k, v in target.items():
            if v.is_floating_point():
                v.lerp_(source[k].to(v.dtype), 1.0 - self.decay)
            else:
                v.copy_(source[k])

    def on_epoch_end(self, view: TrainerView, epoch: int, row: dict[str, Any]) -> None:
        if not self.started or "test_nat_acc" not in row:
            return
        r = view.recipe
        # the raw model's val and test streams, so both see the same random starts
        for name, data in (("val", view.bundle.val), ("test", view.bundle.test)):
            if data is None or len(data) == 0:
                continue
            row.update(evaluate_split(self.model, f"ema_{name}", data, view.eval_attack, r.eval.batch_size,
                                      epoch_generator(r.seed, epoch, stream=EVAL_STREAMS[name]),
                                      progress=view.progress))
        ckpt = view.run.checkpoints
        meta = checkpoint_meta(r, view.bundle, view.model, epoch, row)
        meta["weights"] = f"ema(decay={self.decay}, start_epoch={self.start_epoch})"
        better = improved_best(self.best, row, epoch=epoch, split=best_split(view.bundle), prefix="ema_")
        if better is not None:
            self.best = better
            save_checkpoint(ckpt / "ema_best", self.model, meta)
        save_checkpoint(ckpt / "ema_last", self.model, meta)
        row["ema_best_epoch"] = self.best["epoch"]

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "started": self.started,
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.started = bool(state["started"])
        self.best = state["best"]
