"""The Python API, for notebooks and scripts: `advmem.train` and `advmem.evaluate`.

    import advmem
    run, summary = advmem.train("recipes/quickstart.yaml", model=my_net, overrides=["optim.epochs=2"])
    results = advmem.evaluate(run.path, model=my_net, attacks=["clean", "pgd"], n_examples=500)

`model` is an nn.Module instance (trained in place: the recipe's seed does not choose its
initial weights), an nn.Module subclass or a function returning one (called like a recipe's
"module:attr" model: with model.kwargs and those of in_channels, num_classes and image_size its
signature names, after seeding). One defined at the top level of an importable module is
recorded by that name, so `advmem eval` and `advmem export` rebuild it; anything else (an
instance, a class defined in a notebook) is recorded as a Python object that is not rebuildable
from the recipe, and evaluating the run needs the object again (`advmem.evaluate(..., model=)`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from advmem.errors import UserError
from advmem.plugins import importable_name, object_name


def _recipe(recipe: Any, overrides: list[str]):
    # pydantic: only when a recipe is read (`import advmem` stays light)
    from advmem.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict

    if isinstance(recipe, Recipe):
        data = recipe.to_dict() if overrides else None
        return recipe if data is None else recipe_from_dict(apply_overrides(data, overrides), overrides=overrides)
    if isinstance(recipe, dict):
        return recipe_from_dict(apply_overrides(dict(recipe), overrides), overrides=overrides)
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe, overrides)
    raise UserError(f"recipe must be a Recipe, a mapping or a recipe file / shipped name, not a {type(recipe).__name__}")


def _check_model(model: Any) -> None:
    from torch import nn

    if not (isinstance(model, nn.Module) or callable(model)):
        raise UserError(f"model= must be an nn.Module, an nn.Module subclass or a function returning one, "
                        f"not a {type(model).__name__}")


def train(recipe: Any, *, model: Any = None, overrides: list[str] | None = None, run_root: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, quiet: bool = False,
          callbacks: list[Any] | None = None):
    """Train `recipe` (a Recipe, a mapping, or a recipe file / shipped name, with `overrides` as
    `--set` takes them) into its run directory; returns (RunDir, summary) as `advmem train` prints.

    `model` replaces the recipe's model (see the module docstring); the recipe's model.name then
    records it. `resume=True` continues the run in run_root/name with the same `model`."""
    # torch: only when a run trains
    from advmem.models.registry import given_model
    from advmem.training import train as train_recipe

    r = _recipe(recipe, list(overrides or []))
    given = contextlib.nullcontext()
    if model is not None:
        _check_model(model)
        from torch import nn

        instance = isinstance(model, nn.Module)
        if instance and r.model.kwargs:
            raise UserError(f"model.kwargs {r.model.kwargs} cannot apply to an nn.Module instance (it is built "
                            "already); drop them, or pass its class or a factory")
        name = None if instance else importable_name(model)  # importable: the recipe names it, eval rebuilds it
        r = r.model_copy(update={"model": r.model.model_copy(update={"name": name or object_name(model)})})
        if name is None:
            given = given_model(model)
    with given:
        return train_recipe(r, run_root=Path(run_root) if run_root else None, resume=resume, overwrite=overwrite,
                            quiet=quiet, callbacks=callbacks)


def evaluate(target: str | Path, *, model: Any = None, **options: Any) -> list[dict[str, Any]]:
    """`advmem eval TARGET` from Python: one result per checkpoint (best and last of a run). `options`
    are the fields of advmem.evaluation.EvalOptions (attacks, n_examples, eps, steps, device, ...).

    `model`: the object (or factory) the run was trained with, for a run that records a Python
    object; its architecture must be the one the weights were saved from. An instance is copied
    for each checkpoint, so it is left as it is."""
    # torch: only when something is evaluated
    from advmem.evaluation import evaluate_target
    from advmem.models.registry import given_model

    if model is None:
        return evaluate_target(str(target), **options)
    _check_model(model)
    with given_model(model, copy_instance=True):
        return evaluate_target(str(target), **options)
