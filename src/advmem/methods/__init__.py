"""Training methods, one file each, behind the `Method` interface (see base.py)."""

from __future__ import annotations

from advmem.methods.registry import METHODS, method_class, register_method


def _load_all() -> None:
    # Imported for their registration side effect; each file is one method.
    from advmem.methods import awp, mart, pgd_at, standard, te, trades  # noqa: F401


def method_config_class(name: str):
    _load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config


def build_method(cfg, attack, *, num_train: int, num_classes: int, device, label_smoothing: float = 0.0):
    _load_all()
    return method_class(cfg.name)(cfg, attack, num_train=num_train, num_classes=num_classes,
                                  device=device, label_smoothing=label_smoothing)


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)


__all__ = ["METHODS", "build_method", "method_class", "method_config_class", "method_names", "register_method"]
