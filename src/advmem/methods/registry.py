"""Method registry: a new method is one file plus one `@register_method` line."""

from __future__ import annotations

from advmem.errors import UserError

METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        METHODS[name] = cls
        return cls

    return wrap


def method_class(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
