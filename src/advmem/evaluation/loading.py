"""Load any checkpoint safely: advmem's own (safetensors + JSON sidecar) or an external PyTorch file.

External files are read with `torch.load(..., weights_only=True)`, which never runs code: a
pickle that would call a function (`os.system`, a custom class) is refused with a `UserError`
before anything is built. Before that, the first bytes are checked, because a "checkpoint"
downloaded from a sharing link is often an HTML page, and a half-downloaded file is truncated;
both get a message that says so.

Layouts accepted: a plain state dict, `{'state_dict': ...}`, `{'model_state_dict': ...}`,
`{'model': ...}`, `{'net': ...}`, with DataParallel/DDP `module.` prefixes stripped. An
external file says nothing about its architecture, so the caller names it (`--arch`,
`--dataset`, normalization). Keys map onto advmem's `Classifier(normalize, net)`: a state
dict without `net.`/`normalize.` keys is taken to be the bare network. The threat model is the
one thing a sidecar `<stem>.json` next to `<stem>.pt` (as `advmem export` writes) may say:
its `threat_model` and `eps` are used unless --norm/--eps are given.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from advmem.errors import UserError
from advmem.data import DataConfig, build_data
from advmem.io import read_input_text
from advmem.models import build_model
from advmem.recipe import budget_value

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
ADVMEM_SUFFIXES = (".safetensors", ".json")


def is_advmem_checkpoint(path: Path) -> bool:
    return path.suffix in ADVMEM_SUFFIXES or (path.with_suffix(".safetensors").is_file()
                                              and path.with_suffix(".json").is_file() and path.suffix == "")


def sniff(path: Path) -> None:
    """Refuse files that are plainly not checkpoints: missing, empty, or an HTML page."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: the file is empty (an interrupted download?); download it again")
    with path.open("rb") as fh:
        head = fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<!doctype html") or head.startswith(b"<html") or head.startswith(b"<?xml") or b"<html" in head[:200]:
        raise UserError(f"{path}: this is an HTML page, not a checkpoint (a download link that returned a web "
                        "page, e.g. a Google Drive confirmation page); download the file itself")


def load_external_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an external PyTorch checkpoint, loaded without running code."""
    path = Path(path)
    sniff(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            why = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
            raise UserError(f"{path}: refused: the file contains pickled objects that would run code or are not "
                            f"plain tensors ({why or 'not allowed by weights_only loading'}); nothing was loaded. "
                            "If you trust its source, re-save just the weights: "
                            "torch.save(model.state_dict(), 'weights.pt')") from None
        raise UserError(f"{path}: cannot unpickle ({text.splitlines()[0] if text else 'corrupt'}); the file is "
                        "truncated or corrupt; download it again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).splitlines() or [""])[0][:120]
        raise UserError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {first}); the file is truncated "
                        "or corrupt; download it again and compare its size or checksum") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in the usual wrappers and strip `module.` prefixes."""
    for _ in range(3):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: no state dict found (top-level keys {keys}); expected a state dict or a dict with "
                        f"one of {', '.join(WRAPPER_KEYS)}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: dict) -> bool:
    tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
    return bool(tensors) and len(tensors) >= 0.5 * len(obj)


def to_classifier_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a bare network's keys onto `Classifier(normalize, net)` (`net.` prefix)."""
    if all(k.startswith(("net.", "normalize.")) for k in state):
        return state
    return {f"net.{k}": v for k, v in state.items()}


def parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"--{what} '{text}' must be comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from None
    if not values:
        raise UserError(f"--{what} is empty")
    return values


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(u - v) <= 1e-6 * max(1.0, abs(v)) for u, v in zip(a, b))


def sidecar_threat_model(path: Path) -> tuple[str | None, str | None]:
    """(threat_model, eps as written) from the JSON file next to an external checkpoint, when it has
    them (`advmem export` writes one); (None, None) when there is no such file or it says nothing of
    the threat model. A sidecar that names an invalid threat model is refused, not guessed around."""
    side = path.with_suffix(".json")
    if path.suffix == ".json" or not side.is_file():
        return None, None
    try:
        data = json.loads(read_input_text(side, "checkpoint sidecar"))
    except (ValueError, RecursionError):
        return None, None  # not JSON: some other file that happens to share the name
    if not isinstance(data, dict) or ("threat_model" not in data and "eps" not in data):
        return None, None
    norm, eps = data.get("threat_model"), data.get("eps")
    try:
        if norm not in (None, "Linf", "L2") or (eps is not None and budget_value(eps) < 0):
            raise ValueError
    except ValueError:
        raise UserError(f"{side}: threat_model {norm!r} / eps {eps!r} is not a threat model advmem knows (Linf or "
                        "L2, eps a number or a fraction like 8/255); fix the file, or pass --norm and --eps") from None
    return norm, (str(eps) if eps is not None else None)


