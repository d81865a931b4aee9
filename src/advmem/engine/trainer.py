"""The trainer, in execution order: `setup`, then `fit` -> `_fit` (the epoch loop) -> `train_epoch`
-> `train_step`, then the per-epoch evaluation.

One step: the method builds adversarial examples (eval-mode attack), the model goes to train mode
for the method's loss, backward, the non-finite check, the optimizer step, the callbacks'
`on_step_end`. Step metrics (loss, accuracy, squared global gradient norm) are accumulated on the
device and read once per epoch, so the step never waits on the host. One epoch: the steps, then
(rank 0) clean and robust accuracy on train (fixed subset), val and test, the callbacks'
`on_epoch_end`, checkpoints `best`/`last`, metrics, and the resume state (the commit point:
a killed run continues where its last completed epoch ended), then summary.json and the callbacks'
`on_epoch_saved`.

Elsewhere: `advmem.training.train` builds a Trainer and its callbacks and owns the run directory's
lock; `engine.resume` the resume state; `engine.seeding` every random stream; `engine.safety`
the failures and stops raised here.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from advmem.version import __version__
from advmem.data import DataBundle, build_data
from advmem.device import resolve_device, use_deterministic
from advmem.engine import distributed
from advmem.engine.callbacks import TrainerView, as_callback
from advmem.engine.checkpoint import (best_split, checkpoint_meta, improved_best, model_normalization,
                                     save_checkpoint, save_resume_state)
from advmem.engine.evaluate import eval_attack_of, eval_cost_note, evaluate_split
from advmem.engine.perf import resolve_perf
from advmem.engine.resume import load_resume, resume_state
from advmem.engine.rundir import RunDir
from advmem.engine.safety import EpochFailure, GracefulStop, NonFinite, StopBetweenBatches, StopRequested
from advmem.engine.schedules import lr_at
from advmem.engine.seeding import (EVAL_STREAMS, TRAIN_EVAL_SUBSET, TRAIN_ORDER, epoch_generator, rank_seed,
                                    seed_model_init, subset_generator)
from advmem.errors import Interrupted, RunFailure, UserError
from advmem.io import atomic_write_json
from advmem.limits import check_fits
from advmem.methods import build_method
from advmem.models import build_model
from advmem.progress import Progress, format_duration, interval, pass_of
from advmem.recipe import Recipe


@dataclass
class Trainer:
    """One training run on one process (one rank under torchrun). `callbacks`: what `train` assembled
    (a Trainer built directly runs only the callbacks it is given)."""

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
        if not self.quiet:
            interval()  # a bad ADVMEM_PROGRESS_INTERVAL is refused here, before the run directory is touched
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
        # Three names for one set of parameters:
        #   self.model       the eager module: saved, evaluated, averaged (EMA), seen by callbacks;
        #   self.step_model  the same module prepared for the step (torch.compile'd when perf.compile,
        #                    else self.model itself): the attack and the method's hooks run on it;
        #   self.train_model step_model wrapped for DDP (made at the end of setup; step_model itself
        #                    without torchrun): only the outer loss runs through it, so gradients are
        #                    all-reduced but attack passes fire no DDP hooks.
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
            load_resume(self)
        self.committed_epoch = self.start_epoch - 1
        self.train_model = self.comm.wrap(self.step_model, self.device)
        self._first_bad = torch.zeros(2, device=self.device)  # see _check_step
        self.phase: Progress | None = None  # the running epoch's progress display

    def _train_eval_subset(self):
        n = len(self.bundle.train)
        k = min(self.recipe.eval.train_subset, n)
        g = subset_generator(self.recipe.seed, TRAIN_EVAL_SUBSET)
        idx = torch.randperm(n, generator=g)[:k].sort().values
        return self.bundle.train.subset(idx.to(self.bundle.train.y.device))

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
        except StopRequested as err:
            signum = self.stop.signum if self.stop and self.stop.signum else 15
            done = self.start_epoch - 1 if not self.rows else self.rows[-1]["epoch"]
            where = (f"during the evaluation of epoch {err.epoch}; that epoch is discarded" if err.phase == "evaluation"
                     else f"at epoch {err.epoch} step {err.step}; the partial epoch is discarded"
                     if err.step else f"after epoch {done}")
            raise Interrupted(f"stopped {where}; the run is consistent at epoch {done}; "
                              f"continue with: advmem train --resume {self.run.path}", signum) from None

    def _fit(self) -> dict[str, Any]:
        """The epoch loop from `start_epoch`: train, evaluate (rank 0, every `eval.every` epochs and the
        last), callbacks, best/last checkpoints, metrics, then the resume state (the commit point).
        Returns the summary (rank 0) or {} (other ranks)."""
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
        fit_start = time.perf_counter()
        for epoch in range(self.start_epoch, r.optim.epochs + 1):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch}
            with Progress(f"epoch {epoch}/{r.optim.epochs}", enabled=not self.quiet) as phase:
                self.phase = phase  # callbacks show their own passes in it (TrainerView.progress)
                row.update(self.train_epoch(epoch, phase))
                if main and (epoch % r.eval.every == 0 or epoch == r.optim.epochs):
                    e0 = time.perf_counter()
                    row.update(self.evaluate_epoch(epoch, phase))
                    if epoch == r.optim.epochs and r.eval.final_full and r.data.test_size is not None:
                        row.update(self.evaluate_full_test(epoch, phase))
                    row["eval_time"] = time.perf_counter() - e0
                if main:
                    for callback in self.callbacks:
                        callback.on_epoch_end(self.view, epoch, row)
            self.phase = None
            if self.comm.enabled:
                row["world_size"] = self.comm.world_size
            row["epoch_time"] = time.perf_counter() - t0
            self._check_finite_state(epoch)  # before anything of this epoch is saved
            self.rows.append(row)
            meta = checkpoint_meta(r, self.bundle, self.model, epoch, row) if main else {}
            better = improved_best(self.best, row, epoch=epoch, split=split) if main else None
            if better is not None:
                self.best = better
                save_checkpoint(self.run.checkpoints / "best", self.model, meta)
            state = resume_state(self, epoch)  # collective under DDP: every rank builds it
            if main:
                save_checkpoint(self.run.checkpoints / "last", self.model, meta)
                if epoch in r.log.checkpoint_epochs:
                    save_checkpoint(self.run.checkpoints / f"epoch-{epoch}", self.model, meta)
                self.run.write_metrics(self.rows)
                save_resume_state(self.run.resume_path, state)
                self.committed_epoch = epoch  # the commit point: named if a later write fails (disk full)
                if epoch < r.optim.epochs:  # an interrupted run keeps a summary; the final one is written below
                    self.run.write_summary(self.rows, self.best, r, complete=False)
                for callback in self.callbacks:
                    callback.on_epoch_saved(self.view, epoch)
            if not self.quiet and main:
                done = epoch - self.start_epoch + 1  # run ETA: mean wall time of this fit's epochs x epochs left
                self.log(format_row(row, eta=(time.perf_counter() - fit_start) / done * (r.optim.epochs - epoch)))
            pending = torch.tensor([float(bool(self.stop and self.stop.requested))], device=self.device)
            if epoch < r.optim.epochs and self.comm.all_reduce(pending, op="max").item() > 0:
                raise StopRequested(epoch, 0)
        if not main:
            return {}
        self.method.save_artifacts(self.run.path)
        return self.run.write_summary(self.rows, self.best, self.recipe)

    def train_epoch(self, epoch: int, phase: Progress | None = None) -> dict[str, float]:
        """One pass over the training set (this rank's shard under DDP) at the epoch's learning rate,
        the data order drawn from (seed, epoch); returns the epoch's training metrics (one device
        read at the end: the step sums and the first non-finite step together). `phase`: the
        epoch's progress display."""
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
        bar = pass_of(phase, "train", len(self.bundle.train))  # rank 0 counts its shard x world size
        start = time.perf_counter()
        skipped = 0
        self._first_bad = torch.zeros(2, device=dev)  # (step, 1 loss | 2 gradient) of the first non-finite step
        for step, batch in enumerate(batches, start=1):
            skip, stop = self.train_step(batch, epoch, step, sums)
            if stop:
                raise StopRequested(epoch, step)
            if skip:
                skipped += 1
                continue
            n_batches += 1
            n_images += batch.y.shape[0]
            bar.update(batch.y.shape[0] * world)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - start
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

    def evaluate_epoch(self, epoch: int, phase: Progress | None = None) -> dict[str, float]:
        """Clean and robust accuracy on the train subset, val and test (rank 0); `phase`: the display."""
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
                                      robust_set=self._stoppable(robust_set, epoch), progress=phase))
        return row

    def evaluate_full_test(self, epoch: int, phase: Progress | None = None) -> dict[str, float]:
        """The last epoch's evaluation on the full test set when data.test_size subsets it."""
        r = self.recipe
        full = self._stoppable(build_data(r.data.model_copy(update={"test_size": None}), self.device).test, epoch)
        return evaluate_split(self.model, "test_full", full, self.eval_attack, r.eval.batch_size,
                              epoch_generator(r.seed, epoch, stream=EVAL_STREAMS["test"]),
                              progress=phase)

    def _stoppable(self, dataset, epoch: int):
        """`dataset` for an evaluation pass that a SIGTERM/SIGINT stops before its next batch (single
        process; under DDP the other ranks wait in a collective, so rank 0 finishes the pass)."""
        if self.stop is None or self.comm.enabled or dataset is None:
            return dataset
        return StopBetweenBatches(dataset, self.stop, epoch)

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

    def _write_failure(self, record: dict[str, Any]) -> int:
        """Write failure.json (rank 0) and return the last good (committed) epoch."""
        last_good = self.start_epoch - 1 if not self.rows else self.rows[-1]["epoch"]
        if self.comm.is_main:
            atomic_write_json(self.run.path / "failure.json", {
                **record, "on_nonfinite": self.recipe.reliability.on_nonfinite, "last_good_epoch": last_good,
                "advmem_version": __version__})
        return last_good


def check_model_size(name: str, kwargs: dict[str, Any], bundle: DataBundle, device: torch.device) -> None:
    """Refuse a model whose parameters cannot fit (e.g. model.kwargs.hidden: [10000000000000]):
    it is built on the meta device first, which allocates nothing."""
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


def format_row(row: dict[str, Any], eta: float | None = None) -> str:
    """The epoch's log line; `eta`: seconds the run has left (shown when positive)."""
    parts = [f"epoch {row['epoch']:>3}", f"lr {row['lr']:.4g}", f"loss {row['train_loss']:.4f}"]
    for split in ("train", "val", "test"):
        if f"{split}_nat_acc" in row:
            rob = row.get(f"{split}_rob_acc")
            parts.append(f"{split} {100 * row[f'{split}_nat_acc']:.1f}/" + (f"{100 * rob:.1f}" if rob is not None else "-"))
    parts.append(f"{row['images_per_s']:.0f} img/s")
    parts.append(f"{row['epoch_time']:.1f}s")
    if eta:
        parts.append(f"run ETA {format_duration(eta)}")
    return "  ".join(parts)
