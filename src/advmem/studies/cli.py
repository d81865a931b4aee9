"""`advmem study NAME`: each study is one module of this package with `@STUDIES.register("name")` on
its `run(args) -> int`, next to `add_arguments(parser)` and a docstring."""

from __future__ import annotations

from advmem.commands import COMMANDS, add_group
from advmem.registry import Registry, import_package

STUDIES = Registry("study", load=import_package("advmem.studies"))


@COMMANDS.register("study")
def add_parser(sub, common) -> None:
    add_group(sub, common, name="study", help="run a paper study end to end", dest="study", entries=STUDIES)