def build_external(path: Path, *, arch: str | None, dataset: str | None, num_classes: int | None,
                   model_kwargs: dict[str, Any], mean: list[float] | None, std: list[float] | None,
                   no_normalize: bool, norm: str | None, eps: str | None, device: torch.device):
    """Model and sidecar-like metadata for an external checkpoint (validated before loading). The
    threat model: --norm/--eps, else the JSON sidecar's (its eps only with its own norm), else
    Linf 8/255 (L2 0.5)."""
    side_norm, side_eps = sidecar_threat_model(path)
    source = None
    if norm is None and side_norm is not None:
        norm, source = side_norm, path.with_suffix(".json")
    norm = norm or "Linf"
    if eps is None and side_eps is not None and (side_norm is None or side_norm == norm):
        eps, source = side_eps, path.with_suffix(".json")
    if not arch or not dataset:
        raise UserError(f"{path}: an external checkpoint needs its architecture and dataset named: "
                        "--arch NAME --dataset NAME (e.g. --arch resnet18 --dataset cifar10), and its input "
                        "normalization: --no-normalize or --mean/--std")
    if no_normalize and (mean or std):
        raise UserError("pass either --no-normalize or --mean/--std, not both")
    if (mean is None) != (std is None):
        raise UserError("--mean and --std go together")
    try:
        data_cfg = DataConfig(dataset=dataset)
    except Exception:
        raise UserError(f"--dataset '{dataset}' is not a known dataset (see 'advmem info')") from None
    state = to_classifier_keys(load_external_state(path))
    bundle = build_data(data_cfg, device)
    classes = num_classes or bundle.num_classes
    if "normalize.mean" in state:  # an advmem-style state dict carries its normalization
        mean_ = state["normalize.mean"].flatten().tolist()
        std_ = state["normalize.std"].flatten().tolist()
        if mean is not None and (not _close(mean, mean_) or not _close(std, std_)):
            raise UserError(f"{path}: --mean/--std differ from the normalization stored in the checkpoint "
                            f"({mean_}, {std_}); drop them")
    elif no_normalize:
        mean_, std_ = [0.0] * bundle.in_channels, [1.0] * bundle.in_channels
    elif mean is not None:
        mean_, std_ = mean, std
    else:
        raise UserError(f"{path}: say how the model expects its inputs: --no-normalize (it takes [0,1] images, "
                        "normalization inside, RobustBench style) or --mean/--std (advmem adds the layer)")
    state.setdefault("normalize.mean", torch.tensor(mean_, dtype=torch.float32).view(1, -1, 1, 1))
    state.setdefault("normalize.std", torch.tensor(std_, dtype=torch.float32).view(1, -1, 1, 1))
    model = build_model(arch, in_channels=bundle.in_channels, num_classes=classes, image_size=bundle.image_size,
                        mean=mean_, std=std_, **dict(model_kwargs))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = next((line.strip() for line in str(err).splitlines() if "mismatch" in line), str(err)[:200])
        raise UserError(f"{path}: weights do not match --arch {arch} ({first}); check --arch, --num-classes and "
                        "--model-kwargs") from None
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match --arch {arch} (missing {sorted(missing)[:3]}, unexpected "
                        f"{sorted(unexpected)[:3]}); check --arch, --num-classes and --model-kwargs")
    default_eps = "8/255" if norm == "Linf" else "0.5"
    meta = {
        "architecture": {"name": arch, "kwargs": getattr(model, "arch_kwargs", model_kwargs),
                         "in_channels": bundle.in_channels, "num_classes": classes,
                         "image_size": list(bundle.image_size), "mean": list(mean_), "std": list(std_)},
        "dataset": dataset,
        "data": data_cfg.model_dump(mode="json"),
        "threat_model": norm,
        "eps": eps or default_eps,
        "threat_model_from": str(source) if source else None,  # the sidecar it was read from, if any
        "external": True,
        "epoch": None,
    }
    return model.to(device).eval(), meta, bundle
