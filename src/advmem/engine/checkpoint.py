"""Checkpoints: safetensors weights plus a JSON sidecar that says what the weights are.

The sidecar (architecture and kwargs, dataset, threat model, eps as written, normalization,
recipe hash, epoch, metrics) makes a checkpoint self-describing: `advmem eval` rebuilds the
model from it without the recipe. Nothing here unpickles: weights are safetensors, metadata
JSON, and the resume state is loaded with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save

from advmem.version import __version__
from advmem.io import atomic_write_bytes, atomic_write_json, read_input_text
from advmem.errors import RunFailure, UserError
from advmem.data.config import DATASETS
from advmem.models.registry import model_entry
from advmem.plugins import is_python_object, load_recorded, run_record
from advmem.recipe.method import METHODS, MethodConfig

FORMAT = "advmem-checkpoint/1"


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise RunFailure if a floating-point tensor of `state` holds inf or NaN (never saved)."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunFailure(f"{what}: {name} is non-finite; refusing to save it (the previous file is kept)")


def save_checkpoint(stem: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write `<stem>.safetensors` and `<stem>.json` atomically; returns the weights path.

    The metadata is also embedded in the safetensors header, so the weights file alone is a
    complete, consistent checkpoint: a kill between the two renames can leave the JSON sidecar
    missing or one save behind, and readers then use the embedded copy."""
    stem = Path(stem)
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    weights = stem.with_suffix(".safetensors")
    check_finite(state, str(weights))
    full = json_safe(json.loads(json.dumps({"format": FORMAT, "advmem_version": __version__, **meta}, default=str)))
    atomic_write_bytes(weights, save(state, metadata={"advmem": json.dumps(full)}))
    atomic_write_json(stem.with_suffix(".json"), full)
    return weights


def embedded_meta(weights: Path) -> dict[str, Any] | None:
    """The metadata stored in the safetensors header by `save_checkpoint`, if any."""
    if not weights.is_file():
        return None
    try:
        with safe_open(str(weights), framework="pt") as handle:
            text = (handle.metadata() or {}).get("advmem")
        return json.loads(text) if text else None
    except (SafetensorError, OSError, ValueError):
        return None


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    weights, sidecar = checkpoint_paths(path)
    embedded = embedded_meta(weights)
    try:
        meta = json.loads(read_input_text(sidecar, "checkpoint sidecar"))
        key = ("epoch", "recipe_hash")
        if embedded is not None and isinstance(meta, dict) and [embedded.get(k) for k in key] != [meta.get(k) for k in key]:
            meta = embedded  # the sidecar lags the weights (a kill between the two writes)
    except FileNotFoundError:
        if embedded is not None:
            return _checked(embedded, sidecar)
        raise UserError(f"{sidecar}: checkpoint sidecar not found; pass an advmem checkpoint (.safetensors with its .json)") from None
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"{sidecar}: sidecar is not valid JSON (truncated or corrupt); restore it from a copy") from None
    return _checked(meta, sidecar)


def _checked(meta: Any, sidecar: Path) -> dict[str, Any]:
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(fmt, str) and fmt.startswith("advmem-checkpoint/") and fmt != FORMAT:
        raise UserError(f"{sidecar}: written by a newer advmem (format {fmt}, this version reads {FORMAT}); "
                        "upgrade advmem (pip install -U advmem) to load it")
    if fmt != FORMAT:
        raise UserError(f"{sidecar}: not an advmem checkpoint sidecar (format {fmt!r}, expected {FORMAT}); "
                        "pass a checkpoint written by advmem")
    arch = meta.get("architecture")
    needed = ("name", "in_channels", "num_classes", "image_size", "mean", "std")
    if not isinstance(arch, dict) or any(k not in arch for k in needed) or "dataset" not in meta:
        raise UserError(f"{sidecar}: sidecar lacks the architecture or dataset entries (edited or truncated); "
                        "restore it from the run directory")
    return meta


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    weights, _ = checkpoint_paths(path)
    if not weights.is_file():
        raise UserError(f"{weights}: checkpoint weights not found")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights}: cannot read safetensors weights ({err}); the file is truncated or corrupt") from None


