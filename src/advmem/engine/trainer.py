"""The trainer: recipe in, run directory out.

Per step: the method builds adversarial examples (eval-mode attack), the model goes to train
mode for the method's loss, the optimizer steps. Step metrics (loss, accuracy, squared global
gradient norm) are accumulated on the device and read once per epoch, so the step never waits
on the host. Per epoch: clean and robust accuracy on train (fixed subset for robust), val and
test; checkpoints `last` and `best` (by validation robust accuracy); a resume state written
atomically so a killed run continues where its last completed epoch ended.
"""

from __future__ import annotations

import errno
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from advmem import __version__
from advmem.data import DataBundle, build_data
from advmem.device import resolve_device, use_deterministic
from advmem.engine import distributed
from advmem.engine.callbacks import TrainerView, as_callback
from advmem.engine.checkpoint import (best_split, checkpoint_meta, improved_best, load_resume_state,
                                     model_normalization, save_checkpoint, save_resume_state)
from advmem.engine.evaluate import eval_attack_of, eval_cost_note, evaluate_split
from advmem.io import atomic_write_json
from advmem.engine.perf import resolve_perf
from advmem.engine.rundir import RunDir
from advmem.engine.safety import GracefulStop, RunLock
from advmem.engine.schedules import lr_at
from advmem.engine.seeding import (EVAL_STREAMS, TRAIN_EVAL_SUBSET, TRAIN_ORDER, epoch_generator, rank_seed,
                                    seed_model_init, subset_generator)
from advmem.errors import Interrupted, RunFailure, UserError
from advmem.methods import build_method
from advmem.models import build_model
from advmem.recipe import Recipe


class NonFinite(RunFailure):
    """A step produced a non-finite loss or gradient and reliability.on_nonfinite is 'stop'."""

    def __init__(self, epoch: int, step: int, quantity: str) -> None:
        super().__init__(f"epoch {epoch} step {step}: non-finite {quantity}")
        self.epoch, self.step, self.quantity = epoch, step, quantity


