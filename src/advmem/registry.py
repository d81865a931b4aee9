"""One registration rule: a registry of named things, filled by a decorator where each is defined.

Models, methods, datasets, attack objectives, complexity-measure families and commands each have
one `Registry`; adding one is one definition plus one `@REGISTRY.register("name")` line. A
registry whose entries live in several modules names a `load` function that imports them on
first lookup (`import_package` for "every module of this package"): those modules import torch,
and building the CLI's parser must not.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

from advmem.errors import UserError


class Registry:
    def __init__(self, kind: str, load: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._load = load

    def register(self, name: str) -> Callable[[Any], Any]:
        def wrap(entry: Any) -> Any:
            self.add(name, entry)
            return entry

        return wrap

    def add(self, name: str, entry: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Drop `name` (a test's temporary entry)."""
        self._entries.pop(name, None)

    def _loaded(self) -> dict[str, Any]:
        if self._load is not None:
            load, self._load = self._load, None  # None first: a module being loaded may look up others
            try:
                load()
            except BaseException:
                self._load = load  # a failed import is raised again on the next lookup, not hidden
                raise
        return self._entries

    def get(self, name: str) -> Any:
        """The entry registered as `name`; a UserError naming the choices if there is none."""
        entries = self._loaded()
        if name not in entries:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(entries))}")
        return entries[name]

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        """The names in registration order."""
        return iter(list(self._loaded()))


def import_package(package: str) -> Callable[[], None]:
    """A `load` that imports every module of `package` (in name order), so a new entry is only a new file."""

    def load() -> None:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")

    return load
