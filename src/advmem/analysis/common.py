"""What every analysis of a trained run needs: its recipe, a checkpoint's model, data and method.

Analyses read only the run directory (recipe.yaml, checkpoints/, resume.pt, summary.json), so
they work on runs trained elsewhere. Everything that can fail on bad input (not a run, missing
checkpoint, bad option) raises `UserError` before any output is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI's parser does not import it
    import torch
    from torch import nn

from advmem.engine.rundir import RunDir
from advmem.errors import UserError

CHECKPOINT_HELP = "best, last, init or epoch-N (default last)"


@dataclass
class LoadedRun:
    """A run directory opened at one checkpoint, with the data and method of its recipe."""

    path: Path
    recipe: Any
    checkpoint: str
    checkpoint_path: Path
    model: nn.Module
    meta: dict[str, Any]
    bundle: Any
    method: Any
    epoch: int
    method_state: str

    @property
    def name(self) -> str:
        return self.path.name


def resolve_checkpoint(run_dir: str | Path, which: str) -> Path:
    """Path of `checkpoints/<which>.safetensors` in a run; `epoch-N` also matches best/last at epoch N."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise UserError(f"{run.path}: not an advmem run directory (no recipe.yaml); pass a directory made by 'advmem train'")
    if which in ("best", "last", "init"):
        path = run.checkpoints / f"{which}.safetensors"
        if not path.is_file():
            raise UserError(f"{run.path}: no checkpoints/{which}.safetensors; the run has not saved that checkpoint "
                            "(choose another with --checkpoint)")
        return path
    match = re.fullmatch(r"epoch-(\d+)", which)
    if not match:
        raise UserError(f"--checkpoint {which!r}: expected {CHECKPOINT_HELP}")
    epoch = int(match.group(1))
    direct = run.checkpoints / f"{which}.safetensors"
    if direct.is_file():
        return direct
    # torch: only when an analysis runs (the CLI's parser imports this module)
    from advmem.engine.checkpoint import read_sidecar

    for stem in ("last", "best", "init"):
        path = run.checkpoints / f"{stem}.safetensors"
        if path.is_file() and int(read_sidecar(path).get("epoch", -1)) == epoch:
            return path
    saved = sorted(p.stem for p in run.checkpoints.glob("*.safetensors"))
    raise UserError(f"{run.path}: no checkpoint of epoch {epoch} (saved: {', '.join(saved) or 'none'}); "
                    "pick one of those with --checkpoint")


def check_runs(run_dirs: list[str | Path], checkpoint: str) -> list[Path]:
    """Validate every run and checkpoint up front, so a typo in the third run fails before any work."""
    if not run_dirs:
        raise UserError("give at least one run directory")
    return [resolve_checkpoint(r, checkpoint) for r in run_dirs]


def open_run(run_dir: str | Path, checkpoint: str = "last", device: torch.device | str | None = None) -> LoadedRun:
    """Open a run at a checkpoint: model (eval mode), data of its recipe, and its method.

    The data config is the run's own, so the training labels are the ones it was trained on
    (including any corruption the recipe records). A stateful method (e.g. one with a
    per-sample buffer) gets its state from resume.pt when that state belongs to the same epoch
    as the checkpoint; otherwise it starts fresh, which `method_state` records.
    """
    # torch and pydantic: only when an analysis runs (the CLI's parser imports this module)
    from advmem.data import build_data
    from advmem.engine.checkpoint import build_from_checkpoint, load_resume_state
    from advmem.methods import build_method

    path = resolve_checkpoint(run_dir, checkpoint)
    run = RunDir(run_dir)
    recipe = run.load_recipe()
    device = resolve(device)
    model, meta = build_from_checkpoint(path, device)
    bundle = build_data(recipe.data, device)
    method = build_method(recipe.method, recipe.attack, num_train=len(bundle.train), num_classes=bundle.num_classes,
                          device=device, label_smoothing=recipe.optim.label_smoothing)
    epoch = int(meta.get("epoch", 0))
    method_state = "fresh"
    if method.state_dict() and run.resume_path.is_file():
        state = load_resume_state(run.resume_path)
        if int(state.get("epoch", -1)) == epoch:
            method.load_state_dict(state["method"])
            method_state = "resume.pt"
    return LoadedRun(path=run.path, recipe=recipe, checkpoint=checkpoint, checkpoint_path=path, model=model,
                     meta=meta, bundle=bundle, method=method, epoch=epoch, method_state=method_state)


def seeded_rows(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The first `n` positions of a seeded permutation of 0..n_total-1, sorted."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[: min(n, n_total)].sort().values


def default_out(run_dirs: list[Path], out: str | None, what: str) -> Path:
    """`--out` if given; else the run directory itself when there is exactly one run."""
    if out is not None:
        return Path(out)
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    raise UserError(f"{what} of several runs goes in one folder: pass --out DIR")


def resolve(device: torch.device | str | None) -> torch.device:
    """None or "auto": the GPU when there is one, else the CPU."""
    import torch

    # torch: only when an analysis runs (the CLI's parser imports this module)
    from advmem.device import resolve_device

    return resolve_device("auto" if device is None else str(device)) if not isinstance(device, torch.device) else device


def add_device_argument(parser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to compute (default: cuda when available)")


def add_probe_arguments(parser, *, runs_help: str, checkpoint_help: str, alphas_default: str) -> None:
    """The options every gradient probe takes: its runs, --checkpoint, --alphas, --directions, --batch-size,
    --seed, --out and --device (`probe_options` reads them back)."""
    parser.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    parser.add_argument("--checkpoint", default="last", help=checkpoint_help)
    parser.add_argument("--alphas", default=None,
                        help=f"comma-separated relative perturbation sizes (default {alphas_default})")
    parser.add_argument("--directions", type=int, default=5, help="random directions per alpha (default 5)")
    parser.add_argument("--batch-size", type=int, default=128, help="size of the fixed training batch (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch, the directions and the attack start")
    parser.add_argument("--out", default=None, help="output folder (default: the run directory when one run is given)")
    add_device_argument(parser)


def parse_alphas(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--alphas {text!r}: expected comma-separated numbers, e.g. 1e-4,1e-3,1e-2") from None
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise UserError(f"--alphas {text!r}: expected comma-separated numbers >= 0, e.g. 1e-4,1e-3,1e-2")
    return values


def probe_options(args, what: str) -> tuple[list[Path], Path, dict[str, Any]]:
    """The probe options of `add_probe_arguments` as (runs, output folder, keyword arguments of a probe's
    `probe_runs`: checkpoint, alphas, directions, batch_size, seed, device)."""
    # torch: only when an analysis runs (the CLI's parser imports this module)
    from advmem.device import resolve_device

    runs = [Path(r) for r in args.runs]
    out = default_out(runs, args.out, what)
    alphas = parse_alphas(args.alphas) if args.alphas is not None else None
    return runs, out, dict(checkpoint=args.checkpoint, alphas=alphas, directions=args.directions,
                           batch_size=args.batch_size, seed=args.seed, device=resolve_device(args.device))


def positive_int(name: str, value: int) -> int:
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value
