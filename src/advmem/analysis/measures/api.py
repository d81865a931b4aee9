"""The measures API (`advmem.analysis.measures` re-exports it; see that package's docstring)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from advmem.analysis.common import check_runs, open_run, positive_int, resolve, seeded_rows
from advmem.analysis.measures.base import FAMILIES, MeasureContext, MeasureSettings, compute_all
from advmem.errors import UserError
from advmem.analysis.measures.table import write_tables
from advmem.engine.checkpoint import build_from_checkpoint
from advmem.engine.evaluate import eval_attack_of
from advmem.engine.rundir import RunDir


def measure_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack, *, init_model=None, seed: int = 0,
                  settings: MeasureSettings | None = None, families: Sequence[str] = FAMILIES) -> dict[str, Any]:
    """All measures of one model on samples (x in [0,1], training labels y)."""
    ctx = MeasureContext(model=model.eval(), init_model=init_model, x=x, y=y, attack=attack, seed=seed,
                         settings=settings or MeasureSettings())
    values = compute_all(ctx, tuple(families))
    folded = ctx.folded
    values["folded_bn"] = len(folded.folded)
    values["kept_bn"] = ";".join(folded.kept_bn)
    return values


def _gaps(run, checkpoint: str, train_values: dict[str, Any], n_samples: int, seed: int,
          settings: MeasureSettings, attack) -> dict[str, Any]:
    """Train/test accuracies of the checkpoint: summary.json when it has them, else recomputed here."""
    keys = ("train_nat_acc", "train_rob_acc", "test_nat_acc", "test_rob_acc")
    rd = RunDir(run.path)
    entry: dict[str, Any] = {}
    if checkpoint in ("best", "last") and rd.summary_path.is_file():
        try:
            entry = json.loads(rd.summary_path.read_text()).get(checkpoint) or {}
        except json.JSONDecodeError:
            entry = {}
    if entry.get("epoch") == run.epoch and all(k in entry for k in keys):
        accs = {k: float(entry[k]) for k in keys}
        source = "summary.json"
    else:
        test = run.bundle.test.subset(seeded_rows(len(run.bundle.test), n_samples, seed + 1))
        ctx = MeasureContext(model=run.model, init_model=None, x=test.all_float(), y=test.y, attack=attack,
                             seed=seed + 1, settings=settings)
        accs = {"train_nat_acc": train_values["train_nat_acc_sample"], "train_rob_acc": train_values["train_rob_acc_sample"],
                "test_nat_acc": ctx.accuracy(ctx.x), "test_rob_acc": ctx.accuracy(ctx.x_adv)}
        source = "recomputed"
    return {**accs, "natural_gap": accs["train_nat_acc"] - accs["test_nat_acc"],
            "robust_gap": accs["train_rob_acc"] - accs["test_rob_acc"], "gap_source": source}


def measure_run(run_dir: str | Path, *, checkpoint: str = "last", n_samples: int = 1000, seed: int = 0,
                device: torch.device | str | None = None, settings: MeasureSettings | None = None,
                families: Sequence[str] = FAMILIES) -> dict[str, Any]:
    """One row of the table: the run's measures and gaps at `checkpoint`."""
    settings = settings or MeasureSettings()
    device = resolve(device)
    run = open_run(run_dir, checkpoint, device)
    train = run.bundle.train.subset(seeded_rows(len(run.bundle.train), n_samples, seed))
    init_path = run.path / "checkpoints" / "init.safetensors"
    init_model = build_from_checkpoint(init_path, device)[0] if init_path.is_file() else None
    attack = eval_attack_of(run.recipe)
    values = measure_model(run.model, train.all_float(), train.y, attack, init_model=init_model, seed=seed,
                           settings=settings, families=families)
    gaps = _gaps(run, checkpoint, values, n_samples, seed, settings, attack)
    return {"run": run.name, "method": run.recipe.method.name, "checkpoint": checkpoint, "epoch": run.epoch,
            **gaps, "n_samples": int(train.y.shape[0]), **values, "path": str(run.path)}


def measure_runs(run_dirs: list[Path], out_dir: Path, *, checkpoint: str = "last", n_samples: int = 1000, seed: int = 0,
                 device: torch.device | str | None = None, settings: MeasureSettings | None = None,
                 families: Sequence[str] = FAMILIES) -> list[dict[str, Any]]:
    """Measure every run, then write measures.csv, measures_kendall.csv and measures.md in `out_dir`."""
    check_runs(run_dirs, checkpoint)
    positive_int("n_samples", n_samples)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown measure families {unknown}; choose from {', '.join(FAMILIES)}")
    settings = settings or MeasureSettings()
    if settings.margin_over not in ("all", "correct"):
        raise UserError(f"margin_over must be 'all' or 'correct', got {settings.margin_over!r}")
    rows = [measure_run(r, checkpoint=checkpoint, n_samples=n_samples, seed=seed, device=device, settings=settings,
                        families=families) for r in run_dirs]
    write_tables(rows, Path(out_dir), {"seed": seed, **asdict(settings)})
    return rows
