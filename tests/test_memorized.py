"""The memorized-samples figures: the selection rules on a hand-made per-sample table, the schedule's
first decay, and a tiny real TE run whose grids, captions and report section are checked."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from advmem.engine.schedules import decay_epochs, first_decay
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict
from advmem.track.memorized import hardest_curve, read_memorized, select_memorized
from advmem.track.per_sample import PER_SAMPLE_FILE, SCHEMA

pytestmark = pytest.mark.usefixtures("one_thread_module")

EPOCHS = [1, 2, 3, 4, 6]  # tracked epochs; the recipe's first decay is after epoch 3
# sample -> (label, true_label, robust-correct per tracked epoch, robust loss per tracked epoch)
TABLE = {
    3: (1, 1, "FFFTT", [2.0, 2.0, 2.0, 0.1, 0.1]),    # fitted after the decay
    5: (0, 0, "TFFTT", [1.0, 1.0, 1.0, 0.1, 0.1]),    # correct once before the decay: not (a)
    7: (2, 2, "FFFTT", [3.0, 3.0, 3.0, 0.1, 0.1]),    # redrawn onto its true class: clean label
    8: (0, 2, "FFFFT", [4.0, 4.0, 4.0, 3.0, 0.1]),    # changed label, fitted after the decay: (a) and (b)
    10: (3, 1, "FFTTT", [0.5, 0.5, 0.5, 0.2, 0.2]),   # changed label fitted before the decay: (b)
    12: (1, 3, "FFFTF", [5.0, np.nan, 5.0, 0.3, 9.0]),  # changed, forgotten at the end; a NaN loss
    20: (2, 2, "TTTTT", [0.1, 0.1, 0.1, 0.1, 50.0]),  # easy before the decay, huge loss after it
}


def write_table(path, table=TABLE, epochs=EPOCHS):
    rows = {name: [] for name in SCHEMA.names}
    for e, epoch in enumerate(epochs):
        for index, (label, true, correct, loss) in table.items():
            rows["epoch"].append(epoch)
            rows["index"].append(index)
            rows["label"].append(label)
            rows["true_label"].append(true)
            rows["corrupted"].append(index in (7, 8, 10, 12))
            rows["label_changed"].append(label != true)
            rows["nat_correct"].append(correct[e] == "T")
            rows["rob_correct"].append(correct[e] == "T")
            for key in ("nat_loss", "rob_loss"):
                rows[key].append(loss[e])
            for key in ("nat_margin", "rob_margin"):
                rows[key].append(1.0 if correct[e] == "T" else -1.0)
    pq.write_table(pa.table(rows, schema=SCHEMA), path)
    return {k: np.asarray(v) for k, v in rows.items()}


def constructed_run(tmp_path, schedule=None):
    run = tmp_path / "constructed"
    run.mkdir()
    recipe = recipe_from_dict({"name": "constructed", "device": "cpu",
                               "data": {"dataset": "synthetic", "synthetic": {"n_train": 24, "n_test": 8}},
                               "model": {"name": "mlp"},
                               "optim": {"epochs": 6, "schedule": schedule or {"name": "multistep", "milestones": [3, 5]}},
                               "track": {"per_sample": {"every": 2}}})
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    write_table(run / PER_SAMPLE_FILE)
    return run


def test_each_rule_picks_exactly_the_expected_samples(tmp_path):
    sel, _ = read_memorized(constructed_run(tmp_path), k_hardest=3)
    assert sel.decay == 3 and sel.notes == []
    assert sel.epochs.tolist() == EPOCHS and sel.index.tolist() == sorted(TABLE)
    # hardness: mean robust loss over epochs 1-3 (NaN skipped); (a) and (b) listed hardest first
    assert sel.hardness_epochs.tolist() == [1, 2, 3]
    assert sel.hardness[sel.row(np.array([12, 20]))].tolist() == [5.0, pytest.approx(0.1)]
    assert sel.after_decay.tolist() == [8, 7, 3]
    assert sel.corrupted_fit.tolist() == [8, 10]
    assert sel.hardest.tolist() == [12, 8, 7]  # 20's loss of 50 after the decay does not count
    memorized = dict(zip(sel.index.tolist(), sel.memorized_epoch.tolist()))
    assert memorized == {3: 4, 5: 4, 7: 4, 8: 6, 10: 3, 12: 0, 20: 1}
    counts = sel.counts()
    assert counts == {"epoch": EPOCHS, "clean": [2, 1, 1, 4, 4], "corrupted": [0, 0, 1, 2, 2],
                      "n_clean": 4, "n_corrupted": 3}


def test_without_a_step_decay_or_tracked_epochs_before_it_rule_a_is_undefined(tmp_path):
    columns = write_table(tmp_path / "t.parquet")
    for decay, says in ((None, "no step decay"), (0, "no tracked epoch at or before"), (6, "no tracked epoch after")):
        sel = select_memorized(columns, decay, k_hardest=2)
        assert sel.after_decay is None and says in sel.notes[0]
        assert sel.corrupted_fit.tolist() == [8, 10]
    sel = select_memorized(columns, None, k_hardest=2)
    assert sel.hardness_epochs.tolist() == EPOCHS and sel.hardest.tolist() == [20, 12]  # all epochs count


def test_the_hardest_curve_follows_rule_c_over_the_tracked_epochs(tmp_path):
    """The robust-overfitting study's hardest-samples curve: the head of rule (c)'s ranking, its robust
    accuracy and mean robust loss (NaN skipped) at every tracked epoch."""
    sel = select_memorized(write_table(tmp_path / "t.parquet"), 3, k_hardest=len(TABLE))
    curve = hardest_curve(sel, 0.3)  # round(0.3 * 7) = 2 samples: 12 and 8
    assert curve["k"] == 2 and curve["n"] == 7 and curve["changed"] == 2 and curve["decay"] == 3
    assert curve["epochs"] == EPOCHS and curve["rob_acc"] == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert curve["rob_loss"] == pytest.approx([4.5, 4.0, 4.5, 1.65, 4.55])
    with pytest.raises(ValueError, match="2 samples asked for, 1 selected"):
        hardest_curve(select_memorized(write_table(tmp_path / "u.parquet"), 3, k_hardest=1), 0.3)


def test_the_study_reports_the_tracked_hardest_curve_per_seed():
    from advmem.studies.robust_overfitting import hardest_tracked_lines

    def curve(accs, losses):
        return {"epochs": [4, 8, 12], "rob_acc": accs, "rob_loss": losses, "k": 5, "n": 50, "decay": 8, "changed": 3}

    results = {"settings": {"hard_fraction": 0.1}, "methods": {
        "pgd_at": {"label": "PGD-AT", "per_seed": {"0": {"hard_tracked": curve([0.0, 0.2, 0.6], [3.0, 2.0, 1.0])},
                                                   "1": {"hard_tracked": curve([0.0, 0.0, 0.4], [3.0, 2.0, 2.0])}}},
        "trades": {"label": "TRADES", "per_seed": {"0": {"hard_tracked": None}}}}}
    lines = hardest_tracked_lines(results)
    row = [line for line in lines if line.startswith("| PGD-AT |")]
    assert len(row) == 1 and "5 of 50 (3 with a changed label)" in row[0] and row[0].endswith("| 2 |")
    assert "epoch 4: 0.0 ± 0.0%, loss 3 ± 0" in row[0]
    assert "epoch 8: 10.0 ± 14.1%, loss 2 ± 0" in row[0] and "epoch 12: 50.0 ± 14.1%, loss 1.5 ± 0.71" in row[0]
    assert not any("TRADES" in line for line in lines)  # a run without tracking has no row
    assert hardest_tracked_lines({"settings": {"hard_fraction": 0.1}, "methods": {}}) == []


def test_a_diverged_sample_ranks_last_and_the_json_stays_valid(tmp_path):
    from advmem.report.memorized import memorized_figures

    run = constructed_run(tmp_path)
    table = {**TABLE, 20: (2, 2, "TTTTT", [np.nan] * 5)}
    write_table(run / PER_SAMPLE_FILE, table)
    out = memorized_figures(run, tmp_path / "fig")
    summary = json.loads((tmp_path / "fig" / "memorized.json").read_text(),
                         parse_constant=lambda token: pytest.fail(f"{token} in memorized.json"))
    assert summary["selections"]["hardest"]["index"][-1] == 20
    assert summary["selections"]["hardest"]["score"][-1] is None
    assert list(out["figures"]) == ["counts"]  # the synthetic images do not match: grids left out


def test_a_table_whose_epochs_hold_different_samples_is_refused(tmp_path):
    columns = write_table(tmp_path / "t.parquet")
    keep = ~((columns["epoch"] == 4) & (columns["index"] == 5))
    with pytest.raises(UserError, match="do not all hold the same samples"):
        select_memorized({k: v[keep] for k, v in columns.items()}, 3)
    run = constructed_run(tmp_path)
    (run / PER_SAMPLE_FILE).unlink()
    with pytest.raises(UserError, match="no per_sample.parquet"):
        read_memorized(run)


@pytest.mark.parametrize(("schedule", "epochs", "decays"), [
    ({"name": "multistep", "milestones": [3, 5]}, 6, [3, 5]),
    ({"name": "multistep", "milestones": [3], "gamma": 1.0}, 6, []),
    ({"name": "step", "step_size": 2}, 6, [2, 4]),
    ({"name": "cosine"}, 6, []),
    ({"name": "constant"}, 6, []),
])
def test_decay_epochs_come_from_the_schedule(schedule, epochs, decays):
    optim = recipe_from_dict({"optim": {"epochs": epochs, "schedule": schedule}}).optim
    assert decay_epochs(optim) == decays
    assert first_decay(optim) == (decays[0] if decays else None)


def test_images_that_do_not_match_the_run_are_left_out_with_a_note(tmp_path):
    from advmem.report.memorized import draw_memorized

    figs = draw_memorized(constructed_run(tmp_path))  # synthetic data's labels are not the table's
    assert set(figs.pngs) == {"counts"}
    assert any("images unavailable" in n and "true labels" in n for n in figs.notes)
    assert [t["index"] for t in figs.summary["tiles"]["after_decay"]] == [8, 7, 3]


# -- a tiny real run --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def te_run(tmp_path_factory, one_thread_module):
    from advmem.training import train

    recipe = recipe_from_dict({
        "name": "te", "device": "cpu", "seed": 1,
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 48, "n_test": 16, "num_classes": 4, "channels": 3},
                 "label_noise": {"kind": "symmetric", "rate": 0.5, "seed": 2}},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "method": {"name": "te", "start_epoch": 2, "end_epoch": 3},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 1},
        "optim": {"epochs": 4, "batch_size": 16, "lr": 0.2, "weight_decay": 0.0,
                  "schedule": {"name": "multistep", "milestones": [2]}},
        "eval": {"train_subset": 8, "every": 4, "attack": {"steps": 1}},
        "track": {"per_sample": {"every": 1}},
    })
    return train(recipe, run_root=tmp_path_factory.mktemp("runs"), quiet=True)[0].path


def test_a_real_run_gets_its_grids_json_and_te_captions(te_run, tmp_path):
    import torch
    from safetensors.torch import load_file

    from advmem.data.dataset import build_data
    from advmem.engine.rundir import RunDir
    from advmem.report.memorized import (
        FIGURES,
        TrainImages,
        caption_text,
        memorized_figures,
    )

    out = memorized_figures(te_run, tmp_path / "fig")
    summary = json.loads((tmp_path / "fig" / "memorized.json").read_text())
    assert summary["first_decay_epoch"] == 2 and summary["tracked_epochs"] == [1, 2, 3, 4]
    # the selections agree with the table, recomputed row by row
    table = pq.read_table(te_run / PER_SAMPLE_FILE).to_pylist()
    correct = {(r["epoch"], r["index"]): r["rob_correct"] for r in table}
    changed = {r["index"]: r["label"] != r["true_label"] for r in table}
    labels = {r["index"]: (r["label"], r["true_label"]) for r in table}
    after = {i for i in changed if correct[4, i] and not (correct[1, i] or correct[2, i])}
    fitted_wrong = {i for i in changed if changed[i] and correct[4, i]}
    assert after and fitted_wrong  # the run has some of each, so every grid is drawn
    assert set(summary["selections"]["after_decay"]["index"]) == after
    assert set(summary["selections"]["corrupted_fit"]["index"]) == fitted_wrong
    assert out["selected"] == {"after_decay": len(after), "corrupted_fit": len(fitted_wrong), "hardest": 16}
    assert any(changed.values()) and summary["counts"]["n_corrupted"] == sum(changed.values())
    for key in ("after_decay", "corrupted_fit", "hardest", "counts"):
        wanted = key == "counts" or summary["selections"][key]["n"] > 0
        assert (key in out["figures"]) is wanted
        if wanted:
            assert (tmp_path / "fig" / FIGURES[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (tmp_path / "fig" / FIGURES[key]).stat().st_size < 60_000
    # the TE captions are the saved ensemble's normalized top class and probability
    state = load_file(str(te_run / "te_buffer.safetensors"))
    target = state["buffer"] / state["buffer"].sum(dim=1, keepdim=True)
    conf, label = target.max(dim=1)
    for tile in summary["tiles"]["hardest"]:
        assert tile["te_label"] == int(label[tile["index"]])
        assert tile["te_conf"] == pytest.approx(float(conf[tile["index"]]), abs=1e-4)
        assert f"TE {tile['te_label']} ({tile['te_conf']:.2f})" in caption_text(tile)
        assert (tile["given"], tile["true"]) == labels[tile["index"]]
    # the thumbnails are the training images the run used (its labels aside)
    recipe = RunDir(te_run).load_recipe()
    images, _ = TrainImages().get(recipe)
    assert torch.equal(torch.from_numpy(images).permute(0, 3, 1, 2), build_data(recipe.data, "cpu").train.x)


def test_the_report_embeds_the_grids_and_notes_runs_without_tracking(te_run, tmp_path):
    from advmem.cli import main
    from advmem.report.memorized import FIGURES, memorized_figures

    untracked = tmp_path / "untracked"
    shutil.copytree(te_run, untracked)
    (untracked / PER_SAMPLE_FILE).unlink()
    figs = memorized_figures(te_run, te_run / "memorized")  # as a study leaves them: not shown twice
    out = tmp_path / "report.html"
    assert main(["report", str(te_run), str(untracked), "-o", str(out)]) == 0
    html = out.read_text()
    section = html[html.index('<section id="memorized-samples">'):]
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(embedded) == len(figs["figures"])
    written = {base64.b64encode(Path(p).read_bytes()).decode() for p in figs["figures"].values()}
    assert set(embedded) == written  # the report draws exactly what memorized_figures writes
    assert "Without per-sample tracking (track.per_sample), not shown: untracked." in section
    assert "<h3>te</h3>" in section and "<h3>untracked</h3>" not in section
    for name in FIGURES.values():
        assert html.count(name) == 0  # the copies under te/memorized/ are not embedded as figures
    assert len(html) < 400_000


def test_the_studies_table_counts_each_group_over_its_tracked_runs(te_run, tmp_path):
    """studies.common.memorized_samples: one row per group with tracked runs, the last tracked
    epoch's counts (mean over the group's runs), grids per run; untracked groups left out."""
    from advmem.studies.common import memorized_samples

    lines = memorized_samples({"TE": [te_run, te_run], "untracked": [tmp_path / "nothing"]}, tmp_path / "study")
    summary = json.loads((tmp_path / "study" / "memorized" / te_run.name / "memorized.json").read_text())
    counts = summary["counts"]
    row = next(line for line in lines if line.startswith("| TE |"))
    assert row.startswith(f"| TE | 2 | {counts['corrupted'][-1]:.1f} ± 0.0 of {counts['n_corrupted']} | "
                          f"{counts['clean'][-1]:.1f} ± 0.0 of {counts['n_clean']} |")
    assert not any("untracked" in line for line in lines)
    assert (tmp_path / "study" / "memorized" / te_run.name / "memorized_counts.png").is_file()
    assert memorized_samples({"untracked": [tmp_path / "nothing"]}, tmp_path / "other") == []
