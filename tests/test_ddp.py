"""DDP on CPU with gloo and 2 processes: same metrics as one process, checkpoints that load in a
single process, per-sample method state kept identical on every rank, and a killed rank that
stops the others with a clear message instead of a hang.

The equality test uses an MLP (no BatchNorm: per-rank batch statistics would differ without
sync_bn, which needs CUDA) and attack.start: none (random starts are drawn per rank)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from advmem.engine.checkpoint import build_from_checkpoint, load_resume_state
from advmem.engine.distributed import child_env, free_port, init_distributed
from advmem.training import train
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING = {"train_time", "images_per_s", "eval_time", "epoch_time", "world_size"}


def recipe_dict(root: Path, name: str = "ddp", epochs: int = 3, method: str = "pgd_at") -> dict:
    return {
        "name": name, "seed": 0, "device": "cpu", "output_root": str(root),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 176, "n_test": 64, "image_size": 6}, "val_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "method": {"name": method},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2, "start": "none"},
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05},  # 144 train images: last batch of 16
        "eval": {"train_subset": 32, "batch_size": 64, "attack": {"steps": 2}},
    }


def env(**extra) -> dict:
    return child_env(SRC, **extra)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_match_one_process(tmp_path, one_thread):
    single, _ = train(recipe_from_dict(recipe_dict(tmp_path / "single")), quiet=True)
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path / "runs")))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "advmem", "train", str(recipe), "--quiet"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run: ") == 1, "only rank 0 prints the summary"
    run = tmp_path / "runs" / "ddp"
    ddp_rows, ref_rows = rows(run), rows(single.path)
    assert [r["epoch"] for r in ddp_rows] == [1, 2, 3] and all(r["world_size"] == 2 for r in ddp_rows)
    for got, want in zip(ddp_rows, ref_rows):
        assert set(got) - TIMING == set(want) - TIMING
        for key in set(want) - TIMING:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    # the DDP checkpoint is a plain single-process checkpoint
    model, meta = build_from_checkpoint(run / "checkpoints" / "last")
    ref_model, _ = build_from_checkpoint(single.path / "checkpoints" / "last")
    assert meta["epoch"] == 3
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert not (run / ".lock").exists()
    assert load_resume_state(run / "resume.pt")["world_size"] == 2


def test_killing_one_rank_stops_the_other_with_a_clear_message(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path / "runs", epochs=500)))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "advmem", "train", str(recipe), "--quiet"],
                              env=env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    run = tmp_path / "runs" / "ddp"
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size) \
            and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    assert procs[0].poll() is None, procs[0].communicate()[1]
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    procs[1].communicate()
    assert time.monotonic() - killed_at < 90  # collectives fail fast on a dead peer; no 30-minute hang
    assert procs[0].returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("advmem: failed: DDP rank 0 of 2: lost contact with another worker"), err
    assert f"--resume {run}" in last and "Traceback" not in err
    assert not (run / ".lock").exists()
    state = load_resume_state(run / "resume.pt")  # the last completed epoch is intact
    assert [r["epoch"] for r in rows(run)][: state["epoch"]] == list(range(1, state["epoch"] + 1))


# -- per-sample method state (TE's buffer) through the generic sync_state hook -------------------


def _spawned(rank: int, world: int, port: int, root: str) -> None:
    from advmem.methods.base import AdvContext, Method, accuracy_log
    from advmem.recipe.method import METHODS
    from advmem.recipe import MethodConfig

    class SeenConfig(MethodConfig):
        name: Literal["count_seen"] = "count_seen"

    @METHODS.register("count_seen")
    class CountSeen(Method):
        """Counts, per training sample, how often it was trained on (a stand-in for TE's buffer)."""

        Config = SeenConfig

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = torch.zeros(self.num_train, dtype=torch.long)
            self.local = torch.zeros(self.num_train, dtype=torch.long)  # never synced: this rank's shard

        def attack(self, model, batch, epoch):
            self.seen[batch.index] += 1  # local rows only: the other ranks learn of them in sync_state
            self.local[batch.index] += 1
            return AdvContext(x_adv=None)

        def outer_loss(self, model, batch, ctx, epoch):
            logits = model(batch.x)
            return self.ce(logits, batch.y), {"acc": accuracy_log(logits, batch.y)}

        def sync_state(self, batch, comm):
            index = comm.all_gather(batch.index)
            self.seen[index] = comm.all_gather(self.seen[batch.index])

        def state_dict(self):
            return {"seen": self.seen.clone()}

        def load_state_dict(self, state):
            self.seen = state["seen"].clone()

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    recipe = recipe_from_dict({**recipe_dict(Path(root), name="seen", epochs=2), "method": {"name": "count_seen"}})
    import advmem.engine.trainer as trainer_module

    original = trainer_module.Trainer.fit

    def fit(self):  # record every rank's final state (only rank 0 writes the run directory)
        out = original(self)
        torch.save(self.method.state_dict()["seen"], Path(root) / f"seen{rank}.pt")
        torch.save(self.method.local, Path(root) / f"local{rank}.pt")
        return out

    trainer_module.Trainer.fit = fit
    train(recipe, quiet=True)


def test_per_sample_state_is_identical_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    seen = [torch.load(tmp_path / f"seen{r}.pt") for r in (0, 1)]
    local = [torch.load(tmp_path / f"local{r}.pt") for r in (0, 1)]
    # each rank trained on its own half of every epoch: disjoint per epoch, together all samples
    assert local[0].sum() == local[1].sum() == 144 and torch.equal(local[0] + local[1], torch.full((144,), 2))
    assert (local[0] > 0).sum() < 144 and (local[1] > 0).sum() < 144
    assert torch.equal(seen[0], seen[1])
    # 144 training images, sharded over 2 ranks: every sample once per epoch, 2 epochs
    assert seen[0].tolist() == [2] * 144
    assert torch.equal(load_resume_state(tmp_path / "seen" / "resume.pt")["method"]["seen"], seen[0])


def test_launch_errors_are_user_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    base = recipe_dict(Path("unused"))
    with pytest.raises(UserError, match="not divisible by the 2 DDP processes"):
        init_distributed(recipe_from_dict({**base, "optim": {**base["optim"], "batch_size": 33}}))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sync_bn needs CUDA"):
            init_distributed(recipe_from_dict({**base, "distributed": {"sync_bn": True}}))
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="bad torchrun environment"):
        init_distributed(recipe_from_dict(base))
