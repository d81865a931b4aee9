"""Training methods, one file each, behind the `Method` interface (see base.py)."""

from __future__ import annotations

from advmem.recipe.method import METHODS, AttackConfig, MethodConfig, method_config, method_config_class, method_names


def build_method(cfg, attack, *, num_train: int, num_classes: int, device, label_smoothing: float = 0.0):
    return METHODS.get(cfg.name)(cfg, attack, num_train=num_train, num_classes=num_classes,
                                 device=device, label_smoothing=label_smoothing)


__all__ = ["METHODS", "AttackConfig", "MethodConfig", "build_method", "method_config", "method_config_class",
           "method_names"]
