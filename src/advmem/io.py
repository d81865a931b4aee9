"""Crash-safe file writes: write a temporary file, flush, fsync, then rename over the target.

A kill at any moment leaves either the previous version or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable
from advmem.errors import UserError


def _file_mode() -> int:
    """0666 minus the umask: what open() would give (mkstemp alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, then atomically replace `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a failed write() (ENOSPC) names no file: say which one
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# Recipes, sidecars and other small inputs a user may hand advmem: larger files are refused
# before they are read (a 50 MB recipe of unknown keys took minutes and gigabytes to reject).
MAX_INPUT_BYTES = 1 << 20


def read_input_text(path: str | Path, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of a small input file, or a one-line UserError (too large, not UTF-8,
    unreadable). FileNotFoundError is re-raised for callers that treat a missing file specially."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise UserError(f"{path}: {what} is {size / 1e6:.1f} MB, more than the {limit >> 20} MB a {what} may be; "
                            f"pass the right file (a {what} is a few kB)")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a {what} file; pass the file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    if len(data) > limit:  # grew while being read, or not a regular file
        raise UserError(f"{path}: {what} is more than {limit >> 20} MB; pass the right file (a {what} is a few kB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}); "
                        "save it as UTF-8") from None
