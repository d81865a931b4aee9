"""`advmem study NAME`: each study is one module with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

from advmem.plugins import add_group

STUDIES = {
    "measures": "advmem.studies.measures",
    "random-labels": "advmem.studies.random_labels",
    "random-labels-boundary": "advmem.studies.random_labels_boundary",
    "robust-overfitting": "advmem.studies.robust_overfitting",
}


def add_parser(sub, common) -> None:
    add_group(sub, common, name="study", help="run a paper study end to end", dest="study", entries=STUDIES)
