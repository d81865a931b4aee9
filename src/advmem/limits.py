"""Size checks made before allocating: a recipe asking for more memory than the machine has
(`data.synthetic.n_train: 1e13`, `model.kwargs.hidden: [1e13]`) gets one line, not a
MemoryError traceback or the OOM killer half-way through building the run."""

from __future__ import annotations

import os

from advmem.errors import UserError


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _human(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.3g} {unit}" if unit != "PB" or nbytes < 1e6 else f"{nbytes:.2e} PB"
        nbytes /= 1000
    return f"{nbytes} B"


def check_fits(nbytes: float, what: str, fix: str, available: int | None = None, where: str = "this machine's memory") -> None:
    """Raise UserError if `nbytes` (an estimate of what `what` needs) exceeds `available`
    (default: the physical memory)."""
    available = physical_memory_bytes() if available is None else available
    if available is not None and nbytes > available:
        raise UserError(f"{what} needs about {_human(nbytes)}, more than {where} ({_human(available)}); {fix}")
