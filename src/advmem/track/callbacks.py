"""The trainer callbacks a recipe asks for (added by `Trainer.setup`)."""

from __future__ import annotations

from typing import Any


def recipe_callbacks(trainer) -> list[Any]:
    """Corruption record (always; a no-op on clean data), the per-sample tracker (`track.per_sample`)
    and the gradient-consistency signal (`track.grad_consistency`) when set."""
    from advmem.data.corruption import CorruptionRecorder

    callbacks: list[Any] = [CorruptionRecorder()]
    if trainer.recipe.track.per_sample is not None:
        from advmem.track.per_sample import PerSampleTracker

        callbacks.append(PerSampleTracker(trainer))
    if trainer.recipe.track.grad_consistency is not None:
        from advmem.track.grad_consistency import GradConsistency

        callbacks.append(GradConsistency(trainer))
    return callbacks
