"""`advmem study NAME`: each study is one module with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import importlib

STUDIES = {
    "random-labels": "advmem.studies.random_labels",          # issue: memorization studies
    "robust-overfitting": "advmem.studies.robust_overfitting",  # issue: TE and robust overfitting
}


def add_parser(sub, common) -> None:
    study = sub.add_parser("study", help="run a paper study end to end", description="Run a study end to end.")
    study_sub = study.add_subparsers(dest="study", metavar="STUDY", parser_class=type(study))
    for name, module_name in STUDIES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        p = study_sub.add_parser(name, help=module.__doc__.strip().splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        common(p)
        p.set_defaults(func=module.run)
