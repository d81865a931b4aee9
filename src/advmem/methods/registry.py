"""Method registry: a new method is one file in this package plus one `@METHODS.register("name")` line."""

from __future__ import annotations

from advmem.errors import UserError
from advmem.registry import Registry, import_package

# Loaded on first lookup, not at import: the method files import torch, and `import advmem.recipe`
# (advmem --help) must not.
METHODS = Registry("method", load=import_package("advmem.methods"))


def method_config_class(name: str):
    """The config class of method `name`; ValueError (reported by the recipe validator) if unknown."""
    try:
        return METHODS.get(name).Config
    except UserError as err:
        raise ValueError(str(err)) from None


def method_names() -> list[str]:
    return METHODS.names()
