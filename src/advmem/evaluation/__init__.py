"""`advmem eval`: trustworthy robustness evaluation (see docs/evaluation.md).

- `attacks.py`     clean, FGSM, PGD-K (CE / CW margin, restarts) on tensors
- `autoattack.py`  AutoAttack via pyautoattack (standard and lite), resumable per component
- `checks.py`      sanity flags (gradient masking and friends)
- `loading.py`     safe loading of advmem and external PyTorch checkpoints
- `runner.py`      per-sample worst case, accumulated results, resume state, eval.json / flags.npz / AA log
- `cli.py`         the command's arguments and terminal table (imports no torch: the parser builds fast)

The names below come from runner.py, imported on first use.
"""

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "EvalOptions", "checkpoints_of", "evaluate_checkpoint", "evaluate_model", "evaluate_target"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'advmem.evaluation' has no attribute {name!r}")
    # lazy: torch only when one of these names is used
    from advmem.evaluation import runner

    value = getattr(runner, name)
    globals()[name] = value
    return value
