"""Model registry (`MODELS`): name -> builder, with kwargs checked against the builder's signature.

Builders have the signature `builder(in_channels, num_classes, image_size, *, kw=default, ...)`;
the keyword-only parameters are the model's user-facing kwargs (recipe `model.kwargs`). Their
defaults give the accepted types, so a YAML typo fails here with a `UserError` instead of deep
inside torch.

User code: a "module:attr" name is an nn.Module subclass or a function returning one
(`user_builder`: called with the model kwargs and those of in_channels, num_classes, image_size
its signature takes), and `given_model` makes `build_model` build an object handed over from
Python (`advmem.train(recipe, model=obj)`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

from torch import nn

from advmem.errors import UserError
from advmem.models.normalize import Classifier, Normalize
from advmem.plugins import is_python_object
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


DATA_ARGS = ("in_channels", "num_classes", "image_size")  # what a user's model may take from the data


def user_builder(spec: str, obj: Any) -> Callable[..., nn.Module]:
    """A builder (advmem's signature) for the user's nn.Module subclass or factory `obj`: it passes
    the data arguments the user's signature names (all of them to a **kwargs) and the model kwargs.
    The builder's keyword-only parameters are the user's other parameters (a required one has no
    default: `build_model` asks for it); a **kwargs takes any kwarg (`accepts_any`)."""
    if isinstance(obj, nn.Module):
        raise UserError(f"{spec}: is an nn.Module instance, not a class or factory; name its class (the recipe "
                        "rebuilds the model from the name), or pass the object itself: advmem.train(recipe, model=obj)")
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise UserError(f"{spec}: {obj.__name__} is a class but not an nn.Module subclass; name an nn.Module subclass "
                        "or a function that returns one")
    if not callable(obj):
        raise UserError(f"{spec}: is an object of type {type(obj).__name__}, not an nn.Module subclass or a function "
                        "that returns one")
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): take everything by keyword
        params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    takes = [n for n in DATA_ARGS if var_kw or any(p.name == n and p.kind is not p.POSITIONAL_ONLY for p in params)]
    own = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in params
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in DATA_ARGS]

    def build(in_channels: int, num_classes: int, image_size: tuple[int, int], **kwargs: Any) -> nn.Module:
        data = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
        net = obj(**{n: data[n] for n in takes}, **kwargs)
        if not isinstance(net, nn.Module):
            raise UserError(f"{spec}: returned a {type(net).__name__}, not an nn.Module")
        return net

    positional = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in DATA_ARGS]
    build.__signature__ = inspect.Signature(positional + own)  # type: ignore[attr-defined]
    build.accepts_any = var_kw  # type: ignore[attr-defined]
    build.user_object, build.takes = obj, takes  # type: ignore[attr-defined]  (export writes the same call)
    build.user_module = getattr(obj, "__module__", None)  # type: ignore[attr-defined]  (what the run records)
    return build


# Every module of the package is imported on first lookup; a new family is one file with
# `@MODELS.register("name")` on its builder.
MODELS = ModelRegistry("model", load=import_package("advmem.models"),
                       adapt=lambda spec, obj: Model(user_builder(spec, obj), {}))

_given: ContextVar[Model | None] = ContextVar("advmem_given_model", default=None)


@contextmanager
def given_model(obj: Any, *, copy_instance: bool = False) -> Iterator[None]:
    """While open, `build_model` builds `obj` whatever the name: an nn.Module instance (itself, so
    training trains it; a deep copy per build with `copy_instance`, so evaluating best and last
    loads each into its own copy) or a factory / nn.Module subclass (called like a "module:attr")."""
    if isinstance(obj, nn.Module):
        def build(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
            return copy.deepcopy(obj) if copy_instance else obj

        build.user_module = type(obj).__module__  # type: ignore[attr-defined]
        entry = Model(build, {})
    else:
        entry = Model(user_builder(getattr(obj, "__qualname__", repr(obj)), obj), {})
    token = _given.set(entry)
    try:
        yield
    finally:
        _given.reset(token)


def model_entry(name: str) -> Model:
    """The builder `build_model` uses for `name`: the given object's while `given_model` is open."""
    given = _given.get()
    if given is not None:
        return given
    if is_python_object(name):
        raise UserError(f"model {name!r} is a Python object that was passed to advmem.train(recipe, model=...): "
                        "the run records it as a user object, not rebuildable from the recipe; evaluate it from "
                        "Python with the same object or its factory: advmem.evaluate(RUN, model=obj)")
    return MODELS.get(name)


def _signature_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    params = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def model_kwargs_of(name: str) -> dict[str, Any]:
    """Accepted kwargs of `name` with their defaults (alias presets applied; a required kwarg of a
    user's model has the default inspect.Parameter.empty)."""
    builder, presets = model_entry(name)
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
    builder, presets = model_entry(name)
    accepted = model_kwargs_of(name)
    required = inspect.Parameter.empty
    for key, value in kwargs.items():
        if key not in accepted:
            if getattr(builder, "accepts_any", False):
                continue
            choices = ", ".join(f"{k}={v!r}" if v is not required else f"{k} (required)"
                                for k, v in accepted.items()) or "(none)"
            raise UserError(f"model {name!r} has no kwarg {key!r}; accepted kwargs: {choices}")
        kwargs[key] = _coerce(name, key, value, accepted[key])
    missing = [k for k, v in accepted.items() if v is required and k not in kwargs]
    if missing:
        raise UserError(f"model {name!r} needs {', '.join(repr(k) for k in missing)}; set model.kwargs."
                        f"{missing[0]} in the recipe")
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer; got {value!r}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise UserError(f"mean and std need {in_channels} entries (one per channel); got {list(mean)} and {list(std)}")
    net = builder(in_channels, num_classes, _image_hw(image_size), **{**presets, **kwargs})
    model = Classifier(Normalize(mean, std), net)
    model.arch_name = name  # for sidecars and logs
    # a user's model records the kwargs given (its defaults are its code's: they may not be JSON)
    model.arch_kwargs = dict(kwargs) if hasattr(builder, "user_module") else {**accepted, **kwargs}
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
