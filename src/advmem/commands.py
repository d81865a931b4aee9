"""The `advmem` commands: `@COMMANDS.register("name")` on the function that adds a command's parser.

An entry is `add_parser(subparsers, common)`: it adds `advmem NAME` (`common(p)` adds --quiet and
--debug) and sets `func=<callable(args) -> int>` with `set_defaults`. cli.py's own commands (train,
eval, demo, recipes, info) register when cli.py is imported; the modules in `MODULES` on first
lookup, in that order (the order of `advmem --help`).

A group (`advmem study NAME`, `advmem analyze NAME`) is a registry of its own, filled by
`@STUDIES.register("name")` on the `run(args) -> int` of a module in its package that also has
`add_arguments(parser)` and a docstring (the help): a new study or analysis is that one file.

None of these modules imports torch at import time: building the parser and every --help stay fast
(tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from advmem.registry import Registry

MODULES = (
    "advmem.studies.cli",    # advmem study random-labels | random-labels-boundary | robust-overfitting
    "advmem.analysis.cli",   # advmem analyze grad-stability | grad-same-weights | measures
    "advmem.report.cli",     # advmem report / compare
    "advmem.export",         # advmem export
    "advmem.sweep",          # advmem sweep
)


def _load() -> None:
    for name in MODULES:
        importlib.import_module(name)


COMMANDS = Registry("command", load=_load)


def add_group(sub, common: Callable, *, name: str, help: str, dest: str, entries: Registry) -> None:
    """`advmem NAME ENTRY` for every entry: a registered `run`, with its module's docstring and `add_arguments`."""
    group = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    group_sub = group.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=type(group))
    for entry in entries.names():
        run = entries.get(entry)
        module = sys.modules[run.__module__]
        # the docstrings are laid out by hand (lists of outputs, indented blocks): keep their lines
        p = group_sub.add_parser(entry, help=module.__doc__.strip().splitlines()[0], description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        common(p)
        p.set_defaults(func=run)
