"""Resume never destroys results: a lost resume.pt, a copied or moved run, edited metrics, debris
of a run killed while it was being created, broken lock files (issue 15, section 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advmem.cli import main
from advmem.training import train
from advmem.recipe import recipe_from_dict
from conftest import CrashAt, tree_snapshot


def recipe_dict(root: Path, name: str = "inc", epochs: int = 3, **extra) -> dict:
    recipe = {
        "name": name, "seed": 1, "device": "cpu", "deterministic": True, "output_root": str(root),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 64, "n_test": 32, "image_size": 4}, "val_size": 16},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "method": {"name": "standard"},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "batch_size": 64, "attack": {"steps": 1}},
        "attack": {"steps": 1},
    }
    recipe.update(extra)
    return recipe


def epochs_of(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def refused_resume(run: Path, capsys) -> str:
    """`advmem train --resume RUN` refused: exit 2, one line on stderr (returned), the run untouched."""
    before = tree_snapshot(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert tree_snapshot(run) == before
    return err


def test_missing_resume_state_with_completed_epochs_is_refused(tmp_path, capsys):
    train(recipe_from_dict(recipe_dict(tmp_path)), quiet=True)
    run = tmp_path / "inc"
    (run / "resume.pt").unlink()
    err = refused_resume(run, capsys)
    assert "resume.pt is missing" in err and "epoch 3 completed" in err and "--name NEW" in err


def test_missing_resume_state_of_an_unfinished_run_is_refused(tmp_path, capsys):
    """Metrics of epochs 1-2 (no summary yet): epoch 1 was committed, so a restart would overwrite it."""
    train(recipe_from_dict(recipe_dict(tmp_path, epochs=2)), quiet=True)
    run = tmp_path / "inc"
    for name in ("resume.pt", "summary.json"):
        (run / name).unlink()
    assert "shows epoch 1 completed" in refused_resume(run, capsys)


def test_files_of_an_uncommitted_first_epoch_do_not_block_a_restart(tmp_path, capsys):
    """A kill after epoch 1 wrote its checkpoints but before its resume.pt: nothing committed yet."""
    train(recipe_from_dict(recipe_dict(tmp_path, epochs=1)), quiet=True)
    run = tmp_path / "inc"
    for name in ("resume.pt", "summary.json"):
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "starting it again from epoch 1" in capsys.readouterr().err
    assert epochs_of(run) == [1] and (run / "resume.pt").is_file()


def interrupted_run(tmp_path, **extra) -> Path:
    """A 3-epoch run killed during epoch 2: epoch 1 committed."""
    with pytest.raises(KeyboardInterrupt):
        train(recipe_from_dict(recipe_dict(tmp_path, **extra)), quiet=True, callbacks=[CrashAt(2, KeyboardInterrupt)])
    return tmp_path / "inc"


@pytest.mark.parametrize("setting", ["reliability.on_nonfinite=skip_batch", "distributed.backend=gloo",
                                     "distributed.timeout_s=100"])
def test_documented_recovery_is_accepted_on_resume(tmp_path, setting, capsys):
    run = interrupted_run(tmp_path)
    assert main(["train", "--resume", str(run), "--set", setting, "--quiet"]) == 0, capsys.readouterr().err
    assert epochs_of(run) == [1, 2, 3]


def legacy_hash(recipe) -> str:
    """Recipe.hash() as advmem computed it before this fix: an emptied section stayed in the data."""
    import hashlib

    from advmem.recipe import RESUME_SETTABLE

    body = recipe.model_dump(mode="json", exclude_defaults=True)
    for key in ("name", "description", "output_root", "launcher"):
        body.pop(key, None)
    for dotted in RESUME_SETTABLE:
        section, key = dotted.split(".")
        body.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("extra, resume_set", [
    ({}, []),                                                               # hash unchanged by the fix
    ({"reliability": {"on_nonfinite": "skip_batch"}}, []),                  # old hash had `reliability: {}`
    ({"reliability": {"on_nonfinite": "skip_batch"}}, ["reliability.on_nonfinite=stop"]),
    ({"distributed": {"timeout_s": 100}}, ["reliability.on_nonfinite=skip_batch"]),
])
def test_run_directories_written_with_the_old_hash_still_resume(tmp_path, extra, resume_set, capsys):
    run = interrupted_run(tmp_path, **extra)
    from advmem.engine.checkpoint import load_resume_state, save_resume_state
    from advmem.engine.rundir import RunDir

    state = load_resume_state(run / "resume.pt")
    old = legacy_hash(RunDir(run).load_recipe())
    if not extra:  # the emptied-section fix left this recipe's hash as it was (names aside)
        assert old == RunDir(run).load_recipe().hash(legacy_method_names=True)
    assert old != state["recipe_hash"]  # the fixes changed this recipe's hash
    state["recipe_hash"] = old
    save_resume_state(run / "resume.pt", state)
    args = [a for s in resume_set for a in ("--set", s)]
    assert main(["train", "--resume", str(run), *args, "--quiet"]) == 0, capsys.readouterr().err
    assert epochs_of(run) == [1, 2, 3]


def test_an_edited_recipe_is_still_refused(tmp_path, capsys):
    run = interrupted_run(tmp_path)
    data = yaml.safe_load((run / "recipe.yaml").read_text())
    data["optim"]["lr"] = 0.01
    (run / "recipe.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", "--resume", str(run), "--set", "reliability.on_nonfinite=skip_batch", "--quiet"]) == 2
    assert "recipe.yaml differs" in capsys.readouterr().err


def test_a_copied_run_trains_in_the_copy_and_a_moved_run_resumes(tmp_path, capsys):
    import shutil

    run = interrupted_run(tmp_path)
    fork = tmp_path / "elsewhere" / "fork"
    shutil.copytree(run, fork, symlinks=True)
    original = tree_snapshot(run)
    assert main(["train", "--resume", str(fork), "--quiet"]) == 0, capsys.readouterr().err
    assert tree_snapshot(run) == original  # the original is untouched
    assert epochs_of(fork) == [1, 2, 3] and not (fork / ".lock").exists()
    assert json.loads((fork / "summary.json").read_text())["run"] == "fork"
    moved = tmp_path / "moved"
    run.rename(moved)
    assert main(["train", "--resume", str(moved), "--quiet"]) == 0, capsys.readouterr().err
    assert epochs_of(moved) == [1, 2, 3] and not run.exists()
    a, b = load_file(str(fork / "checkpoints" / "last.safetensors")), load_file(str(moved / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["truncate_line", "drop_rows", "garbage"])
def test_resuming_a_finished_run_repairs_damaged_metrics(tmp_path, damage, capsys):
    train(recipe_from_dict(recipe_dict(tmp_path)), quiet=True)
    run = tmp_path / "inc"
    good_jsonl, good_csv = (run / "metrics.jsonl").read_text(), (run / "metrics.csv").read_text()
    text = {"truncate_line": good_jsonl[: len(good_jsonl) // 2], "drop_rows": good_jsonl.splitlines(True)[0],
            "garbage": good_jsonl + "\x00\x01 not json\n"}[damage]
    (run / "metrics.jsonl").write_text(text)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "rewrote metrics.jsonl and metrics.csv from resume.pt" in err
    assert (run / "metrics.jsonl").read_text() == good_jsonl and (run / "metrics.csv").read_text() == good_csv


def test_a_plain_resume_rewrites_no_metrics(tmp_path, capsys):
    run = interrupted_run(tmp_path)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "rewrote" not in capsys.readouterr().err


def skeleton(tmp_path) -> Path:
    """What a kill between `mkdir` and the run.json write leaves: checkpoints/ and a stale .lock."""
    run = tmp_path / "inc"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "hostname": __import__("socket").gethostname(),
                                           "start_time": None}))
    (run / ".run.json.abc123.tmp").write_text("{")
    return run


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_killed_while_being_created_can_be_started_again(tmp_path, overwrite, capsys):
    run = skeleton(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path, epochs=1)))
    assert main(["train", str(recipe), "--quiet"] + ["--overwrite"] * overwrite) == 0, capsys.readouterr().err
    assert epochs_of(run) == [1] and not list(run.rglob("*.tmp"))


def test_resume_of_a_directory_killed_while_being_created_says_what_to_do(tmp_path, capsys):
    run = skeleton(tmp_path)
    err = refused_resume(run, capsys)
    assert "holds no run yet" in err and "advmem train RECIPE" in err


@pytest.mark.parametrize("content", ["null", "[1, 2]", "42", '"x"', '{"pid": 5}', "dir"])
def test_a_foreign_lock_gives_one_line_not_a_retry_loop(tmp_path, content, capsys):
    run = interrupted_run(tmp_path)
    lock = run / ".lock"
    if content == "dir":
        lock.mkdir()
    else:
        lock.write_text(content)
    code = main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if content == "dir":
        assert code == 2 and err.count("\n") == 1 and "is a directory, not advmem's lock file" in err
        assert lock.is_dir() and epochs_of(run) == [1]
    else:  # not an advmem lock: stale, taken over with a message, and the run continues
        assert code == 0 and "taking over the stale lock" in err and "an unreadable lock file" in err
        assert epochs_of(run) == [1, 2, 3] and not lock.exists()


def test_sigterm_during_the_final_full_test_evaluation_stops_it(tmp_path, monkeypatch, capsys):
    """The signal arrives as the last epoch's full-test evaluation starts: it stops before its next
    batch (not after the whole pass), exit 143, and the run resumes to the same result."""
    import os
    import signal

    from advmem.engine import evaluate, trainer as trainer_module

    extra = {"data": {"dataset": "synthetic", "test_size": 16, "val_size": 16,
                      "synthetic": {"n_train": 64, "n_test": 256, "image_size": 4}},
             "eval": {"train_subset": 16, "batch_size": 8, "attack": {"steps": 1}}}
    ref, _ = train(recipe_from_dict(recipe_dict(tmp_path / "ref", **extra)), quiet=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path, **extra)))
    original, seen = trainer_module.Trainer.evaluate_full_test, []

    def signalled(self, epoch, *progress):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, epoch, *progress)

    def counting(model, dataset, *args, **kwargs):
        seen.append(len(dataset))
        return real_clean(model, dataset, *args, **kwargs)

    real_clean = evaluate.clean_per_sample
    monkeypatch.setattr(trainer_module.Trainer, "evaluate_full_test", signalled)
    monkeypatch.setattr(evaluate, "clean_per_sample", counting)  # the trainer evaluates through evaluate_split
    assert main(["train", str(recipe), "--quiet"]) == 143
    err = capsys.readouterr().err
    assert "during the evaluation of epoch 3; that epoch is discarded" in err and "--resume" in err
    assert seen[-1] == 256  # it was inside the full-test pass (32 batches) when it stopped
    run = tmp_path / "inc"
    assert epochs_of(run) == [1, 2] and not (run / ".lock").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    a, b = load_file(str(ref.path / "checkpoints" / "last.safetensors")), load_file(str(run / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("test_full_rob_acc", "test_full_nat_acc", "val_rob_acc")
    assert [{k: r.get(k) for k in keys} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == \
        [{k: r.get(k) for k in keys} for r in map(json.loads, (ref.path / "metrics.jsonl").read_text().splitlines())]
