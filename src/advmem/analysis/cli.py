"""`advmem analyze NAME`: each analysis is one module with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import importlib

ANALYSES = {
    "grad-stability": "advmem.analysis.grad_stability",
    "measures": "advmem.analysis.measures",
}


def add_parser(sub, common) -> None:
    analyze = sub.add_parser("analyze", help="analyse trained runs", description="Analyse trained runs.")
    analyze_sub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=type(analyze))
    for name, module_name in ANALYSES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        p = analyze_sub.add_parser(name, help=module.__doc__.strip().splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        common(p)
        p.set_defaults(func=module.run)
