"""Numbers in recipes are numbers: `epochs: true` is an error, not 1.

pydantic's lax mode turns a YAML boolean into 1 / 1.0 for an int or float field. Every recipe
section derives from `StrictNumbers`, whose before-validator refuses a bool wherever the field
(or an element of a list field) is an int or a float. Strings such as "0.1" keep working where
they did (pydantic still parses them), and budgets ("8/255") have their own validator.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator


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
