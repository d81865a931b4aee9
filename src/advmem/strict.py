"""The recipe's value rules: numbers are numbers, budgets are fractions, sections forbid unknown keys.

Numbers in recipes are numbers: `epochs: true` is an error, not 1.

pydantic's lax mode turns a YAML boolean into 1 / 1.0 for an int or float field. Every recipe
section derives from `StrictNumbers`, whose before-validator refuses a bool wherever the field
(or an element of a list field) is an int or a float. Strings such as "0.1" keep working where
they did (pydantic still parses them), and budgets ("8/255") have their own validator.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    field_validator,
)
from typing_extensions import Annotated


def _kinds(annotation: Any) -> tuple[bool, bool]:
    """(scalar is int/float, list elements are int/float) for a field annotation."""
    if annotation in (int, float):
        return True, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [_kinds(a) for a in args if a is not type(None)]
        return any(f[0] for f in found), any(f[1] for f in found)
    if origin is typing.Annotated:
        return _kinds(args[0])
    if origin in (list, tuple, set) and args:
        return False, any(_kinds(a)[0] for a in args if a is not Ellipsis)
    return False, False


def _what(annotation: Any) -> str:
    text = str(annotation)
    return "an integer" if "int" in text and "float" not in text else "a number"


class StrictNumbers(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        scalar, elements = _kinds(field.annotation)
        if scalar and isinstance(value, bool):
            raise ValueError(f"expected {_what(field.annotation)}, not the boolean {str(value).lower()}")
        if elements and isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value):
            raise ValueError(f"expected a list of {_what(field.annotation).removeprefix('an ').removeprefix('a ')}s, "
                             "not booleans")
        return value


_BUDGET_RE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$")


def budget_value(text: str | float | int) -> float:
    """The float value of a budget written as a number or a fraction such as "8/255"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _BUDGET_RE.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a number or a fraction like 8/255")
    num = float(match.group(1))
    den = float(match.group(2)) if match.group(2) is not None else 1.0
    if den == 0:
        raise ValueError(f"'{text}' divides by zero")
    return num / den


def _budget_as_written(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number or a fraction like 8/255, got {value!r}")
    if not math.isfinite(budget_value(value)):  # raises ValueError with a readable message
        raise ValueError(f"{value!r} is not a finite number; write a fraction like 8/255")
    return value.strip() if isinstance(value, str) else repr(value)


Budget = Annotated[str, BeforeValidator(_budget_as_written)]


class Section(StrictNumbers):
    """A recipe section: strict numbers, unknown keys refused (a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
