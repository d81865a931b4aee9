"""One registration rule: a registry of named things, filled by a decorator where each is defined.

Models, datasets, attack objectives, complexity-measure families and commands each have one
`Registry`; adding one is one definition plus one `@REGISTRY.register("name")` line. A registry
whose entries live in several modules names a `load` function that imports them on first lookup
(those modules import torch, and building the CLI's parser must not).
"""

from __future__ import annotations

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
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return wrap

    def _loaded(self) -> dict[str, Any]:
        if self._load is not None:
            load, self._load = self._load, None
            load()
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
        return iter(list(self._loaded()))
