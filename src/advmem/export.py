"""`advmem export RUN --format robustbench`: weights and a model file any RobustBench-style loader takes.

Writes, into `--out DIR` (default `RUN/export/`):

    <name>.pt     a plain state dict (tensors only, `torch.save`), loadable with weights_only=True
    <name>.py     a self-contained model definition (only torch imported): class `Model` with the
                  normalization inside, [0,1] NCHW inputs, logits out, and `load_model()`
    <name>.json   what the checkpoint was (dataset, threat model, eps as written, epoch, metrics)

The model file embeds the source of the architecture's module from advmem (with advmem's
imports replaced by tiny local stand-ins), so it runs where advmem is not installed. A model of
user code (a "module:attr" name, or one registered by the recipe's imports) is imported from its
module instead: the file then needs that package where it is loaded.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import re
from pathlib import Path
from typing import Any

from advmem.commands import COMMANDS
from advmem.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from advmem.errors import UserError
from advmem.plugins import defining_module, load_recorded
from advmem.version import __version__

_HEADER = '''"""{name}: {arch} exported by advmem {version} (RobustBench-style model definition).

Inputs: float NCHW images in [0, 1]; the per-channel normalization is the model's first layer.
Output: logits of shape (N, {num_classes}). Dataset {dataset}; threat model {threat_model}, eps {eps}.

    from {module} import load_model
    model = load_model()            # reads {weights} next to this file, eval mode
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class UserError(ValueError):
    pass


class MODELS:  # stand-in for advmem's model registry: its decorator returns the builder unchanged
    register = staticmethod(lambda name, aliases=None: lambda builder: builder)


'''

_FOOTER = '''

ARCH = {arch!r}
IN_CHANNELS = {in_channels!r}
NUM_CLASSES = {num_classes!r}
IMAGE_SIZE = {image_size!r}
MEAN = {mean!r}
STD = {std!r}
KWARGS = {kwargs}
WEIGHTS = Path(__file__).with_name({weights!r})


class Model(nn.Sequential):
    """normalize -> {builder}; state dict keys `normalize.*`, `net.*` (as in the .pt file)."""

    def __init__(self):
        super().__init__(OrderedDict([("normalize", Normalize(MEAN, STD)),
                                      ("net", {builder}(IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, **KWARGS))]))


