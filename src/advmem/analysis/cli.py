"""`advmem analyze NAME`: each analysis is one module with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

from advmem.plugins import add_group

ANALYSES = {
    "grad-stability": "advmem.analysis.grad_stability",
    "grad-same-weights": "advmem.analysis.same_weights",
    "measures": "advmem.analysis.measures",
}


def add_parser(sub, common) -> None:
    add_group(sub, common, name="analyze", help="analyse trained runs", dest="analysis", entries=ANALYSES)
