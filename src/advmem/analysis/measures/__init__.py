"""Complexity measures of trained runs, and how well each one ranks their robust generalization gap.

For each run, at one checkpoint, on a seeded sample of training examples with their training
labels (corrupted labels included when the recipe has them) and their PGD adversarial
examples (the run's evaluation attack): norm-based measures on the BatchNorm-folded weights
(sum of squared Frobenius norms, log product of squared spectral norms, sum of
Frobenius-over-spectral ratios, path norm), distance from initialization, parameter count,
the Bartlett et al. 2017 spectral complexity; the norm-based ones also divided by the clean
and by the adversarial margin (10th percentile of the logit margin); PAC-Bayes flatness on
clean and on robust accuracy; sharpness of the robust loss; input-gradient norms on clean and
adversarial examples. Next to them the run's natural and robust generalization gaps (train
accuracy - test accuracy, from summary.json, else recomputed on the checkpoint), and Kendall's
tau between every measure and the gaps across the runs given.

Writes measures.csv (one row per run), measures_kendall.csv and measures.md. A measure family
is one module of this package behind `compute(ctx) -> {name: value}`, registered in `MEASURES`
(see base.py and names.py); the definitions and the choices made (BN folding, conv spectral
norms, margins <= 0) are in the module docstrings and docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path

from advmem.analysis.cli import ANALYSES
from advmem.analysis.common import CHECKPOINT_HELP, add_device_argument, default_out
from advmem.analysis.measures.names import FAMILIES

# The API lives in api.py, base.py and kendall.py and is imported on first use, so that building
# the CLI's parser (add_arguments below) does not import torch.
_LAZY = {"MeasureContext": "base", "MeasureSettings": "base", "compute_all": "base", "kendall_tau": "kendall",
         "measure_model": "api", "measure_run": "api", "measure_runs": "api"}

__all__ = ["FAMILIES", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'advmem.analysis.measures' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"advmem.analysis.measures.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


# -- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (Kendall's tau is taken across them)")
    parser.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    parser.add_argument("--n-samples", type=int, default=1000, help="training samples the measures use (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the samples, the attack start and the weight noise")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated measure families (default all: {','.join(FAMILIES)})")
    parser.add_argument("--margin-over", choices=["all", "correct"], default="all",
                        help="10th-percentile margin over all samples (default; NaN-normalized when <= 0) "
                             "or over the correctly classified ones")
    parser.add_argument("--out", default=None, help="output folder (default: the run directory when one run is given)")
    add_device_argument(parser)


@ANALYSES.register("measures")
def run(args) -> int:
    # torch: only when measures are computed (the CLI's parser imports this package)
    from advmem.analysis.measures.api import measure_runs
    from advmem.analysis.measures.base import MeasureSettings
    from advmem.analysis.measures.table import fmt
    from advmem.device import resolve_device

    runs = [Path(r) for r in args.runs]
    out = default_out(runs, args.out, "the measures table of several runs")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    rows = measure_runs(runs, out, checkpoint=args.checkpoint, n_samples=args.n_samples, seed=args.seed,
                        device=resolve_device(args.device), families=families,
                        settings=MeasureSettings(margin_over=args.margin_over))
    for row in rows:
        print(f"{row['run']} ({row['method']}, epoch {row['epoch']}): robust gap {fmt(row['robust_gap'])}, "
              f"natural gap {fmt(row['natural_gap'])}, margins clean {fmt(row['clean_margin'])} / adv {fmt(row['adv_margin'])}")
    print(f"wrote {out / 'measures.csv'}, {out / 'measures_kendall.csv'} and {out / 'measures.md'}")
    return 0
