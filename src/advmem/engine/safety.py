"""Crash safety for a run directory: an exclusive lock, and a clean stop on SIGTERM/SIGINT.

The lock (`<run>/.lock`, created with O_CREAT|O_EXCL) holds the pid, the host and the pid's
start time, so two processes never write the same run; a lock left by a process that is no
longer alive on this host is taken over with a message. A lock from another host cannot be
checked and is refused with the command that removes it.

`GracefulStop` turns the first SIGTERM/SIGINT into a flag that the trainer reads after every
step: the step finishes, the partial epoch is discarded, and the run exits with the resume
state of its last completed epoch (written atomically at that epoch's end). A second signal
stops at once — still safe, because every file in the run directory is replaced atomically.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from advmem.errors import RunFailure, UserError

LOCK_NAME = ".lock"


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; fields after the last ')' are fixed
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    if start_time is not None:
        now = _process_start_time(pid)
        if now is not None and now != start_time:
            return False  # the pid was reused by a later process
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """None: no lock. {}: empty or half-written (a holder between creating and writing it, or
    debris). {"corrupt": True}: complete but not advmem's lock (e.g. `null`, `[1, 2]`): stale."""
    if path.is_dir():
        raise UserError(f"{path} is a directory, not advmem's lock file; remove it (rm -r '{path}') and retry")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as stale below
    if not isinstance(info, dict) or "pid" not in info or "hostname" not in info:
        return {"corrupt": True}
    return info


def lock_holder(run_path: Path) -> dict[str, Any] | None:
    """The live holder of the run's lock, or None if the run is free (no lock, or a stale one)."""
    path = Path(run_path) / LOCK_NAME
    info = read_lock(path)
    if info is None:
        return None
    if not info:  # unreadable: a holder between creating and writing it, or debris of a crash
        try:
            young = time.time() - path.stat().st_mtime < 10
        except OSError:
            return None
        return {"pid": "?", "hostname": socket.gethostname(), "empty": True} if young else None
    if info.get("corrupt"):
        return None
    if info.get("hostname") != socket.gethostname():
        return info  # cannot check a process on another host: assume it is alive
    pid = info.get("pid")
    if pid == "?":
        return info
    if not isinstance(pid, int) or not _pid_alive(pid, info.get("start_time")):
        return None
    if pid == os.getpid():
        return None
    return info


def _describe(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid')} on host {info.get('hostname')}"


def _busy_error(run_path: Path, info: dict[str, Any]) -> UserError:
    if info.get("empty"):
        return UserError(
            f"{Path(run_path) / LOCK_NAME} is an empty lock file: another advmem is creating it this instant, or one "
            "could not write it (a full disk?) and left it; retry in 10 s (an empty lock older than that is taken "
            "over), or delete it now if no advmem is running on this run")
    if info.get("hostname") != socket.gethostname():
        return UserError(
            f"{run_path} is locked by {_describe(info)} (another machine, cannot check it); if that process is "
            f"gone, delete {Path(run_path) / LOCK_NAME} and retry")
    return UserError(f"{run_path} is being written by {_describe(info)}; wait for it to finish or stop it "
                     f"(kill {info.get('pid')}), then resume with 'advmem train --resume {run_path}'")


def check_unlocked(run_path: Path) -> None:
    """Raise UserError if another live process holds the run (reads only, changes nothing)."""
    info = lock_holder(run_path)
    if info is not None:
        raise _busy_error(run_path, info)


class RunLock:
    """Exclusive lock on a run directory; use as a context manager or acquire()/release()."""

    def __init__(self, run_path: str | Path, log: Callable[[str], None] | None = None) -> None:
        self.path = Path(run_path) / LOCK_NAME
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.held = False

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run directory {self.path.parent} ({err.strerror or err}); set "
                            "output_root (or --name) to a writable directory") from None
        body = json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                           "start_time": _process_start_time(os.getpid()), "created": time.time()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = read_lock(self.path)
                if info is None:
                    continue  # released in the meantime
                holder = lock_holder(self.path.parent)
                if holder is not None:
                    raise _busy_error(self.path.parent, holder) from None
                what = _describe(info) if info and not info.get("corrupt") else "an unreadable lock file"
                self.log(f"advmem: taking over the stale lock of {self.path.parent} (left by {what}, no longer running)")
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            except OSError as err:
                raise UserError(f"cannot create the lock file {self.path} ({err.strerror or err}); set output_root "
                                "(or --name) to a writable directory") from None
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as err:  # e.g. a full disk: leave no empty lock behind for the next try
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                raise UserError(f"cannot write the lock file {self.path} ({err.strerror or err}); "
                                "free disk space (or fix the permissions) and retry") from None
            self.held = True
            return
        raise UserError(f"could not lock {self.path.parent}: another process keeps taking the lock; retry")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info = read_lock(self.path)
        if info and info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class GracefulStop:
    """First SIGTERM/SIGINT sets `requested` (the trainer stops after the current step); a second
    one raises KeyboardInterrupt at once. Handlers are installed only in the main thread and are
    restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"\nadvmem: {signal.Signals(signum).name} received: stopping after the current step "
                 "(send it again to stop at once; either way the run directory stays consistent)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# -------------------------------------------------------------------------------------------------
# Failures and stops inside an epoch (raised by the trainer, turned into failure.json or Interrupted)


class NonFinite(RunFailure):
    """A step produced a non-finite loss or gradient and reliability.on_nonfinite is 'stop'."""

    def __init__(self, epoch: int, step: int, quantity: str) -> None:
        super().__init__(f"epoch {epoch} step {step}: non-finite {quantity}")
        self.epoch, self.step, self.quantity = epoch, step, quantity


class EpochFailure(RunFailure):
    """An epoch that must not be saved (every batch skipped, a non-finite weight or buffer); `record`
    goes to failure.json."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class StopRequested(Exception):
    """A SIGTERM/SIGINT seen between batches: the partial epoch (or its evaluation) is discarded."""

    def __init__(self, epoch: int, step: int, phase: str = "training") -> None:
        self.epoch, self.step, self.phase = epoch, step, phase


class StopBetweenBatches:
    """A dataset whose `batches` raise StopRequested before the next batch once a stop is requested
    (the same batches otherwise: no device work, nothing computed differs)."""

    def __init__(self, dataset, stop: GracefulStop, epoch: int) -> None:
        self.dataset, self.stop, self.epoch = dataset, stop, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, *args, **kwargs):
        for batch in self.dataset.batches(*args, **kwargs):
            if self.stop.requested:
                raise StopRequested(self.epoch, 0, phase="evaluation")
            yield batch
