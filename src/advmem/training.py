"""The composition root of training: `train(recipe)` -> run directory.

It assembles the callbacks a recipe asks for (`run_callbacks`, the one place they are chosen),
sets up a `engine.trainer.Trainer`, then locks and creates the run directory, fits, and draws
curves.png from the metrics it wrote (also during the fit, `Curves`). It sits above the engine,
the trackers and the report, so none of those import each other for it.
"""

from __future__ import annotations

import errno
import json
import re
import time
from pathlib import Path
from typing import Any

from advmem.engine import distributed
from advmem.engine.callbacks import Callback
from advmem.engine.ema import WeightEMA
from advmem.engine.rundir import RunDir
from advmem.engine.safety import GracefulStop, RunLock
from advmem.engine.trainer import Trainer
from advmem.errors import RunFailure
from advmem.io import atomic_write_json
from advmem.recipe import Recipe
from advmem.track.corruption import CorruptionRecorder
from advmem.track.grad_consistency import GradConsistency
from advmem.track.tensorboard import TensorBoardCallback
from advmem.engine.checkpoint import user_code_record


def run_callbacks(recipe: Recipe, run: RunDir, extra: list[Any], *, main: bool) -> list[Any]:
    """The callbacks of a run, in the order they are called: the corruption record (always; nothing
    on clean data), the per-sample tracker and the gradient-consistency signal when set, the
    caller's `extra`, TensorBoard (rank 0), the weight EMA (so it sees every other key), then
    curves.png during the fit (rank 0)."""
    callbacks: list[Any] = [CorruptionRecorder()]
    if recipe.track.per_sample is not None:
        from advmem.track.per_sample import PerSampleTracker  # pyarrow: imported only when tracking

        callbacks.append(PerSampleTracker(recipe))
    if recipe.track.grad_consistency is not None:
        callbacks.append(GradConsistency(recipe))
    callbacks += extra
    if recipe.log.tensorboard and main:
        callbacks.append(TensorBoardCallback(run.path / "tb"))
    if recipe.optim.ema is not None:
        callbacks.append(WeightEMA(recipe.optim.ema))
    if main:
        callbacks.append(Curves(run))
    return callbacks


def plot_run_curves(run: RunDir) -> None:
    """curves.png from the run's metrics.jsonl (a report step: it reads the run directory)."""
    from advmem.report.plots import plot_run_curves as plot  # matplotlib: seconds to import, only when drawn

    plot(run)


CURVES_EVERY = 30.0  # seconds between redraws of curves.png while training
CURVES_SHARE = 0.02  # and at most this share of the time: a draw took 0.3-1.5 s on a loaded 2-core CPU


