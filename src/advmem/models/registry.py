"""Model registry (`MODELS`): name -> builder, with kwargs checked against the builder's signature.

Builders have the signature `builder(in_channels, num_classes, image_size, *, kw=default, ...)`;
the keyword-only parameters are the model's user-facing kwargs (recipe `model.kwargs`). Their
defaults give the accepted types, so a YAML typo fails here with a `UserError` instead of deep
inside torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from torch import nn

from advmem.errors import UserError
from advmem.models.normalize import Classifier, Normalize
from advmem.registry import Registry, import_package


class Model(NamedTuple):
    builder: Callable[..., nn.Module]
    presets: dict[str, Any]  # kwargs an alias sets (wrn_28_10: depth 28, widen_factor 10)


class ModelRegistry(Registry):
    """A `Registry` of `Model`s whose `register` also takes aliases: names that preset some kwargs."""

    def register(self, name: str, aliases: dict[str, dict[str, Any]] | None = None):  # type: ignore[override]
        def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            accepted = _signature_defaults(builder)
            for n, presets in [(name, {})] + list((aliases or {}).items()):
                unknown = set(presets) - set(accepted)
                if unknown:
                    raise ValueError(f"alias {n!r} presets unknown kwargs {sorted(unknown)}")
                self.add(n, Model(builder, dict(presets)))
            return builder

        return deco


# Every module of the package is imported on first lookup; a new family is one file with
# `@MODELS.register("name")` on its builder.
MODELS = ModelRegistry("model", load=import_package("advmem.models"))


def _signature_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    params = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def model_kwargs_of(name: str) -> dict[str, Any]:
    """Accepted kwargs of `name` with their defaults (alias presets applied)."""
    builder, presets = MODELS.get(name)
    return {**_signature_defaults(builder), **presets}


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of `default`; lists from YAML become tuples."""

    def bad(expected: str) -> UserError:
        return UserError(f"model {name!r}: kwarg {key!r} must be {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise bad("a list of integers")
        return tuple(value)
    return value


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    else:
        hw = tuple(image_size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise UserError(f"image_size must be a positive int or (height, width); got {image_size!r}")
    return hw  # type: ignore[return-value]


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> nn.Module:
    """Build `Classifier(Normalize(mean, std), net)`: [0,1] NCHW inputs -> (N, num_classes) logits."""
    builder, presets = MODELS.get(name)
    accepted = model_kwargs_of(name)
    for key, value in kwargs.items():
        if key not in accepted:
            choices = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "(none)"
            raise UserError(f"model {name!r} has no kwarg {key!r}; accepted kwargs: {choices}")
        kwargs[key] = _coerce(name, key, value, accepted[key])
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer; got {value!r}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise UserError(f"mean and std need {in_channels} entries (one per channel); got {list(mean)} and {list(std)}")
    net = builder(in_channels, num_classes, _image_hw(image_size), **{**presets, **kwargs})
    model = Classifier(Normalize(mean, std), net)
    model.arch_name = name  # for sidecars and logs
    model.arch_kwargs = {**accepted, **kwargs}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as Normalize's mean/std excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_positive(name: str, **values: Any) -> None:
    """Raise `UserError` unless every value (or every entry of a tuple) is >= 1."""
    for key, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if any(v < 1 for v in items):
            raise UserError(f"model {name!r}: kwarg {key!r} must be >= 1, got {value!r}")


def pool_fits(hw: tuple[int, int]) -> bool:
    """Whether a 2x2 max-pool still makes sense (spatial size >= 2 in both directions)."""
    return hw[0] >= 2 and hw[1] >= 2
