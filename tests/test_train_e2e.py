"""End to end: `advmem train` writes every file of the run directory; resume equals uninterrupted."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advmem.training import train
from advmem.recipe import recipe_from_dict
from conftest import CrashAt, run_cli, tiny_recipe


def test_train_writes_every_file(tmp_path, write_recipe):
    recipe = write_recipe()
    proc = run_cli(["train", str(recipe), "--set", f"output_root={tmp_path / 'runs'}", "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "tiny"
    for name in ["recipe.yaml", "metrics.jsonl", "metrics.csv", "resume.pt", "curves.png", "summary.json",
                 "checkpoints/best.safetensors", "checkpoints/best.json", "checkpoints/last.safetensors",
                 "checkpoints/last.json", "checkpoints/init.safetensors"]:
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ["train_loss", "train_nat_acc", "train_rob_acc", "val_nat_acc", "val_rob_acc", "test_nat_acc",
                "test_rob_acc", "lr", "grad_norm_sq", "epoch_time", "images_per_s"]:
        assert key in rows[-1], key
    assert rows[0]["lr"] == 0.05 and rows[1]["lr"] == pytest.approx(0.005)
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "test_rob_acc" in csv_lines[0]
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert resolved["attack"]["eps"] == "0.1" and resolved["method"]["name"] == "pgd_at"
    side = json.loads((run / "checkpoints/last.json").read_text())
    for key in ["architecture", "dataset", "threat_model", "eps", "normalization", "recipe_hash", "epoch", "metrics"]:
        assert key in side, key
    assert side["architecture"]["name"] == "small_cnn" and side["eps"] == "0.1" and side["epoch"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_selected_on"] == "val" and summary["last"]["epoch"] == 2
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the sidecar rebuilds the model and `advmem eval` runs on the run directory
    proc = run_cli(["eval", str(run), "--n-examples", "32", "--steps", "2", "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "checkpoints/last.eval.json").read_text())
    assert result["n_examples"] == 32 and 0 <= result["robust_acc"] <= result["clean_acc"] <= 1


@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_resume_equals_uninterrupted(tmp_path, method):
    base = tiny_recipe(**{"optim.epochs": 4, "optim.schedule.milestones": [2], "method.name": method})
    straight, _ = train(recipe_from_dict({**base, "name": "straight"}), run_root=tmp_path, quiet=True)
    broken = recipe_from_dict({**base, "name": "broken"})
    with pytest.raises(KeyboardInterrupt):
        train(broken, run_root=tmp_path, quiet=True, callbacks=[CrashAt(3, KeyboardInterrupt)])
    rows = [json.loads(x) for x in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    resumed, _ = train(broken, run_root=tmp_path, resume=True, quiet=True)
    a = load_file(str(straight.checkpoints / "last.safetensors"))
    b = load_file(str(resumed.checkpoints / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(x) for x in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    ref = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_rob_acc"] for r in rows] == [r["test_rob_acc"] for r in ref]


def test_checkpoint_epochs_keep_the_weights_of_those_epochs(tmp_path):
    """log.checkpoint_epochs: checkpoints/epoch-N for the probes along training; too late an epoch is refused."""
    from advmem.analysis.common import resolve_checkpoint
    from advmem.engine.checkpoint import read_sidecar
    from advmem.errors import UserError

    body = tiny_recipe()
    body["log"] = {"checkpoint_epochs": [1]}
    run, _ = train(recipe_from_dict(body), run_root=tmp_path, quiet=True)
    path = resolve_checkpoint(run.path, "epoch-1")
    assert path.name == "epoch-1.safetensors" and read_sidecar(path)["epoch"] == 1
    epoch1, last = load_file(str(path)), load_file(str(run.checkpoints / "last.safetensors"))
    assert any(not torch.equal(epoch1[k], last[k]) for k in last)  # epoch 2 moved on from it
    assert not (run.checkpoints / "epoch-2.safetensors").exists()
    body["log"] = {"checkpoint_epochs": [3]}
    with pytest.raises((UserError, ValueError), match="after the last epoch"):
        recipe_from_dict(body)
