"""REPRODUCTION.md: one generated section per study, between markers, other sections left intact.

    <!-- NAME:begin -->
    ...generated markdown...
    <!-- NAME:end -->

Studies call `update_reproduction(name, markdown)`; a section that is not there yet is appended.
The read-modify-write holds an exclusive lock on a sibling lock file, so two studies finishing
at once cannot lose each other's section, and the file is replaced atomically.

Nothing writes REPRODUCTION.md unless asked: `reproduction_target` gives the file a study may
update, which is `--reproduction PATH` when given, else the REPRODUCTION.md of the advmem
checkout holding the current directory (found by walking up to a pyproject.toml of project
`advmem` next to a REPRODUCTION.md), and only for the scales whose results belong there. Smoke
scales (tiny) never update it by default, and where the package is installed plays no part.
"""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

from advmem.io import atomic_write_text
from advmem.errors import UserError

HEADER = """# Reproduction

How to reproduce the paper's findings with advmem, and what advmem's own runs showed. Each
section below is written by the study command named in it (`advmem study ...`) from that
study's output; do not edit between the markers by hand, rerun the study instead.
"""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


SMOKE_SCALES = frozenset({"tiny"})


def _names_advmem(pyproject: Path) -> bool:
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        import tomllib
    except ImportError:  # Python 3.10: the [project] table's name line
        in_project = False
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("["):
                in_project = stripped == "[project]"
            elif in_project and re.fullmatch(r"""name\s*=\s*["']advmem["']""", stripped):
                return True
        return False
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    project = data.get("project")
    return isinstance(project, dict) and project.get("name") == "advmem"


def find_checkout(start: str | Path | None = None) -> Path | None:
    """The advmem checkout holding `start` (default: the working directory): the nearest directory
    at or above it with a pyproject.toml of project `advmem` and a REPRODUCTION.md; else None."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and (folder / "REPRODUCTION.md").is_file() and _names_advmem(pyproject):
            return folder
    return None


def reproduction_target(scale: str, *, explicit: str | None, disabled: bool,
                        default_scales: frozenset[str] | set[str]) -> tuple[Path | None, str]:
    """(the REPRODUCTION.md a study run may update or None, why none). Call it before writing anything:
    a contradiction or a bad --reproduction PATH is a UserError."""
    if disabled and explicit is not None:
        raise UserError("--reproduction and --no-reproduction contradict each other; pass one of them")
    if disabled:
        return None, "REPRODUCTION.md not updated (--no-reproduction)"
    if explicit is not None:
        path = Path(explicit)
        if not explicit.strip() or path.is_dir():
            raise UserError(f"--reproduction '{explicit}' is not a file path; pass e.g. --reproduction REPRODUCTION.md")
        return path, ""
    if scale in SMOKE_SCALES or scale not in default_scales:
        kind = "a smoke test" if scale in SMOKE_SCALES else "not a scale whose results belong there"
        return None, (f"REPRODUCTION.md not updated: scale {scale} is {kind}; pass --reproduction PATH to write "
                      "its section to a file of your choice")
    root = find_checkout()
    if root is None:
        return None, ("REPRODUCTION.md not updated: the current directory is not inside an advmem checkout (no "
                      "pyproject.toml of project advmem next to a REPRODUCTION.md above it); run from the checkout "
                      "or pass --reproduction PATH")
    return root / "REPRODUCTION.md", ""


def smoke_note(scale: str) -> list[str]:
    """Lines a study's README starts its body with when its numbers are a smoke test."""
    if scale not in SMOKE_SCALES:
        return []
    return [f"> **Smoke test** (scale `{scale}`: synthetic data, a few epochs, seconds on a CPU): these numbers "
            "only show that the pipeline runs end to end; they say nothing about the paper. Not written to "
            "REPRODUCTION.md unless --reproduction PATH is given.", ""]


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


def update_reproduction(section_name: str, markdown: str, path: str | Path) -> Path:
    """Write `markdown` as section `section_name` of the REPRODUCTION.md at `path` (see
    `reproduction_target` for which one a study may update)."""
    path = Path(path)
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
