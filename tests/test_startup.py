"""Startup: the CLI's parser, `--help` of every command and `--version` import no torch (issue 16, item 3).

Importing torch takes seconds; it is imported only when a command runs. This checks the import graph
in a fresh interpreter, not a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import SRC

PROBE = r"""
import argparse, contextlib, io, json, sys
import advmem.cli
from advmem.cli import build_parser, main

after_import = "torch" in sys.modules
parser = build_parser()
after_build = "torch" in sys.modules

def commands(p, prefix=()):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

helped, codes = [], {}
for argv in [("--version",), ("--help",)] + [c + ("--help",) for c in commands(parser)]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes[" ".join(argv)] = main(list(argv))
        except SystemExit as exit:
            codes[" ".join(argv)] = exit.code
    helped.append(" ".join(argv))
print(json.dumps({"after_import": after_import, "after_build": after_build, "after_help": "torch" in sys.modules,
                  "helped": helped, "codes": codes}))
"""


def test_parser_and_every_help_import_no_torch():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["after_import"], "import advmem.cli imported torch"
    assert not res["after_build"], "build_parser() imported torch"
    assert not res["after_help"], "a --help or --version imported torch"
    helped = set(res["helped"])
    # every command and every study/analysis entry was asked for its help
    for cmd in ("train --help", "eval --help", "export --help", "report --help", "sweep --help",
                "study random-labels --help", "study robust-overfitting --help",
                "analyze measures --help", "analyze grad-stability --help", "analyze grad-same-weights --help"):
        assert cmd in helped, sorted(helped)
    assert all(code == 0 for code in res["codes"].values()), res["codes"]


def test_lazy_package_names_still_resolve():
    """The names moved behind module __getattr__ are the same objects as before."""
    from advmem import data, evaluation
    from advmem.analysis import measures
    from advmem.analysis.measures import api, base
    from advmem.data import dataset
    from advmem.evaluation import runner

    assert data.build_data is dataset.build_data
    assert evaluation.evaluate_target is runner.evaluate_target
    assert measures.measure_runs is api.measure_runs and measures.MeasureSettings is base.MeasureSettings
    assert measures.FAMILIES == base.FAMILIES