def build_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights."""
    from advmem.models import build_model  # every model family: only when a model is rebuilt

    meta = read_sidecar(path)
    load_recorded(meta.get("user_code"), str(checkpoint_paths(path)[1]))  # the run's imports and plugins, again
    arch = meta["architecture"]
    try:
        model = build_model(arch["name"], in_channels=arch["in_channels"], num_classes=arch["num_classes"],
                            image_size=tuple(arch["image_size"]), mean=tuple(arch["mean"]), std=tuple(arch["std"]),
                            **(arch.get("kwargs") or {}))
    except UserError as err:
        raise UserError(f"{checkpoint_paths(path)[1]}: cannot rebuild the model it describes ({err})") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{checkpoint_paths(path)[1]}: architecture entry is malformed ({err}); "
                        "restore the sidecar from the run directory") from None
    state = load_weights(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: weights of another architecture or width
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "shape mismatch")
        raise UserError(f"{path}: weights do not fit architecture {arch['name']} {arch.get('kwargs') or {}} "
                        f"({detail[:160]}); the .safetensors and .json belong to different models") from None
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match architecture {arch['name']} "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); "
                        "the .safetensors and .json belong to different models")
    return model.to(device).eval(), meta


def save_resume_state(path: str | Path, state: dict[str, Any]) -> None:
    if isinstance(state.get("model"), dict):
        check_finite(state["model"], str(path))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


RESUME_FORMAT = 1


def load_resume_state(path: str | Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no resume state; the run has not completed an epoch (start it again with --overwrite)") from None
    except Exception as err:  # a truncated zip or refused global: never run code, say what to do
        raise UserError(f"{path}: cannot load resume state ({type(err).__name__}); it is corrupt or not advmem's "
                        "(loading never runs code from it); restart with --overwrite") from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UserError(f"{path}: not an advmem resume state; restart with --overwrite")
    fmt = state.get("format")
    if isinstance(fmt, int) and fmt > RESUME_FORMAT:
        raise UserError(f"{path}: written by a newer advmem (resume format {fmt}, this version reads up to "
                        f"{RESUME_FORMAT}); upgrade advmem (pip install -U advmem) to resume it")
    return state


# -------------------------------------------------------------------------------------------------
# What a checkpoint of a training run records, and which one is "best"


def model_normalization(recipe, bundle) -> tuple[list[float], list[float]]:
    """(mean, std) of the model's input layer: the training set's (`model.normalize: dataset`) or
    0 and 1 (`none`: raw [0,1] pixels, as the authors' models take them; x - 0 and x / 1 are exact)."""
    if recipe.model.normalize == "none":
        return [0.0] * bundle.in_channels, [1.0] * bundle.in_channels
    return list(bundle.mean), list(bundle.std)


def architecture_meta(recipe, bundle, model: torch.nn.Module) -> dict[str, Any]:
    """What `build_from_checkpoint` needs to rebuild the model."""
    mean, std = model_normalization(recipe, bundle)
    return {
        "name": recipe.model.name,
        "kwargs": getattr(model, "arch_kwargs", recipe.model.kwargs),
        "in_channels": bundle.in_channels,
        "num_classes": bundle.num_classes,
        "image_size": list(bundle.image_size),
        "mean": mean,
        "std": std,
        "normalize": recipe.model.normalize,
    }


def user_code_record(recipe) -> dict[str, Any] | None:
    """What the run records of the user code its recipe named (advmem.plugins.run_record): its imports
    and plugins, and the modules defining its model, method and dataset when they are not advmem's;
    None for a recipe of built-in names only (its sidecars have no `user_code` entry)."""
    methods, stack = [], [recipe.method]
    while stack:  # the method and the base methods it wraps (AWP's base is a config)
        cfg = stack.pop()
        methods.append(METHODS.get(cfg.name))
        stack += [getattr(cfg, f) for f in type(cfg).model_fields if isinstance(getattr(cfg, f), MethodConfig)]
    entries = [DATASETS.get(recipe.data.dataset), *methods]
    python_object = None
    if is_python_object(recipe.model.name):
        python_object = {"model": recipe.model.name, "rebuildable": False,
                         "note": "an object passed to advmem.train(recipe, model=...): not rebuildable from the recipe; "
                                 "evaluate it with advmem.evaluate(RUN, model=the same object or its factory)"}
    else:
        entries.append(model_entry(recipe.model.name).builder)
    return run_record(recipe.imports, recipe.plugins, entries, python_object=python_object)


def checkpoint_meta(recipe, bundle, model: torch.nn.Module, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of a training run's checkpoint at `epoch` (`row`: that epoch's metrics); `user_code`
    only when the recipe named user code."""
    user_code = user_code_record(recipe)
    return {
        "architecture": architecture_meta(recipe, bundle, model),
        "dataset": recipe.data.dataset,
        "data": recipe.data.model_dump(mode="json"),
        "threat_model": recipe.attack.norm,
        "eps": recipe.attack.eps,
        "normalization": dict(zip(("mean", "std"), model_normalization(recipe, bundle)),
                              inside_model=True, mode=recipe.model.normalize),
        "method": recipe.method.name,
        "recipe_hash": recipe.hash(),
        "run": recipe.name,
        "epoch": epoch,
        "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))},
        **({"user_code": user_code} if user_code else {}),
    }


def best_split(bundle) -> str:
    """The split "best" is selected on: validation, or test when there is no validation split."""
    return "val" if bundle.val is not None and len(bundle.val) > 0 else "test"


def improved_best(best: dict[str, Any] | None, row: dict[str, Any], *, epoch: int, split: str,
                  prefix: str = "") -> dict[str, Any] | None:
    """The new "best" record when `row` beats `best`, else None (also when `row` was not evaluated).

    One rule for the trained weights and the EMA weights (`prefix` "ema_"): robust accuracy on
    `split`, ties broken by natural accuracy; the first evaluated epoch is best until beaten."""
    rob, nat = row.get(f"{prefix}{split}_rob_acc"), row.get(f"{prefix}{split}_nat_acc")
    if rob is None:
        return None
    if best is not None and not (rob, nat) > (best["rob_acc"], best["nat_acc"]):
        return None
    return {"epoch": epoch, "split": split, "rob_acc": rob, "nat_acc": nat}
