"""`advmem analyze NAME`: each analysis is one module of this package with `@ANALYSES.register("name")`
on its `run(args) -> int`, next to `add_arguments(parser)` and a docstring."""

from __future__ import annotations

from advmem.commands import COMMANDS, add_group
from advmem.registry import Registry, import_package

ANALYSES = Registry("analysis", load=import_package("advmem.analysis"))


@COMMANDS.register("analyze")
def add_parser(sub, common) -> None:
    add_group(sub, common, name="analyze", help="analyse trained runs", dest="analysis", entries=ANALYSES)
