"""REPRODUCTION.md: one generated section per study, between markers, other sections left intact.

    <!-- NAME:begin -->
    ...generated markdown...
    <!-- NAME:end -->

Studies call `update_reproduction(name, markdown)`; a section that is not there yet is appended.
(Minimal version; the reproduction issue's module has the same signature and behaviour.)
"""

from __future__ import annotations

import re
from pathlib import Path

from advmem.engine.io import atomic_write_text
from advmem.errors import UserError

HEADER = """# Reproduction

How to reproduce the paper's findings with advmem, and what advmem's own runs showed. Each
section below is written by the study command named in it (`advmem study ...`) from that
study's output; do not edit between the markers by hand, rerun the study instead.
"""


def repository_root() -> Path:
    """The checkout this advmem runs from (where pyproject.toml is), else the working directory."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def update_reproduction(section_name: str, markdown: str, path: str | Path | None = None) -> Path:
    """Write `markdown` as section `section_name` of REPRODUCTION.md (the repository's by default)."""
    path = Path(path) if path is not None else repository_root() / "REPRODUCTION.md"
    begin, end = f"<!-- {section_name}:begin -->", f"<!-- {section_name}:end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) > 1:
        raise UserError(f"{path} has section '{section_name}' more than once; delete the duplicates")
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    return path
