"""Method registry: a new method is one file plus one `@register_method` line."""

from __future__ import annotations

from advmem.errors import UserError

METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    # Imported for their registration side effect; each file is one method. On first use, not at
    # import: the method files import torch, and `import advmem.recipe` (advmem --help) must not.
    from advmem.methods import awp, mart, pgd_at, standard, te, trades  # noqa: F401


def method_class(name: str):
    _load_all()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config_class(name: str):
    """The config class of method `name`; ValueError (reported by the recipe validator) if unknown."""
    _load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)
