"""REPRODUCTION.md: one generated section per study, between markers, other sections left intact.

    <!-- NAME:begin -->
    ...generated markdown...
    <!-- NAME:end -->

Studies call `update_reproduction(name, markdown)`; a section that is not there yet is appended.
The read-modify-write holds an exclusive lock on a sibling lock file, so two studies finishing
at once cannot lose each other's section, and the file is replaced atomically.
"""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

from advmem.engine.io import atomic_write_text
from advmem.errors import UserError

HEADER = """# Reproduction

How to reproduce the paper's findings with advmem, and what advmem's own runs showed. Each
section below is written by the study command named in it (`advmem study ...`) from that
study's output; do not edit between the markers by hand, rerun the study instead.
"""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def repository_root() -> Path:
    """The checkout this advmem runs from (where pyproject.toml is), else the working directory."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def default_reproduction_path() -> Path:
    return repository_root() / "REPRODUCTION.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, markdown: str) -> str:
    """`text` with section `name` set to `markdown` (appended at the end if absent)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"section name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
    begin, end = markers(name)
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    found = pattern.findall(text)
    if len(found) > 1:
        raise UserError(f"REPRODUCTION.md has section '{name}' {len(found)} times; delete the duplicates")
    if found:
        return pattern.sub(lambda _: block, text, count=1)
    if text.count(begin) or text.count(end):
        raise UserError(f"REPRODUCTION.md has an unmatched marker of section '{name}'; fix or delete it")
    return text.rstrip("\n") + "\n\n" + block + "\n"


def update_reproduction(section_name: str, markdown: str, path: str | Path | None = None) -> Path:
    """Write `markdown` as section `section_name` of REPRODUCTION.md (the repository's by default)."""
    path = Path(path) if path is not None else default_reproduction_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            text = path.read_text() if path.exists() else HEADER
            atomic_write_text(path, replace_section(text, section_name, markdown))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
