"""`advmem eval`: trustworthy robustness evaluation (see docs/evaluation.md).

- `attacks.py`     clean, FGSM, PGD-K (CE / CW margin, restarts) on tensors
- `autoattack.py`  AutoAttack via pyautoattack (standard and lite), resumable per component
- `checks.py`      sanity flags (gradient masking and friends)
- `loading.py`     safe loading of advmem and external PyTorch checkpoints
- `runner.py`      per-sample worst case, accumulated results, resume state, eval.json / flags.npz / AA log
- `cli.py`         the command's arguments and terminal table
"""

from advmem.evaluation.runner import ATTACKS, DEFAULT_ATTACKS, checkpoints_of, evaluate_checkpoint, evaluate_model, evaluate_target

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "checkpoints_of", "evaluate_checkpoint", "evaluate_model", "evaluate_target"]
