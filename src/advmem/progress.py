"""Progress of every long phase, shown one way everywhere (training, evaluation, eval, sweeps).

On a terminal: a tqdm bar. When stderr is not a terminal (nohup, Slurm, a pipe) a bar's carriage
returns would fill the log, so instead a plain line, formatted by tqdm's own `format_meter`, at most
every `ADVMEM_PROGRESS_INTERVAL` seconds (default 30; 0 turns the lines off). Disabled (`--quiet`):
nothing at all.

A `Progress` is a phase (an epoch, one checkpoint's evaluation, a sweep); `child()` opens one pass
inside it (a split's PGD pass, one attack). The plain-line clock belongs to the phase, so a phase
made of many short passes still prints a line every interval. A daemon thread does the waiting and
the printing; it only reads counters, so nothing computed depends on it.

    with Progress("epoch 3/10") as epoch:
        with epoch.child("train", total=50000) as bar:
            for batch in batches:
                ...
                bar.update(len(batch))
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any

from advmem.errors import UserError

INTERVAL_ENV = "ADVMEM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
TERMINAL_REFRESH = 1.0  # seconds: a bar's elapsed time and ETA keep moving between sparse updates
PLAIN = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
PLAIN_NO_TOTAL = "{desc}: [{elapsed}{postfix}]"


def interval() -> float:
    """Seconds between plain progress lines, from ADVMEM_PROGRESS_INTERVAL (0: no lines)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{INTERVAL_ENV}={text!r}: expected seconds between progress lines (e.g. 30), or 0 "
                        "for none")
    return value


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def format_line(desc: str, n: float, total: float | None, elapsed: float, *, unit: str = "img",
                postfix: str | None = None, initial: float = 0) -> str:
    """The plain progress line (tqdm's format_meter: percentage, count, elapsed<remaining, rate)."""
    from tqdm import tqdm

    if total is None:
        return tqdm.format_meter(n, None, elapsed, prefix=desc, bar_format=PLAIN_NO_TOTAL,
                                 postfix=postfix)
    return tqdm.format_meter(n, total, elapsed, prefix=desc, unit=unit, unit_scale=total >= 10_000,
                             bar_format=PLAIN, postfix=postfix, initial=initial)


class Progress:
    """A phase with an optional count: `update(n)` / `set(n)`, `child(desc, total)`, `close()`
    (also a context manager). `total=None`: no count, only elapsed time. `initial`: work done
    before this process started (a resumed sweep), so the rate and ETA count only what is new.
    `since`: the phase this one continues, whose plain-line clock it keeps (no longer silence
    than the interval across the two)."""

    def __init__(self, desc: str, total: float | None = None, *, unit: str = "img", enabled: bool = True,
                 initial: float = 0, since: Progress | None = None, _parent: Progress | None = None) -> None:
        self.root = self if _parent is None else _parent.root
        self.desc = desc if _parent is None else " ".join(s for s in (_parent.desc, desc) if s)
        self.total, self.unit, self.initial = total, unit, initial
        self.n = initial
        self.postfix: str | None = None
        self.start = time.monotonic()
        self.printed = False
        self.closed = False
        self._bar = None
        if _parent is None:
            self.mode, self._interval = "off", TERMINAL_REFRESH
            if enabled and stderr_is_terminal():
                self.mode = "bar"
            elif enabled:
                self._interval = interval()
                self.mode = "plain" if self._interval > 0 else "off"
            self._open: list[Progress] = []
            self._last_line = since.root._last_line if since is not None else self.start
            self._lock = threading.Lock()
            self._stop = threading.Event()
            self._thread = None
            if self.mode != "off":
                self._thread = threading.Thread(target=self._tick, name="advmem-progress", daemon=True)
                self._thread.start()
        if self.root.mode == "bar" and (total is not None or _parent is not None):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=self.desc, unit=unit,
                             unit_scale=total is not None and total >= 10_000, leave=False, file=sys.stderr,
                             dynamic_ncols=True)
        with self.root._lock:
            self.root._open.append(self)

    def child(self, desc: str, total: float | None = None, *, unit: str = "img") -> Progress:
        """One pass inside this phase, shown with the phase's name in front of `desc`."""
        return Progress(desc, total, unit=unit, _parent=self)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set(self, n: float, postfix: str | None = None) -> None:
        """Absolute position (and the text after the rate), for counts read from elsewhere."""
        self.postfix = postfix
        if self._bar is not None:
            self._bar.n = n
            self._bar.set_postfix_str(postfix or "", refresh=False)
            self._bar.refresh()
        self.n = n

    def line(self) -> str:
        return format_line(self.desc, self.n, self.total, time.monotonic() - self.start, unit=self.unit,
                           postfix=self.postfix, initial=self.initial)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        root = self.root
        with root._lock:
            if self in root._open:
                root._open.remove(self)
            if root.mode == "plain" and self.printed:
                self._print(self.line())  # a long pass ends with its final line
            if self._bar is not None:
                self._bar.close()
        if self is root and self._thread is not None:
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.root._last_line = time.monotonic()

    def _tick(self) -> None:
        """The display thread: a plain line once per interval (of the innermost open pass), or a
        bar refresh each second on a terminal."""
        while True:
            wait = (self._last_line + self._interval - time.monotonic()) if self.mode == "plain" else self._interval
            if self._stop.wait(max(wait, 0.0)):
                return
            with self._lock:
                current = self._open[-1] if self._open else None
                if current is None:  # the phase is closing
                    self._last_line = time.monotonic()
                    continue
                if self.mode == "plain":
                    if time.monotonic() - self._last_line >= self._interval:
                        current.printed = True
                        self._print(current.line())
                elif current._bar is not None:
                    current._bar.refresh()


def pass_of(phase: Progress | None, desc: str, total: float | None = None, *, unit: str = "img") -> Progress:
    """A pass inside `phase`, or one that shows nothing when there is no phase (a caller that
    evaluates without a display: the EMA, a study, a test)."""
    if phase is None:
        return Progress(desc, total, unit=unit, enabled=False)
    return phase.child(desc, total, unit=unit)


def format_duration(seconds: float) -> str:
    """[H:]MM:SS, as tqdm writes elapsed and remaining times."""
    from tqdm import tqdm

    return tqdm.format_interval(max(0.0, seconds))