def load_model(weights_path=None, device="cpu"):
    """Build the model, load the weights (weights_only: tensors, no code) and put it in eval mode."""
    model = Model()
    state = torch.load(weights_path or WEIGHTS, map_location=device, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {{k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
'''


def _strip_module(source: str) -> tuple[str, list[str]]:
    """Drop the docstring/`from __future__`/advmem imports of a module's source; return the
    rest and the advmem helper names it imported."""
    helpers: list[str] = []
    out: list[str] = []
    for line in source.splitlines():
        m = re.match(r"from advmem\.[\w.]+ import (.+)$", line)
        if m:
            helpers += [h.strip() for h in m.group(1).split(",")]
            continue
        if line.startswith("from __future__"):
            continue
        out.append(line)
    return "\n".join(out), helpers


def _user_model_source(arch: str, builder: Any, module: str) -> tuple[str, str]:
    """A builder that imports the user's model from its module (its code is the user's, not inlined)."""
    obj = getattr(builder, "user_object", builder)
    qualname = getattr(obj, "__qualname__", "")
    if module == "__main__" or "<" in qualname:
        raise UserError(f"cannot export {arch}: it is defined in {module} as {qualname or obj!r}, which the exported "
                        "file cannot import; move it to an importable module")
    lines = ["import importlib", "",
             f"_user_module = importlib.import_module({module!r})  # your code: this package must be importable", "", "",
             "def build_net(in_channels, num_classes, image_size, **kwargs):"]
    if hasattr(builder, "user_object"):  # a "module:attr" model: called with the data arguments it names
        given = "".join(f"{n}={n}, " for n in builder.takes)
        lines.append(f"    return _user_module.{qualname}({given}**kwargs)")
    else:  # registered by the recipe's imports: advmem's builder signature
        lines.append(f"    return _user_module.{qualname}(in_channels, num_classes, image_size, **kwargs)")
    return "\n".join(lines) + "\n", "build_net"


def model_source(arch: str) -> tuple[str, str]:
    """(python source defining the builder and everything it needs, the builder's name)."""
    # torch: only when a model is exported (the CLI's parser imports this module)
    from advmem.models import registry
    from advmem.models.normalize import Normalize

    builder = registry.model_entry(arch).builder
    user = defining_module(builder)
    if user is not None:
        source, name = _user_model_source(arch, builder, user)
        return inspect.getsource(Normalize) + "\n\n" + source, name
    module = inspect.getmodule(builder)
    body, helpers = _strip_module(inspect.getsource(module))
    parts = [inspect.getsource(Normalize)]
    for name in helpers:
        if name in ("MODELS", "UserError"):
            continue
        obj = getattr(registry, name, None)
        if obj is None:
            raise UserError(f"cannot export {arch}: its module imports {name}, which the exporter does not inline")
        parts.append(inspect.getsource(obj))
    return "\n\n".join(parts) + "\n\n" + body, builder.__name__


def _py_literal(value: Any) -> str:
    """repr with lists as tuples (model kwargs such as `hidden` are tuples)."""
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_py_literal(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_py_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def export_robustbench(run: str | Path, *, checkpoint: str = "best", out_dir: str | Path | None = None,
                       name: str | None = None) -> dict[str, Path]:
    # torch: only when a model is exported (the CLI's parser imports this module)
    from advmem.engine.checkpoint import load_weights, read_sidecar

    run = Path(run)
    ckpt = run / "checkpoints" / f"{checkpoint}.safetensors" if run.is_dir() else run
    if not ckpt.with_suffix(".safetensors").is_file():
        raise UserError(f"{ckpt}: checkpoint not found; pass an advmem run directory or a .safetensors checkpoint")
    meta = read_sidecar(ckpt)
    load_recorded(meta.get("user_code"), str(ckpt.with_suffix(".json")))  # the run's imports and plugins, again
    state = load_weights(ckpt)
    arch = meta["architecture"]
    try:
        source, builder = model_source(arch["name"])
    except UserError as err:
        raise UserError(f"{ckpt.with_suffix('.json')}: cannot export the model it describes ({err})") from err.__cause__
    name = name or re.sub(r"[^A-Za-z0-9_]", "_", f"{meta.get('run') or run.name}_{checkpoint}_{arch['name']}")
    if not re.match(r"[A-Za-z_]", name):
        name = "m_" + name
    out = Path(out_dir) if out_dir else (run if run.is_dir() else ckpt.parent) / "export"
    weights, code, info = out / f"{name}.pt", out / f"{name}.py", out / f"{name}.json"
    header = _HEADER.format(name=name, arch=arch["name"], version=__version__, num_classes=arch["num_classes"],
                            dataset=meta.get("dataset"), threat_model=meta.get("threat_model"), eps=meta.get("eps"),
                            module=name, weights=weights.name)
    footer = _FOOTER.format(arch=arch["name"], in_channels=arch["in_channels"], num_classes=arch["num_classes"],
                            image_size=tuple(arch["image_size"]), mean=list(arch["mean"]), std=list(arch["std"]),
                            kwargs=_py_literal(arch.get("kwargs", {})), weights=weights.name, builder=builder)
    text = header + source + footer
    compile(text, str(code), "exec")  # a syntax error here is a bug in the exporter, not the user's
    buffer = io.BytesIO()
    import torch  # here, so building the CLI's parser does not import torch

    torch.save({k: v.contiguous() for k, v in state.items()}, buffer)
    atomic_write_bytes(weights, buffer.getvalue())
    atomic_write_text(code, text)
    atomic_write_json(info, {
        "name": name, "format": "robustbench", "architecture": arch["name"], "dataset": meta.get("dataset"),
        "threat_model": meta.get("threat_model"), "eps": meta.get("eps"), "epoch": meta.get("epoch"),
        "checkpoint": str(ckpt), "metrics": meta.get("metrics", {}), "advmem_version": __version__,
        "inputs": "[0,1] NCHW float, normalization inside the model", "load": f"from {name} import load_model",
        **({"user_code": meta["user_code"]} if meta.get("user_code") else {}),
    })
    return {"weights": weights, "model": code, "info": info}


def cmd_export(args: argparse.Namespace) -> int:
    if args.format != "robustbench":
        raise UserError(f"unknown export format {args.format!r}; choose: robustbench")
    paths = export_robustbench(args.run, checkpoint=args.checkpoint, out_dir=args.output, name=args.name)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


@COMMANDS.register("export")
def add_parser(subparsers, common) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint (RobustBench-style state dict + model file)",
                              description="Write a plain state dict (.pt) and a self-contained model definition "
                                          "(.py with load_model()) that RobustBench-style loaders accept.")
    p.add_argument("run", help="run directory (or a .safetensors checkpoint)")
    p.add_argument("--format", default="robustbench", help="export format (robustbench)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--out", "-o", "--output", dest="output", default=None, metavar="DIR",
                   help="output directory (default RUN/export; -o and --output are aliases)")
    p.add_argument("--name", default=None, help="model name (default <run>_<checkpoint>_<arch>)")
    common(p)
    p.set_defaults(func=cmd_export)
