"""advmem: adversarial training and the study of memorization in it.

`advmem.train(recipe, model=...)` and `advmem.evaluate(run, model=...)` are the Python API
(advmem.api); they are imported on first use, so `import advmem` stays torch-free.
"""

from advmem.version import __version__

__all__ = ["__version__", "evaluate", "train"]


def __getattr__(name: str):
    if name in ("train", "evaluate"):
        # lazy: `import advmem` stays light; the Python API imports torch when it is called
        from advmem import api

        return getattr(api, name)
    raise AttributeError(f"module 'advmem' has no attribute {name!r}")
