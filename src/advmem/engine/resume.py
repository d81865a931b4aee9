"""The resume state (resume.pt): what it holds and how a trainer is restored from it.

Written last in every epoch (the commit point); a run resumed from it continues bitwise as if it
had never stopped: weights, optimizer, method state (TE buffer), the training RNGs of every rank,
the best record, the callbacks' states and the metrics rows. Functions of a set-up `Trainer` `t`.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import torch

from advmem.version import __version__
from advmem.engine.checkpoint import json_safe, load_resume_state
from advmem.engine.seeding import rank_seed
from advmem.errors import UserError
from advmem.recipe import RESUME_SETTABLE, Recipe


def resume_state(t, epoch: int) -> dict[str, Any]:
    """What resume.pt holds after `epoch`: weights, optimizer, method, RNGs (every rank's under DDP),
    best, callbacks' states and the metrics rows. A collective under DDP: every rank builds it."""
    return {
        "format": 1,
        "advmem_version": __version__,
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()},
        "optimizer": t.optimizer.state_dict(),
        "method": t.method.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else [],
        "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else {},
        "best": t.best,
        "recipe_hash": t.recipe.hash(),
        "callbacks": {cb.state_key: state for cb in t.callbacks if (state := cb.state_dict()) is not None},
        "rows": json.loads(json.dumps(t.rows, default=plain)),  # plain types: loads with weights_only
        "world_size": t.comm.world_size,
        "rng_cpu_ranks": t.comm.all_gather_object(torch.get_rng_state()) if t.comm.enabled else [],
        "rng_cuda_ranks": t.comm.all_gather_object(torch.cuda.get_rng_state(t.device))
        if t.comm.enabled and t.device.type == "cuda" else [],
    }


def load_resume(t) -> None:
    """Restore `t` (a set-up Trainer) from its run's resume.pt, or refuse with a UserError that says why."""
    if not t.run.resume_path.exists():
        committed = t.run.committed_epoch()
        if committed is not None:  # resume.pt was lost or deleted: restarting would destroy results
            epoch, source = committed
            raise UserError(
                f"{t.run.resume_path} is missing but {source} shows epoch {epoch} completed; resuming would "
                f"train again from epoch 1 over those results, so nothing was changed; restore resume.pt from "
                f"a backup, or keep this run and train a new one: advmem train {t.run.recipe_path} --name NEW")
        # killed before its first epoch was committed: nothing to lose, so start again from epoch 1
        t.log(f"advmem: {t.run.path} has no completed epoch yet; starting it again from epoch 1")
        return
    state = load_resume_state(t.run.resume_path)
    if not recipe_hash_matches(t.recipe, state.get("recipe_hash")):
        raise UserError(f"{t.run.path}: recipe.yaml differs from the one the resume state was written with; "
                        "start a new run instead of resuming")
    try:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.method.load_state_dict(state["method"])
        if state.get("scaler") and t.scaler.is_enabled():
            t.scaler.load_state_dict(state["scaler"])
        rng_ranks = state.get("rng_cpu_ranks") or []
        if t.comm.enabled and len(rng_ranks) == t.comm.world_size:
            torch.set_rng_state(rng_ranks[t.comm.rank])
        elif t.comm.enabled and t.comm.rank > 0:
            torch.manual_seed(rank_seed(t.recipe.seed, t.comm.rank, int(state["epoch"])))
        else:
            torch.set_rng_state(state["rng_cpu"])
        if t.device.type == "cuda":
            restore_cuda_rng(t, state)
        t.best = state["best"]
        for callback in t.callbacks:
            if callback.state_key in state.get("callbacks", {}):
                callback.load_state_dict(state["callbacks"][callback.state_key])
        t.start_epoch = int(state["epoch"]) + 1
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(f"{t.run.resume_path}: resume state does not match this run ({detail}); "
                        "it is from another version or run; start again with --overwrite") from None
    rows = state.get("rows")
    if rows is None:  # written before resume states carried their rows
        rows = t.run.read_metrics()
    try:
        t.rows = [row for row in rows if row["epoch"] < t.start_epoch]
    except (KeyError, TypeError):
        raise UserError(f"{t.run.resume_path}: its metrics rows lack 'epoch' (edited or not advmem's); "
                        "restore it or start again with --overwrite") from None
    t._metrics_mismatch = metrics_disagree(t, rows is state.get("rows"))


def restore_cuda_rng(t, state: dict[str, Any]) -> None:
    """This process's device generator: its own rank's state when the world size matches, a
    fresh (seed, rank, epoch) stream for other ranks otherwise (as for the CPU state)."""
    ranks = state.get("rng_cuda_ranks") or []
    if t.comm.enabled and len(ranks) == t.comm.world_size:
        torch.cuda.set_rng_state(ranks[t.comm.rank], t.device)
    elif t.comm.enabled and t.comm.rank > 0:
        torch.cuda.manual_seed(rank_seed(t.recipe.seed, t.comm.rank, int(state["epoch"])))
    elif isinstance(state.get("rng_cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["rng_cuda"], t.device)


def metrics_disagree(t, from_state: bool) -> str | None:
    """Why metrics.jsonl no longer matches the committed rows of resume.pt (truncated, edited,
    corrupt), or None. Rows of a later, uncommitted epoch are normal (a kill after the metrics
    write) and are rewritten by the resumed run."""
    if not from_state:
        return None
    try:
        disk = t.run.read_metrics()
    except UserError:
        return "is not valid JSON"
    committed = [row for row in disk if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)
                                             and row["epoch"] >= t.start_epoch)]
    if json.dumps(json_safe(committed), sort_keys=True) == json.dumps(json_safe(t.rows), sort_keys=True,
                                                                      default=plain):
        return None
    epochs = [row.get("epoch") if isinstance(row, dict) else None for row in committed]
    return f"has epochs {epochs} where resume.pt has {[row['epoch'] for row in t.rows]}"


def recipe_hash_matches(recipe: Recipe, stored: Any) -> bool:
    """Whether `stored` (a resume state's recipe_hash) is this recipe's hash, as computed now or as
    advmem computed it before resume-settable keys stopped leaving an empty section in the hashed
    data (one variant per subset of the sections those keys live in: they may have been set then),
    and before the method's name was always hashed (`Recipe.hash(legacy_method_names=True)`)."""
    sections = sorted({dotted.split(".")[0] for dotted in RESUME_SETTABLE})
    subsets = [c for n in range(len(sections) + 1) for c in combinations(sections, n)]
    return isinstance(stored, str) and any(stored == recipe.hash(keep_empty=c, legacy_method_names=legacy)
                                           for legacy in (False, True) for c in subsets)


def plain(value: Any) -> Any:
    """numpy / torch scalars a callback may put in a metrics row, as plain Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