class Curves(Callback):
    """curves.png while training, so a run killed outright (OOM, kill -9) still has one: once an
    epoch is committed and CURVES_EVERY seconds have passed since the fit started or the last draw
    (longer when drawing is slow: at most CURVES_SHARE of the time). A run stopped cleanly draws
    when it stops, and `train` draws the final one after the last epoch."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.drawn = time.monotonic()
        self.cost = 0.0

    def on_fit_start(self, view) -> None:
        self.drawn = time.monotonic()

    def on_epoch_saved(self, view, epoch: int) -> None:
        if epoch == view.recipe.optim.epochs:
            return
        if time.monotonic() - self.drawn >= max(CURVES_EVERY, self.cost / CURVES_SHARE):
            start = time.monotonic()
            plot_run_curves(self.run)
            self.drawn = time.monotonic()
            self.cost = self.drawn - start


def start_message(run: RunDir, start_epoch: int, epochs: int) -> str:
    """The first line of a fit: where it writes and, when resuming, from which epoch."""
    if start_epoch > epochs:
        return f"advmem train: {run.path} has completed all {epochs} epochs; nothing to train"
    if start_epoch > 1:
        return f"advmem train: resuming {run.path} at epoch {start_epoch}/{epochs}"
    return f"advmem train: run directory {run.path}"


def train(recipe: Recipe, *, run_root: Path | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, callbacks: list[Any] | None = None,
          run_path: Path | None = None) -> tuple[RunDir, dict[str, Any]]:
    """Validate, set up, then (only then) lock and create the run directory and train.

    The run directory is `run_path` if given (`--resume DIR`: a copied or moved run trains in
    DIR, whatever name and output_root its recipe.yaml records), else run_root (default the
    recipe's output_root) / name. Under torchrun every rank runs this; rank 0 alone locks and
    writes the run directory. SIGTERM/SIGINT stop after the current step (Interrupted); a lost
    DDP peer is a RunFailure.
    """
    if run_path is not None:
        run = RunDir(Path(run_path))
        if run.path.name != recipe.name and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run.path.name):
            recipe = recipe.model_copy(update={"name": run.path.name})  # the name sidecars and summary record
    else:
        run = RunDir(Path(run_root or recipe.output_root) / recipe.name)
    comm = distributed.init_distributed(recipe, run_path=str(run.path))
    completed = False
    try:
        if comm.is_main:
            run.check_start(resume=resume, overwrite=overwrite)
        callbacks = run_callbacks(recipe, run, list(callbacks or []), main=comm.is_main)
        trainer = Trainer(recipe, run, quiet=quiet or not comm.is_main, callbacks=callbacks, comm=comm)
        trainer.setup(resume=resume)
        if comm.is_main and not quiet:
            trainer.log(start_message(run, trainer.start_epoch, recipe.optim.epochs))
        lock = RunLock(run.path, log=trainer.log) if comm.is_main else None
        with GracefulStop(log=trainer.log) as stop:
            trainer.stop = stop
            if lock is not None:
                lock.acquire()
            try:
                if comm.is_main:
                    run.prepare(recipe, trainer.bundle.info, overwrite=overwrite and not resume)
                    record_user_code(run, recipe, log=trainer.log)
                try:
                    summary = trainer.fit()
                except Exception:  # a stop (Interrupted), a failure, a crash: curves.png up to the last committed epoch
                    if comm.is_main and getattr(trainer, "committed_epoch", 0) > 0:
                        _refresh_curves(run)
                    raise
                if comm.is_main:
                    plot_run_curves(run)  # curves.png, drawn from metrics.jsonl as written
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                done = getattr(trainer, "committed_epoch", 0)
                state = (f"the run is consistent at epoch {done} (files are replaced atomically, none is torn)"
                         if done > 0 else "no epoch was completed")
                raise RunFailure(f"disk full ({err.strerror}) while writing {err.filename or 'a file'}; {state}; "
                                 f"free space, then continue with: advmem train --resume {run.path}") from None
            finally:
                if lock is not None:
                    lock.release()
        completed = True
        return run, summary
    except Exception as err:
        if comm.enabled and distributed.is_comm_error(err):
            raise distributed.peer_failure(comm, err) from err
        raise
    finally:
        distributed.shutdown(comm, completed=completed)


def record_user_code(run: RunDir, recipe: Recipe, log) -> None:
    """user_code.json: what the run imported (advmem.plugins), written when the run starts; a resumed
    run whose code has changed since says so (the record kept is the one the run started with)."""
    record = user_code_record(recipe)
    if record is None:
        return
    if run.user_code_path.is_file():
        try:
            before = json.loads(run.user_code_path.read_text())
        except (OSError, ValueError):
            before = None
        if before != json.loads(json.dumps(record)):
            log(f"note: the user code differs from {run.user_code_path} (recorded when the run started); "
                "the epochs from here on are trained with the code as it is now")
        return
    atomic_write_json(run.user_code_path, record)


def _refresh_curves(run: RunDir) -> None:
    """curves.png after a stop: best effort, so a plotting problem never hides why the run stopped."""
    try:
        plot_run_curves(run)
    except Exception:  # noqa: BLE001 - the stop's own error is the one to report
        pass
