"""The corruption record of a run: `corruption.npz` (data/corruption.py) in the run directory."""

from __future__ import annotations

from advmem.data.corruption import CORRUPTION_FILE
from advmem.engine.callbacks import Callback, TrainerView


class CorruptionRecorder(Callback):
    """Trainer callback: writes `corruption.npz` into the run directory when the fit starts (nothing
    on clean data)."""

    def on_fit_start(self, view: TrainerView) -> None:
        corruption = getattr(view.bundle, "corruption", None)
        if corruption is not None:
            corruption.save(view.run.path / CORRUPTION_FILE)
