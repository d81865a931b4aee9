"""Per-sample memorization tracker: parquet layout, summaries consistent with the rows, resume."""

from __future__ import annotations

import numpy as np
import torch
import pyarrow.parquet as pq
import pytest
from conftest import CrashAt, Interrupt

from advmem.training import train
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict
from advmem.track.per_sample import PER_SAMPLE_FILE, SCHEMA

EPOCHS = 5
K = 60


def tracked_recipe(name: str, **track) -> dict:
    return {
        "name": name, "device": "cpu", "seed": 1,
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 120, "n_test": 40, "num_classes": 4},
                 "label_noise": {"kind": "symmetric", "rate": 0.5, "seed": 2}},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": EPOCHS, "batch_size": 20, "lr": 0.1, "weight_decay": 0.0},
        "eval": {"train_subset": 40, "attack": {"steps": 2}},
        "track": {"per_sample": {"every": 2, "subset": K, **track}},
    }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run, _ = train(recipe_from_dict(tracked_recipe("full")), run_root=root, quiet=True)
    return run


def recompute(rows: dict[str, np.ndarray], epoch: int, prev_epoch: int | None) -> dict[str, float]:
    at = rows["epoch"] == epoch
    out = {}
    corrupted = rows["corrupted"][at]
    for kind in ("nat", "rob"):
        correct = rows[f"{kind}_correct"][at]
        out[f"track_{kind}_acc"] = correct.mean()
        out[f"track_{kind}_acc_clean"] = correct[~corrupted].mean()
        out[f"track_{kind}_acc_corrupted"] = correct[corrupted].mean()
        if prev_epoch is not None:
            before = rows[f"{kind}_correct"][rows["epoch"] == prev_epoch]
            out[f"track_forget_{kind}"] = int((before & ~correct).sum())
    changed = rows["label"][at] != rows["true_label"][at]
    out["track_memorized_frac"] = rows["rob_correct"][at][changed].mean()
    return out


def test_parquet_layout_and_summaries(full_run):
    table = pq.read_table(full_run.path / PER_SAMPLE_FILE)
    assert table.schema.equals(SCHEMA)
    rows = {name: table[name].to_numpy(zero_copy_only=False) for name in table.schema.names}
    tracked = [2, 4, 5]  # multiples of `every`, and the last epoch
    assert table.num_rows == K * len(tracked)
    assert sorted(set(rows["epoch"].tolist())) == tracked
    for e in tracked:
        idx = rows["index"][rows["epoch"] == e]
        assert len(idx) == K and len(set(idx.tolist())) == K
    # labels and corruption flags agree with the run's corruption record
    z = np.load(full_run.path / "corruption.npz")
    np.testing.assert_array_equal(rows["label"], z["labels"][rows["index"]])
    np.testing.assert_array_equal(rows["true_label"], z["true_labels"][rows["index"]])
    np.testing.assert_array_equal(rows["corrupted"], z["mask"][rows["index"]])
    assert rows["corrupted"].any() and (~rows["corrupted"]).any()
    # correctness agrees with the sign of the margin; robust loss is at least the clean loss on average
    np.testing.assert_array_equal(rows["nat_correct"], rows["nat_margin"] > 0)
    np.testing.assert_array_equal(rows["rob_correct"], rows["rob_margin"] > 0)
    assert rows["rob_loss"].mean() >= rows["nat_loss"].mean()
    metrics = {row["epoch"]: row for row in full_run.read_metrics()}
    for e in (1, 3):
        assert not any(k.startswith("track_") for k in metrics[e])
    assert "track_forget_rob" not in metrics[2]
    for e, prev in ((2, None), (4, 2), (5, 4)):
        expected = recompute(rows, e, prev)
        for key, value in expected.items():
            assert metrics[e][key] == pytest.approx(value), (e, key)


def test_resume_keeps_each_epoch_once(tmp_path, full_run):
    recipe = recipe_from_dict(tracked_recipe("full"))
    with pytest.raises(Interrupt):
        train(recipe, run_root=tmp_path, quiet=True, callbacks=[CrashAt(4)])
    partial = pq.read_table(tmp_path / "full" / PER_SAMPLE_FILE)
    assert sorted(set(partial["epoch"].to_pylist())) == [2, 4]  # epoch 4 written, its resume state not
    run, _ = train(recipe, run_root=tmp_path, resume=True, quiet=True)
    resumed = pq.read_table(run.path / PER_SAMPLE_FILE)
    assert resumed.num_rows == K * 3
    # the resumed run reproduces the uninterrupted one row for row, summaries included
    assert resumed.equals(pq.read_table(full_run.path / PER_SAMPLE_FILE))
    full = {row["epoch"]: row for row in full_run.read_metrics()}
    for row in run.read_metrics():
        for key in (k for k in row if k.startswith("track_")):
            assert row[key] == pytest.approx(full[row["epoch"]][key])


def test_subset_too_large_is_user_error(tmp_path):
    with pytest.raises(UserError, match="track.per_sample.subset 500 exceeds"):
        train(recipe_from_dict(tracked_recipe("big", subset=500)), run_root=tmp_path, quiet=True)
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("method", ["pgd_at", "trades_te"])
def test_tracking_leaves_training_unchanged(tmp_path, method):
    """Turning per-sample tracking on must not move the run (the robust-overfitting study tracks every
    setting): the tracker attacks in eval mode from its own generator, so weights, BN running
    statistics and the logged losses are bitwise those of the untracked run."""
    from safetensors.torch import load_file

    def run(name, track):
        recipe = tracked_recipe(name)
        recipe["model"] = {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}}
        recipe["data"]["synthetic"]["image_size"] = 6
        recipe["optim"]["epochs"] = 3
        if method == "trades_te":
            recipe["method"] = {"name": "te", "base": "trades", "start_epoch": 1, "end_epoch": 2}
        else:  # with the EMA the study tracks inside the PGD-AT run
            recipe["optim"]["ema"] = {"decay": 0.5, "start_epoch": 1}
        if track:
            recipe["track"]["per_sample"] = {"every": 1, "subset": "all"}
        else:
            del recipe["track"]
        path = train(recipe_from_dict(recipe), run_root=tmp_path, quiet=True)[0].path
        assert (path / PER_SAMPLE_FILE).exists() == track
        stems = ["last"] + (["ema_last"] if method == "pgd_at" else [])
        return {stem: load_file(str(path / "checkpoints" / f"{stem}.safetensors")) for stem in stems}

    plain, tracked = run("plain", False), run("tracked", True)
    for stem in plain:
        assert plain[stem].keys() == tracked[stem].keys() and any("running_mean" in k for k in plain[stem])
        for key in plain[stem]:
            assert torch.equal(plain[stem][key], tracked[stem][key]), (stem, key)
