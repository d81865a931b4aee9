"""Optional command modules: a command is one module plus one line in a table.

A module that is not present is skipped (so the CLI works while a command is being written);
an import error inside a present module is a real bug and is raised.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Callable


def import_optional(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise


def add_group(sub, common: Callable, *, name: str, help: str, dest: str, entries: dict[str, str]) -> None:
    """`advmem NAME ENTRY`: each entry module has a docstring, `add_arguments(parser)` and `run(args)`."""
    group = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    group_sub = group.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=type(group))
    for entry, module_name in entries.items():
        module = import_optional(module_name)
        if module is None:
            continue
        # the docstrings are laid out by hand (lists of outputs, indented blocks): keep their lines
        p = group_sub.add_parser(entry, help=module.__doc__.strip().splitlines()[0], description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        common(p)
        p.set_defaults(func=module.run)
