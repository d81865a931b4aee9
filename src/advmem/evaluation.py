"""`advmem eval`: evaluate a run's best and last checkpoints, or one checkpoint file.

The reported robust accuracy is the per-sample worst case over every attack run: a point
counts as robust only if no attack broke it. Results go to `<checkpoint>.eval.json` with
RobustBench-style field names.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from advmem import __version__
from advmem.engine.checkpoint import build_from_checkpoint, checkpoint_paths
from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample
from advmem.engine.io import atomic_write_json
from advmem.errors import UserError
from advmem.recipe import budget_value

ATTACKS = ("clean", "fgsm", "pgd", "pgd-cw")


def checkpoints_of(target: str | Path) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        from advmem.engine.rundir import RunDir

        if RunDir(path).is_run():
            RunDir(path).check_readable()  # refuses a run written by a newer advmem
        found = [path / "checkpoints" / f"{s}.safetensors" for s in ("best", "last")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UserError(f"{path}: no checkpoints/best.safetensors or last.safetensors; is this an advmem run directory?")
        return found
    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    return [weights]


def dataset_split(meta: dict[str, Any], split: str, device: torch.device):
    from advmem.data import DataConfig, build_data

    cfg = DataConfig.model_validate(meta.get("data") or {"dataset": meta["dataset"]})
    if split == "test":
        cfg = cfg.model_copy(update={"test_size": None})
    bundle = build_data(cfg, device)
    data = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if data is None or len(data) == 0:
        raise UserError(f"split '{split}' is empty for this checkpoint (data.val_size was 0); use --split test")
    return data


def evaluate_checkpoint(path: Path, *, attacks: list[str], split: str, n_examples: int | None, batch_size: int,
                        steps: int, restarts: int, eps: str | None, seed: int, device: torch.device) -> dict[str, Any]:
    model, meta = build_from_checkpoint(path, device)
    data = dataset_split(meta, split, device)
    if n_examples is not None:
        data = data.subset(torch.arange(min(n_examples, len(data)), device=data.y.device))
    eps_text = eps if eps is not None else meta["eps"]
    eps_value = budget_value(eps_text)
    norm = meta["threat_model"]
    step = eps_value / 4 if norm == "Linf" else eps_value / 4
    clean = clean_per_sample(model, data, batch_size)
    robust = clean["correct"].clone()
    per_attack: dict[str, float] = {"clean": clean["correct"].float().mean().item()}
    generator = torch.Generator().manual_seed(seed)
    for name in attacks:
        if name == "clean":
            continue
        spec = {
            "fgsm": EvalAttack(eps=eps_value, step_size=eps_value, steps=1, norm=norm, start="none"),
            "pgd": EvalAttack(eps=eps_value, step_size=step, steps=steps, norm=norm, restarts=restarts),
            "pgd-cw": EvalAttack(eps=eps_value, step_size=step, steps=steps, norm=norm, restarts=restarts, objective="cw"),
        }[name]
        result = robust_per_sample(model, data, spec, batch_size, generator=generator)
        per_attack[name] = result["correct"].float().mean().item()
        robust &= result["correct"]
    out = {
        "checkpoint": str(path),
        "split": split,
        "clean_acc": per_attack["clean"],
        "robust_acc": robust.float().mean().item(),
        "attacks": {k: v for k, v in per_attack.items() if k != "clean"},
        "eps": eps_text,
        "threat_model": norm,
        "dataset": meta["dataset"],
        "architecture": meta["architecture"]["name"],
        "n_examples": len(data),
        "pgd_steps": steps,
        "restarts": restarts,
        "seed": seed,
        "epoch": meta.get("epoch"),
        "versions": {"advmem": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_json(path.with_suffix(".eval.json"), out)
    return out


def evaluate_target(target: str, *, attacks: list[str] | None, split: str = "test", n_examples: int | None = None,
                    batch_size: int = 256, steps: int = 20, restarts: int = 1, eps: str | None = None, seed: int = 0,
                    device: str = "auto", quiet: bool = False) -> list[dict[str, Any]]:
    from advmem.engine.trainer import resolve_device

    attacks = attacks or ["clean", "pgd"]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack '{unknown[0]}'; choose from: {', '.join(ATTACKS)}")
    if steps < 1 or restarts < 1 or batch_size < 1 or (n_examples is not None and n_examples < 1):
        raise UserError("--steps, --restarts, --batch-size and --n-examples must be positive integers")
    if eps is not None:
        try:
            if budget_value(eps) < 0:
                raise ValueError
        except ValueError:
            raise UserError(f"--eps '{eps}' is not a non-negative number or fraction like 8/255") from None
    dev = resolve_device(device)
    return [evaluate_checkpoint(p, attacks=attacks, split=split, n_examples=n_examples, batch_size=batch_size,
                                steps=steps, restarts=restarts, eps=eps, seed=seed, device=dev)
            for p in checkpoints_of(target)]
