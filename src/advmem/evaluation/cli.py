"""Arguments and terminal output of `advmem eval` (the parser entry lives in advmem/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from advmem.errors import UserError


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="run directory, advmem checkpoint (.safetensors + .json sidecar), "
                                  "or an external PyTorch checkpoint (.pt/.pth; needs --arch and --dataset)")
    p.add_argument("--attack", action="append", default=None,
                   help="clean, fgsm, pgd, pgd-cw, autoattack (version standard), autoattack-lite "
                        "(APGD-CE + APGD-T) (repeatable; default clean+pgd). Robust accuracy is the "
                        "per-sample worst case over all of them and over the earlier evaluations of the same points")
    p.add_argument("--checkpoint", dest="which", choices=["both", "best", "last"], default="both",
                   help="which checkpoints of a run (default both)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--n-examples", type=int, default=None, help="first N examples of the split (default all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="PGD steps K (default 20)")
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts (a point must survive all)")
    p.add_argument("--step-size", default=None, help="PGD step size (default eps/4), e.g. 2/255")
    p.add_argument("--eps", default=None, help="budget (default: the checkpoint's), e.g. 8/255")
    p.add_argument("--seed", type=int, default=0, help="seed of PGD random starts and AutoAttack")
    p.add_argument("--no-checks", dest="checks", action="store_false",
                   help="skip the sanity checks (gradient masking flags)")
    p.add_argument("--n-check", type=int, default=64, help="points used by the sanity checks (default 64)")
    p.add_argument("--out", "--out-dir", "-o", dest="out_dir", default=None, metavar="DIR",
                   help="write results here instead of next to the checkpoint (--out-dir and -o are aliases)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier results of a checkpoint instead of adding to them (by default a new "
                        "evaluation of the same points adds its attacks and the worst case covers all of them)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-attack-view", dest="attack_view", action="store_false",
                   help="attack the model as it is, not through its bit-exact attack view (max-pool before ReLU "
                        "in NHWC): the same flags, slower on a CPU; for checking that claim")
    g = p.add_argument_group("external checkpoints (.pt/.pth)")
    g.add_argument("--arch", default=None, help="architecture name, as a recipe's model.name (the list is in README.md, Recipes), e.g. resnet18")
    g.add_argument("--dataset", default=None, help="dataset, e.g. cifar10")
    g.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    g.add_argument("--model-kwargs", default=None, help="architecture kwargs as JSON, e.g. '{\"width\": 4}'")
    g.add_argument("--norm", choices=["Linf", "L2"], default=None,
                   help="threat model (default: the threat_model of the JSON sidecar next to the file, as advmem "
                        "export writes, else Linf; the sidecar's eps likewise replaces the 8/255 default)")
    g.add_argument("--no-normalize", action="store_true",
                   help="the model takes [0,1] inputs as they are (normalization inside, RobustBench style)")
    g.add_argument("--mean", default=None, help="per-channel mean the model expects, comma-separated")
    g.add_argument("--std", default=None, help="per-channel std, comma-separated")


def external_options(args: argparse.Namespace) -> dict[str, Any]:
    # torch: only when an evaluation runs (the CLI's parser imports this module)
    from advmem.evaluation.loading import parse_floats

    kwargs: dict[str, Any] = {}
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError:
            raise UserError(f"--model-kwargs '{args.model_kwargs}' is not JSON, e.g. '{{\"width\": 4}}'") from None
        if not isinstance(kwargs, dict):
            raise UserError("--model-kwargs must be a JSON object")
    return {"arch": args.arch, "dataset": args.dataset, "num_classes": args.num_classes, "model_kwargs": kwargs,
            "norm": args.norm, "no_normalize": args.no_normalize, "mean": parse_floats(args.mean, "mean"),
            "std": parse_floats(args.std, "std")}


def run_eval(args: argparse.Namespace) -> int:
    # torch: only when an evaluation runs (the CLI's parser imports this module)
    from advmem.evaluation import EvalOptions, evaluate_target

    options = EvalOptions(attacks=args.attack, split=args.split, n_examples=args.n_examples, batch_size=args.batch_size,
                          steps=args.steps, restarts=args.restarts, eps=args.eps, seed=args.seed, device=args.device,
                          quiet=args.quiet, step_size=args.step_size, checks=args.checks, n_check=args.n_check,
                          which=args.which, out_dir=args.out_dir, external=external_options(args),
                          overwrite=args.overwrite, attack_view=args.attack_view)
    results = evaluate_target(args.target, options)
    print(format_table(results))
    return 0


def checkpoint_name(path: str) -> str:
    """A run's checkpoint by its name (best, last, epoch-5); any other file by its file name."""
    p = Path(path)
    return p.stem if p.parent.name == "checkpoints" and p.suffix == ".safetensors" else p.name


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per checkpoint; a flagged row says FLAGGED and the flags are listed under it."""
    attacks: list[str] = []
    for r in results:
        attacks += [a for a in r["attacks"] if a not in attacks]
    names = [checkpoint_name(r["checkpoint"]) for r in results]
    width = max([len("checkpoint")] + [len(n) for n in names]) + 2
    head = f"{'checkpoint':<{width}}{'epoch':>6}{'clean':>9}" + "".join(f"{a:>17}" for a in attacks) + \
        f"{'worst-case':>12}  sanity"
    lines = [head]
    notes = []
    for name, r in zip(names, results):
        cells = [f"{name:<{width}}{str(r.get('epoch') if r.get('epoch') is not None else '-'):>6}{100 * r['clean_acc']:>8.2f}%"]
        cells += [f"{100 * r['attacks'][a]:>16.2f}%" if a in r["attacks"] else f"{'-':>17}" for a in attacks]
        cells.append(f"{100 * r['robust_acc']:>11.2f}%")
        if not r["sanity"].get("enabled"):
            cells.append("  not checked")
        elif r["flagged"]:
            cells.append("  FLAGGED: " + ", ".join(r["sanity_flags"]))
            for c in r["sanity"]["checks"].values():
                if c["flagged"]:
                    notes.append(f"  ! {name} {c['name']}: {c['detail']}")
        else:
            cells.append("  ok")
        lines.append("".join(cells))
    for name, r in zip(names, results):
        if r.get("same_weights_as"):
            lines.append(f"{name} is the same weights as {checkpoint_name(r['same_weights_as'])} (epoch "
                         f"{r.get('epoch')}): evaluated once, reported for both")
    eps = {(r["threat_model"], r["eps"], r["n_examples"]) for r in results}
    lines.append("threat model: " + "; ".join(f"{t} eps={e}, {n} points" for t, e, n in sorted(eps))
                 + "   results: " + ", ".join(r["eval_json"] for r in results if "eval_json" in r))
    return "\n".join(lines + notes)
