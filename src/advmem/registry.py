"""One registration rule: a registry of named things, filled by a decorator where each is defined.

Models, methods, datasets, attack objectives, complexity-measure families and commands each have
one `Registry`; adding one is one definition plus one `@REGISTRY.register("name")` line. A
registry whose entries live in several modules names a `load` function that imports them on
first lookup (`import_package` for "every module of this package"): those modules import torch,
and building the CLI's parser must not.

A registry made with `adapt` (models, methods, datasets) also takes a "module:attr" name: the
user's object, imported on lookup (advmem.plugins) and checked or wrapped by `adapt`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

from advmem.errors import UserError
from advmem.plugins import USER_REGISTRIES, import_object, is_object_path



class Registry:
    def __init__(self, kind: str, load: Callable[[], None] | None = None,
                 adapt: Callable[[str, Any], Any] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._load = load
        self._adapt = adapt  # (name, imported object) -> entry, or a UserError saying what it should be
        self._objects: dict[str, Any] = {}  # "module:attr" names looked up so far
        if adapt is not None:
            USER_REGISTRIES.append(self)

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
        """The entry registered as `name` (or, where user code is taken, the "module:attr" object);
        a UserError naming the choices if there is none."""
        if self._adapt is not None and is_object_path(name):
            if name not in self._objects:
                self._objects[name] = self._adapt(name, import_object(name, self.kind))
            return self._objects[name]
        entries = self._loaded()
        if name not in entries:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(entries))}")
        return entries[name]

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def __contains__(self, name: object) -> bool:
        if self._adapt is not None and is_object_path(name):
            try:
                self.get(name)  # type: ignore[arg-type]
            except UserError:
                return False
            return True
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
