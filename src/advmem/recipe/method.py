"""The `method:` and `attack:` sections of a recipe, and the registry of methods.

They live here, at the recipe's layer below every method file: methods import their config
base and register into `METHODS`; the recipe looks a method's config up by name without
importing the methods (the registry imports them on first lookup).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from advmem.errors import UserError
from advmem.registry import Registry, import_package
from advmem.strict import Budget, Section, StrictNumbers, budget_value


def _method_class(spec: str, obj: Any) -> Any:
    """A "module:attr" method: the user's Method subclass, with its Config (a MethodConfig subclass)."""
    config = getattr(obj, "Config", None)
    if not (isinstance(obj, type) and isinstance(config, type) and issubclass(config, MethodConfig)
            and callable(getattr(obj, "loss_and_logits", None))):
        raise UserError(f"{spec}: is not a training method; name a subclass of advmem.methods.base.Method whose "
                        "Config is a subclass of advmem.recipe.method.MethodConfig")
    return obj


# Loaded on first lookup, not at import: the method files import torch, and `import advmem.recipe`
# (advmem --help) must not.
METHODS = Registry("method", load=import_package("advmem.methods"), adapt=_method_class)


def method_config_class(name: str):
    """The config class of method `name`; ValueError (reported by the recipe validator) if unknown."""
    try:
        return METHODS.get(name).Config
    except UserError as err:
        raise ValueError(str(err)) from None


def method_names() -> list[str]:
    return METHODS.names()


class AttackConfig(Section):
    """The training attack (and, unless eval.attack overrides it, the evaluation attack)."""

    norm: Literal["Linf", "L2"] = "Linf"
    eps: Budget = "8/255"
    step_size: Budget = "2/255"
    steps: int = Field(10, ge=1)
    start: Literal["auto", "uniform", "gaussian", "none"] = "auto"
    # Clamp x + start into [0,1] before the first attack gradient? "auto" follows the authors'
    # code per method: clamped for PGD-AT (their pgd_loss), unclamped for TRADES and TE (their
    # trades_loss, PGD_TE and TRADES_TE take the first gradient at x + noise, outside the box
    # where pixels are saturated; the first clamp comes after the first step). Every iterate
    # after the first step is in [0,1] either way.
    start_clamp: Literal["auto", True, False] = "auto"
    bn_mode: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _check_budgets(self) -> "AttackConfig":
        eps = budget_value(self.eps)
        if eps < 0:
            raise ValueError(f"attack.eps must be >= 0, got {self.eps}")
        if self.norm == "Linf" and eps > 1:
            raise ValueError(f"attack.eps {self.eps} is > 1 for inputs in [0,1]; write it as a fraction, e.g. 8/255")
        if budget_value(self.step_size) <= 0:
            raise ValueError(f"attack.step_size must be > 0, got {self.step_size}")
        return self

    @property
    def eps_value(self) -> float:
        return budget_value(self.eps)

    @property
    def step_value(self) -> float:
        return budget_value(self.step_size)


class MethodConfig(StrictNumbers):
    """Base of each method's own config; the registry picks the subclass by `name`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # Epoch fields that may be written as a fraction of optim.epochs (resolve_epoch_fractions).
    EPOCH_FIELDS: ClassVar[tuple[str, ...]] = ()
    name: str

    def check_against(self, recipe) -> None:
        """Checks that need the whole recipe (e.g. epochs); raise ValueError with the fix."""


def method_config(value: Any) -> MethodConfig:
    """A `method:` value (a name, a mapping with a name, or a config) as its method's validated config."""
    if isinstance(value, MethodConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ValueError("method must be a mapping with a 'name', e.g. method: {name: pgd_at}")
    if not isinstance(value["name"], str):
        raise ValueError(f"method.name must be a method name such as pgd_at, got {value['name']!r}")
    return method_config_class(value["name"]).model_validate(value)
