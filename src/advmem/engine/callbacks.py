"""Trainer callbacks: the `Callback` base class and the narrow view of the trainer they receive.

Every hook of every callback is called (the base class makes each a no-op), in list order:

    setup(view)                       every rank, once the model, data and method exist, before a resume
    on_fit_start(view)                rank 0, when training (re)starts: `view.start_epoch` is known
    on_step_end(view, epoch)          every rank, after each optimizer step that was taken
    on_epoch_end(view, epoch, row)    rank 0, after the epoch's evaluation; may add keys to `row`
    on_epoch_saved(view, epoch)       rank 0, once the epoch is committed (metrics, checkpoints and
                                      resume state written): for files drawn from the run directory
    state_dict() / load_state_dict()  saved in and restored from the resume state (None: nothing to save)

`advmem.training.run_callbacks` assembles the list a recipe asks for.
"""

from __future__ import annotations

from typing import Any

HOOKS = ("setup", "on_fit_start", "on_step_end", "on_epoch_end", "on_epoch_saved", "state_dict", "load_state_dict")


class TrainerView:
    """What a callback may read of the trainer (the objects themselves, not copies): the recipe, the
    run directory, the data bundle, the eager model (saved and evaluated), the method, the
    evaluation attack, the first epoch of this fit, and the running epoch's progress display
    (`progress`, for `evaluate_split(..., progress=view.progress)`; None outside an epoch)."""

    __slots__ = ("_trainer",)

    def __init__(self, trainer) -> None:
        self._trainer = trainer

    recipe = property(lambda self: self._trainer.recipe)
    run = property(lambda self: self._trainer.run)
    bundle = property(lambda self: self._trainer.bundle)
    model = property(lambda self: self._trainer.model)
    method = property(lambda self: self._trainer.method)
    eval_attack = property(lambda self: self._trainer.eval_attack)
    start_epoch = property(lambda self: self._trainer.start_epoch)
    progress = property(lambda self: getattr(self._trainer, "phase", None))


class Callback:
    """Base class of trainer callbacks: override the hooks you need (see the module docstring)."""

    @property
    def state_key(self) -> str:
        """The name of this callback's state in the resume state."""
        return type(self).__name__

    def setup(self, view: TrainerView) -> None:
        pass

    def on_fit_start(self, view: TrainerView) -> None:
        pass

    def on_step_end(self, view: TrainerView, epoch: int) -> None:
        pass

    def on_epoch_end(self, view: TrainerView, epoch: int, row: dict[str, Any]) -> None:
        pass

    def on_epoch_saved(self, view: TrainerView, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _Hooks(Callback):
    """A callback written without the base class (a test's, a study's): the hooks it defines, no-ops
    for the others, and its `state_key` (else its class name)."""

    state_key = None  # set per instance

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.state_key = getattr(obj, "state_key", type(obj).__name__)
        for hook in HOOKS:
            if hasattr(obj, hook):
                setattr(self, hook, getattr(obj, hook))


def as_callback(obj: Any) -> Callback:
    """`obj` as a `Callback` (itself when it is one)."""
    return obj if isinstance(obj, Callback) else _Hooks(obj)