@dataclass
class Trainer:
    recipe: Recipe
    run: RunDir
    quiet: bool = False
    callbacks: list[Any] = field(default_factory=list)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    comm: distributed.Comm = field(default_factory=distributed.Comm)
    stop: GracefulStop | None = None

    def setup(self, resume: bool) -> None:
        """Everything that can fail on bad input happens here, before the run directory is touched."""
        r = self.recipe
        self.device = resolve_device(r.device, self.comm.local_rank if self.comm.enabled else 0)
        if r.deterministic:
            use_deterministic(self.device)
        self.bundle = build_data(r.data, self.device)
        if r.data.val_size == 0:
            self.log("note: data.val_size is 0, so the 'best' checkpoint is selected on the test set "
                     "(optimistic; set data.val_size for an honest early-stopping row)")
        b = self.bundle
        kwargs = dict(r.model.kwargs)
        check_model_size(r.model.name, kwargs, b, self.device)  # before seeding: draws nothing that counts
        seed_model_init(r.seed, self.device)
        mean, std = model_normalization(r, b)
        self.model = build_model(r.model.name, in_channels=b.in_channels, num_classes=b.num_classes,
                                 image_size=b.image_size, mean=mean, std=std, **kwargs).to(self.device)
        self.model = self.comm.convert_sync_bn(self.model, r.distributed.sync_bn)
        if self.comm.rank > 0:  # same init on every rank, but each rank draws its own attack noise
            torch.manual_seed(rank_seed(r.seed, self.comm.rank))
        # perf: `self.model` (eager) is saved and evaluated; `self.step_model` (maybe compiled,
        # same parameters) runs the training step under autocast; `self.train_model` is the
        # step model wrapped for DDP (the outer loss only: attacks use the unwrapped module).
        self.perf = resolve_perf(r.perf, self.device, self.model, log=self.log)
        self.step_model = self.perf.prepare_model(self.model)
        self.scaler = self.perf.grad_scaler()
        self.method = build_method(r.method, r.attack, num_train=len(b.train), num_classes=b.num_classes,
                                   device=self.device, label_smoothing=r.optim.label_smoothing)
        o = r.optim
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov, weight_decay=o.weight_decay)
        self.view = TrainerView(self)
        self.callbacks = [as_callback(c) for c in self.callbacks]
        for callback in self.callbacks:
            callback.setup(self.view)
        self.eval_attack = eval_attack_of(r)
        self.train_eval_set = self._train_eval_subset()
        self.start_epoch = 1
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._metrics_mismatch: str | None = None
        if resume:
            self._load_resume()
        self.committed_epoch = self.start_epoch - 1
        self.train_model = self.comm.wrap(self.step_model, self.device)
        self._first_bad = torch.zeros(2, device=self.device)  # see _check_step

    def _train_eval_subset(self):
        n = len(self.bundle.train)
        k = min(self.recipe.eval.train_subset, n)
        g = subset_generator(self.recipe.seed, TRAIN_EVAL_SUBSET)
        idx = torch.randperm(n, generator=g)[:k].sort().values
        return self.bundle.train.subset(idx.to(self.bundle.train.y.device))

    # -- resume ------------------------------------------------------------------------
    def _resume_state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": 1,
            "advmem_version": __version__,
            "epoch": epoch,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else [],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "best": self.best,
            "recipe_hash": self.recipe.hash(),
            "callbacks": {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict()) is not None},
            "rows": json.loads(json.dumps(self.rows, default=_plain)),  # plain types: loads with weights_only
            "world_size": self.comm.world_size,
            "rng_cpu_ranks": self.comm.all_gather_object(torch.get_rng_state()) if self.comm.enabled else [],
            "rng_cuda_ranks": self.comm.all_gather_object(torch.cuda.get_rng_state(self.device))
            if self.comm.enabled and self.device.type == "cuda" else [],
        }

    def _restore_cuda_rng(self, state: dict[str, Any]) -> None:
        """This process's device generator: its own rank's state when the world size matches, a
        fresh (seed, rank, epoch) stream for other ranks otherwise (as for the CPU state)."""
        ranks = state.get("rng_cuda_ranks") or []
        if self.comm.enabled and len(ranks) == self.comm.world_size:
            torch.cuda.set_rng_state(ranks[self.comm.rank], self.device)
        elif self.comm.enabled and self.comm.rank > 0:
            torch.cuda.manual_seed(rank_seed(self.recipe.seed, self.comm.rank, int(state["epoch"])))
        elif isinstance(state.get("rng_cuda"), torch.Tensor):
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def _load_resume(self) -> None:
        if not self.run.resume_path.exists():
            committed = self.run.committed_epoch()
            if committed is not None:  # resume.pt was lost or deleted: restarting would destroy results
                epoch, source = committed
                raise UserError(
                    f"{self.run.resume_path} is missing but {source} shows epoch {epoch} completed; resuming would "
                    f"train again from epoch 1 over those results, so nothing was changed; restore resume.pt from "
                    f"a backup, or keep this run and train a new one: advmem train {self.run.recipe_path} --name NEW")
            # killed before its first epoch was committed: nothing to lose, so start again from epoch 1
            self.log(f"advmem: {self.run.path} has no completed epoch yet; starting it again from epoch 1")
            return
        state = load_resume_state(self.run.resume_path)
        if not recipe_hash_matches(self.recipe, state.get("recipe_hash")):
            raise UserError(f"{self.run.path}: recipe.yaml differs from the one the resume state was written with; "
                            "start a new run instead of resuming")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
            rng_ranks = state.get("rng_cpu_ranks") or []
            if self.comm.enabled and len(rng_ranks) == self.comm.world_size:
                torch.set_rng_state(rng_ranks[self.comm.rank])
            elif self.comm.enabled and self.comm.rank > 0:
                torch.manual_seed(rank_seed(self.recipe.seed, self.comm.rank, int(state["epoch"])))
            else:
                torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda":
                self._restore_cuda_rng(state)
            self.best = state["best"]
            for callback in self.callbacks:
                if callback.state_key in state.get("callbacks", {}):
                    callback.load_state_dict(state["callbacks"][callback.state_key])
            self.start_epoch = int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise UserError(f"{self.run.resume_path}: resume state does not match this run ({detail}); "
                            "it is from another version or run; start again with --overwrite") from None
        rows = state.get("rows")
        if rows is None:  # written before resume states carried their rows
            rows = self.run.read_metrics()
        try:
            self.rows = [row for row in rows if row["epoch"] < self.start_epoch]
        except (KeyError, TypeError):
            raise UserError(f"{self.run.resume_path}: its metrics rows lack 'epoch' (edited or not advmem's); "
                            "restore it or start again with --overwrite") from None
        self._metrics_mismatch = self._metrics_disagree(rows is state.get("rows"))

    def _metrics_disagree(self, from_state: bool) -> str | None:
        """Why metrics.jsonl no longer matches the committed rows of resume.pt (truncated, edited,
        corrupt), or None. Rows of a later, uncommitted epoch are normal (a kill after the metrics
        write) and are rewritten by the resumed run."""
        if not from_state:
            return None
        from advmem.engine.checkpoint import json_safe

        try:
            disk = self.run.read_metrics()
        except UserError:
            return "is not valid JSON"
        committed = [row for row in disk if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)
                                                 and row["epoch"] >= self.start_epoch)]
        if json.dumps(json_safe(committed), sort_keys=True) == json.dumps(json_safe(self.rows), sort_keys=True,
                                                                          default=_plain):
            return None
        epochs = [row.get("epoch") if isinstance(row, dict) else None for row in committed]
        return f"has epochs {epochs} where resume.pt has {[row['epoch'] for row in self.rows]}"

    # -- the loop ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        r, method, opt = self.recipe, self.method, self.optimizer
        lr = lr_at(r.optim, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        method.on_epoch_start(epoch)
        gen = epoch_generator(r.seed, epoch, stream=TRAIN_ORDER)
        dev = self.device
        sums = {"loss": torch.zeros((), device=dev), "acc": torch.zeros((), device=dev),
                "grad_norm_sq": torch.zeros((), device=dev)}
        n_batches, n_images = 0, 0
        world = self.comm.world_size  # DDP: this rank's shard of the permutation, batch_size / world each
        batches = self.bundle.train.batches(r.optim.batch_size // world, shuffle=True, generator=gen,
                                            augment=self.bundle.augment, rank=self.comm.rank, world_size=world)
        total = math.ceil(len(self.bundle.train) / r.optim.batch_size)
        bar = None
        if not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(self.bundle.train), unit="img", unit_scale=True, leave=False,
                       desc=f"epoch {epoch}/{r.optim.epochs}", file=sys.stderr, dynamic_ncols=True,
                       disable=None)
        start = time.perf_counter()
        skipped = 0
        self._first_bad = torch.zeros(2, device=dev)  # (step, 1 loss | 2 gradient) of the first non-finite step
        for step, batch in enumerate(batches, start=1):
            skip, stop = self.train_step(batch, epoch, step, sums)
            if stop:
                raise _StopRequested(epoch, step)
            if skip:
                skipped += 1
                continue
            n_batches += 1
            n_images += batch.y.shape[0]
            if bar is not None:
                bar.update(batch.y.shape[0])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - start
        if bar is not None:
            bar.close()
        # One device read per epoch: the step sums and the first non-finite step, together.
        sums_and_flag = torch.cat([torch.stack([sums["loss"], sums["acc"], sums["grad_norm_sq"]]), self._first_bad])
        totals = self.comm.all_reduce(sums_and_flag).tolist()
        bad_step, bad_code = totals[3], totals[4]
        if bad_code > 0 and self.recipe.reliability.on_nonfinite == "stop" and not self.comm.enabled:
            raise NonFinite(epoch, int(bad_step), "loss" if bad_code == 1 else "gradient")
        if self.comm.enabled:
            counts = torch.tensor([n_batches, n_images], dtype=torch.float64, device=dev)  # NCCL: device tensors only
            n_batches, n_images = (int(v) for v in self.comm.all_reduce(counts).tolist())
        if n_batches == 0:
            raise EpochFailure(f"epoch {epoch}: every batch had a non-finite loss or gradient and was skipped",
                               {"reason": "non-finite", "quantity": "every batch", "epoch": epoch, "step": None,
                                "skipped_batches": skipped})
        values = [v / n_batches for v in totals[:3]]
        assert total >= n_batches // world
        row = {"lr": lr, "train_loss": values[0], "train_batch_acc": values[1], "grad_norm_sq": values[2],
               "train_time": train_time, "images_per_s": n_images / max(train_time, 1e-9)}
        if self.recipe.reliability.on_nonfinite == "skip_batch":
            row["skipped_batches"] = skipped
        return row

    def _check_step(self, epoch: int, step: int, loss: torch.Tensor, grad_sq: torch.Tensor) -> tuple[bool, bool]:
        """(skip this batch, stop now).

        Single process with `on_nonfinite: stop`: no host sync inside the step. The first bad
        step and quantity are recorded in a device tensor, read every `check_every` steps and at
        the end of the epoch (`_raise_recorded_nonfinite`), so the failure names the exact step
        and nothing after it is saved. `skip_batch` and DDP must decide before the optimizer step:
        one host sync per step, and under DDP one small all-reduce so every rank skips or stops
        at the same step (a pending SIGTERM is agreed the same way)."""
        rel = self.recipe.reliability
        bad_loss_t = ~torch.isfinite(loss.detach().float())
        bad_grad_t = ~torch.isfinite(grad_sq)
        stop_local = bool(self.stop and self.stop.requested)
        if rel.on_nonfinite == "stop" and not self.comm.enabled:
            code = torch.where(bad_loss_t, 1.0, torch.where(bad_grad_t, 2.0, 0.0))
            fresh = (self._first_bad[0] == 0) & (code > 0)
            self._first_bad = torch.where(fresh, torch.stack([torch.full((), float(step), device=code.device), code]),
                                          self._first_bad)
            if rel.check_every and step % rel.check_every == 0:
                self._raise_recorded_nonfinite(epoch)
            return False, stop_local
        flags = torch.stack([bad_loss_t.float(), bad_grad_t.float(),
                             torch.full((), float(stop_local), device=grad_sq.device)])
        bad_loss, bad_grad, stop = (v > 0 for v in self.comm.all_reduce(flags, op="max").tolist())
        if bad_loss or bad_grad:
            quantity = "loss" if bad_loss else "gradient"
            if rel.on_nonfinite == "stop":
                raise NonFinite(epoch, step, quantity)
            self.log(f"advmem: epoch {epoch} step {step}: non-finite {quantity}; batch skipped "
                     "(reliability.on_nonfinite: skip_batch)")
            return True, stop
        return False, stop

    def _raise_recorded_nonfinite(self, epoch: int) -> None:
        step, code = self._first_bad.tolist()
        if code > 0:
            raise NonFinite(epoch, int(step), "loss" if code == 1 else "gradient")


    def train_step(self, batch, epoch: int, step: int, sums: dict[str, torch.Tensor]) -> tuple[bool, bool]:
        """One optimizer step; metrics are added to the on-device `sums`. Returns (skipped, stop).

        The attack runs on the unwrapped (maybe compiled) step model; the outer loss on the
        DDP-wrapped one, so gradients are all-reduced but attack passes fire no DDP hooks."""
        model, method, opt, perf = self.step_model, self.method, self.optimizer, self.perf
        # skip_batch: a skipped batch must leave the model as it was, its buffers included (a
        # BatchNorm forward on a diverging batch writes inf/NaN running statistics). The copy is
        # made only on this path, so the default path does no extra work.
        saved_buffers = ([b.detach().clone() for b in self.model.buffers()]
                         if self.recipe.reliability.on_nonfinite == "skip_batch" else None)
        if perf.channels_last:
            batch = batch._replace(x=perf.prepare_input(batch.x))
        with perf.autocast():
            ctx = method.attack(model, batch, epoch)
            method.before_loss(model, batch, ctx, epoch)
            model.train()
            loss, logs = method.outer_loss(self.train_model, batch, ctx, epoch)
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)  # no-op unless fp16, so the gradient norm below is the true one
        grad_sq = torch.zeros((), device=self.device)
        for p in model.parameters():
            if p.grad is not None:
                grad_sq = grad_sq + p.grad.detach().float().pow(2).sum()
        # With fp16 loss scaling an overflowing gradient is routine (the scaler skips the step and
        # lowers the scale), so only the loss counts as divergence there.
        checked_grad = torch.zeros_like(grad_sq) if self.scaler.is_enabled() else grad_sq
        skip, stop = self._check_step(epoch, step, loss, checked_grad)
        if skip and saved_buffers is not None:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), saved_buffers):
                    buffer.copy_(saved)
        method.before_step(model)  # also on a skipped step: AWP must restore the weights
        if not skip:
            self.scaler.step(opt)  # plain opt.step() unless fp16
        self.scaler.update()
        method.after_step(model)
        if not skip:
            for callback in self.callbacks:
                callback.on_step_end(self.view, epoch)
        if self.comm.enabled and hasattr(method, "sync_state"):
            method.sync_state(batch, self.comm)
        if not skip:
            sums["loss"] += loss.detach().float()
            sums["acc"] += logs["acc"].float()
            sums["grad_norm_sq"] += torch.nan_to_num(grad_sq, nan=0.0, posinf=0.0)
        return skip, stop

    def _stoppable(self, dataset, epoch: int):
        """`dataset` for an evaluation pass that a SIGTERM/SIGINT stops before its next batch (single
        process; under DDP the other ranks wait in a collective, so rank 0 finishes the pass)."""
        if self.stop is None or self.comm.enabled or dataset is None:
            return dataset
        return _StopBetweenBatches(dataset, self.stop, epoch)

    def evaluate_full_test(self, epoch: int) -> dict[str, float]:
        """The last epoch's evaluation on the full test set when data.test_size subsets it."""
        r = self.recipe
        full = self._stoppable(build_data(r.data.model_copy(update={"test_size": None}), self.device).test, epoch)
        return evaluate_split(self.model, "test_full", full, self.eval_attack, r.eval.batch_size,
                              epoch_generator(r.seed, epoch, stream=EVAL_STREAMS["test"]))

    def evaluate_epoch(self, epoch: int) -> dict[str, float]:
        r, model = self.recipe, self.model
        bs = r.eval.batch_size
        row: dict[str, float] = {}
        splits = [("train", self.bundle.train, self.train_eval_set), ("val", self.bundle.val, self.bundle.val),
                  ("test", self.bundle.test, self.bundle.test)]
        for name, clean_set, robust_set in splits:
            if clean_set is None or len(clean_set) == 0:
                continue
            row.update(evaluate_split(model, name, self._stoppable(clean_set, epoch), self.eval_attack, bs,
                                      epoch_generator(r.seed, epoch, stream=EVAL_STREAMS[name]),
                                      robust_set=self._stoppable(robust_set, epoch)))
        return row

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs. Only rank 0 evaluates, runs callbacks and writes the run
        directory; the resume state is written last in each epoch, so it is the commit point."""
        try:
            return self._fit()
        except NonFinite as err:
            last_good = self._write_failure({"reason": "non-finite", "quantity": err.quantity, "epoch": err.epoch,
                                             "step": err.step})
            kept = (f"the last good state (epoch {last_good}) is kept in checkpoints/last and resume.pt"
                    if last_good > 0 else "no epoch had completed")
            raise RunFailure(f"{err}; stopped (reliability.on_nonfinite: stop) and wrote {self.run.path / 'failure.json'}; "
                             f"{kept}; lower optim.lr, or resume with --set reliability.on_nonfinite=skip_batch") from None
        except EpochFailure as err:
            last_good = self._write_failure(err.record)
            kept = (f"the last good state (epoch {last_good}) is kept in checkpoints/last and resume.pt"
                    if last_good > 0 else "no epoch had completed")
            raise RunFailure(f"{err}; nothing of that epoch was saved; wrote {self.run.path / 'failure.json'}; "
                             f"{kept}; lower optim.lr or check the data") from None
        except _StopRequested as err:
            signum = self.stop.signum if self.stop and self.stop.signum else 15
            done = self.start_epoch - 1 if not self.rows else self.rows[-1]["epoch"]
            where = (f"during the evaluation of epoch {err.epoch}; that epoch is discarded" if err.phase == "evaluation"
                     else f"at epoch {err.epoch} step {err.step}; the partial epoch is discarded"
                     if err.step else f"after epoch {done}")
            raise Interrupted(f"stopped {where}; the run is consistent at epoch {done}; "
                              f"continue with: advmem train --resume {self.run.path}", signum) from None

    def _write_failure(self, record: dict[str, Any]) -> int:
        """Write failure.json (rank 0) and return the last good (committed) epoch."""
        last_good = self.start_epoch - 1 if not self.rows else self.rows[-1]["epoch"]
        if self.comm.is_main:
            atomic_write_json(self.run.path / "failure.json", {
                **record, "on_nonfinite": self.recipe.reliability.on_nonfinite, "last_good_epoch": last_good,
                "advmem_version": __version__})
        return last_good

    def _check_finite_state(self, epoch: int) -> None:
        """Refuse to save a model with a non-finite parameter or buffer (one device read per epoch;
        under DDP every rank agrees, so none waits in a collective the others skip)."""
        tensors = [(k, v) for k, v in self.model.state_dict().items() if v.is_floating_point()]
        if not tensors:
            return
        bad = torch.stack([~torch.isfinite(v).all() for _, v in tensors]).float()
        flags = self.comm.all_reduce(bad.clone(), op="max") if self.comm.enabled else bad
        flags = flags.tolist()
        if max(flags) > 0:
            name = tensors[flags.index(max(flags))][0]
            raise EpochFailure(f"epoch {epoch}: the model's {name} is non-finite after training",
                               {"reason": "non-finite-state", "tensor": name, "epoch": epoch, "step": None})

    def _fit(self) -> dict[str, Any]:
        r = self.recipe
        main = self.comm.is_main
        if main:
            for callback in self.callbacks:
                callback.on_fit_start(self.view)
        if self.start_epoch == 1 and main:
            save_checkpoint(self.run.checkpoints / "init", self.model, checkpoint_meta(r, self.bundle, self.model, 0, {}))
            b = self.bundle
            note = eval_cost_note(r, n_train=len(b.train), n_train_eval=len(self.train_eval_set),
                                  n_val=len(b.val) if b.val is not None else 0, n_test=len(b.test))
            if note and not self.quiet:
                self.log(note)
        if main and self._metrics_mismatch:
            self.log(f"advmem: {self.run.metrics_jsonl} {self._metrics_mismatch}; rewrote metrics.jsonl and "
                     "metrics.csv from resume.pt")
            self.run.write_metrics(self.rows)
        split = best_split(self.bundle)
        for epoch in range(self.start_epoch, r.optim.epochs + 1):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch}
            row.update(self.train_epoch(epoch))
            if main and (epoch % r.eval.every == 0 or epoch == r.optim.epochs):
                e0 = time.perf_counter()
                row.update(self.evaluate_epoch(epoch))
                if epoch == r.optim.epochs and r.eval.final_full and r.data.test_size is not None:
                    row.update(self.evaluate_full_test(epoch))
                row["eval_time"] = time.perf_counter() - e0
            if main:
                for callback in self.callbacks:
                    callback.on_epoch_end(self.view, epoch, row)
            if self.comm.enabled:
                row["world_size"] = self.comm.world_size
            row["epoch_time"] = time.perf_counter() - t0
            self._check_finite_state(epoch)  # before anything of this epoch is saved
            self.rows.append(row)
            meta = checkpoint_meta(r, self.bundle, self.model, epoch, row)
            better = improved_best(self.best, row, epoch=epoch, split=split) if main else None
            if better is not None:
                self.best = better
                save_checkpoint(self.run.checkpoints / "best", self.model, meta)
            state = self._resume_state(epoch)  # collective under DDP: every rank builds it
            if main:
                save_checkpoint(self.run.checkpoints / "last", self.model, meta)
                if epoch in r.log.checkpoint_epochs:
                    save_checkpoint(self.run.checkpoints / f"epoch-{epoch}", self.model, meta)
                self.run.write_metrics(self.rows)
                save_resume_state(self.run.resume_path, state)
                self.committed_epoch = epoch  # the commit point: named if a later write fails (disk full)
            if not self.quiet and main:
                self.log(format_row(row))
            pending = torch.tensor([float(bool(self.stop and self.stop.requested))], device=self.device)
            if epoch < r.optim.epochs and self.comm.all_reduce(pending, op="max").item() > 0:
                raise _StopRequested(epoch, 0)
        if not main:
            return {}
        self.method.save_artifacts(self.run.path)
        return self.run.write_summary(self.rows, self.best, self.recipe)


def check_model_size(name: str, kwargs: dict[str, Any], bundle: DataBundle, device: torch.device) -> None:
    """Refuse a model whose parameters cannot fit (e.g. model.kwargs.hidden: [10000000000000]):
    it is built on the meta device first, which allocates nothing."""
    from advmem.limits import check_fits

    try:
        with torch.device("meta"):
            probe = build_model(name, in_channels=bundle.in_channels, num_classes=bundle.num_classes,
                                image_size=bundle.image_size, mean=bundle.mean, std=bundle.std, **dict(kwargs))
    except UserError:
        raise
    except Exception:  # a model that cannot be built on meta: nothing to estimate, the real build decides
        return
    n = sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())
    available, where = None, "this machine's memory"
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
        where = f"the GPU's memory ({torch.cuda.get_device_name(device)})"
    # float32 weights, gradients, momentum and one copy (checkpointing, attacks' views)
    check_fits(16 * n, f"model {name} with kwargs {kwargs} ({n:.3g} parameters)",
               "lower its size in model.kwargs", available=available, where=where)


def recipe_hash_matches(recipe: Recipe, stored: Any) -> bool:
    """Whether `stored` (a resume state's recipe_hash) is this recipe's hash, as computed now or as
    advmem computed it before resume-settable keys stopped leaving an empty section in the hashed
    data (one variant per subset of the sections those keys live in: they may have been set then),
    and before the method's name was always hashed (`Recipe.hash(legacy_method_names=True)`)."""
    from itertools import combinations

    from advmem.recipe import RESUME_SETTABLE

    sections = sorted({dotted.split(".")[0] for dotted in RESUME_SETTABLE})
    subsets = [c for n in range(len(sections) + 1) for c in combinations(sections, n)]
    return isinstance(stored, str) and any(stored == recipe.hash(keep_empty=c, legacy_method_names=legacy)
                                           for legacy in (False, True) for c in subsets)


def _plain(value: Any) -> Any:
    """numpy / torch scalars a callback may put in a metrics row, as plain Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class EpochFailure(RunFailure):
    """An epoch that must not be saved (every batch skipped, a non-finite weight or buffer); `record`
    goes to failure.json."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class _StopRequested(Exception):
    def __init__(self, epoch: int, step: int, phase: str = "training") -> None:
        self.epoch, self.step, self.phase = epoch, step, phase


class _StopBetweenBatches:
    """A dataset whose `batches` raise _StopRequested before the next batch once a stop is requested
    (the same batches otherwise: no device work, nothing computed differs)."""

    def __init__(self, dataset, stop: GracefulStop, epoch: int) -> None:
        self.dataset, self.stop, self.epoch = dataset, stop, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, *args, **kwargs):
        for batch in self.dataset.batches(*args, **kwargs):
            if self.stop.requested:
                raise _StopRequested(self.epoch, 0, phase="evaluation")
            yield batch


def format_row(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"lr {row['lr']:.4g}", f"loss {row['train_loss']:.4f}"]
    for split in ("train", "val", "test"):
        if f"{split}_nat_acc" in row:
            rob = row.get(f"{split}_rob_acc")
            parts.append(f"{split} {100 * row[f'{split}_nat_acc']:.1f}/" + (f"{100 * rob:.1f}" if rob is not None else "-"))
    parts.append(f"{row['images_per_s']:.0f} img/s")
    parts.append(f"{row['epoch_time']:.1f}s")
    return "  ".join(parts)
