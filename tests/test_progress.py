"""Progress of long phases (issue 16 items 1 and 7): plain lines at a bounded interval when stderr is
not a terminal, a tqdm bar on one, nothing with --quiet; the run ETA, the run directory and resume
lines of `train`; summary.json and curves.png of an interrupted run."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from advmem import progress as progress_module
from advmem.engine.rundir import RunDir
from advmem.engine.trainer import format_row
from advmem.errors import UserError
from advmem.progress import Progress
from advmem.recipe import recipe_from_dict
from advmem.sweep import RunsProgress
from advmem.training import train
from conftest import CrashAt, Interrupt, run_cli, tiny_recipe, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = r"\s+\d+% \d+/\d+ \[\d\d:\d\d<(\d\d:\d\d|\?), +[\d.?]+(img/s|s/img)\]"  # tqdm.format_meter, no bar


@pytest.fixture
def plain(monkeypatch):
    """Plain-line mode (stderr is not a terminal) with a 0.1 s interval."""
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.1")


def test_a_silent_pass_still_prints_a_line_every_interval(plain, capsys):
    with Progress("eval epoch 1/1") as phase:
        with phase.child("test PGD-10", total=100) as bar:
            time.sleep(1.0)  # one long batch: no update, yet the log must show the pass is alive
            bar.update(100)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3, lines
    assert all(re.fullmatch(r"eval epoch 1/1 test PGD-10:" + LINE, line) for line in lines), lines
    assert lines[0].startswith("eval epoch 1/1 test PGD-10:   0% 0/100") and "100% 100/100" in lines[-1]


def test_the_interval_spans_the_passes_of_a_phase(plain, monkeypatch, capsys):
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.5")
    with Progress("epoch 1/1") as phase:
        for split in ("train", "val", "test"):  # each pass shorter than the interval, the phase longer
            with phase.child(f"{split} clean", total=1) as bar:
                time.sleep(0.3)
                bar.update(1)
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/1 (val|test) clean:", err), err


def test_short_phases_and_disabled_ones_print_nothing(plain, capsys):
    with Progress("epoch 1/1") as phase, phase.child("train", total=10) as bar:
        bar.update(10)
    with Progress("epoch 1/1", enabled=False) as phase, phase.child("train", total=10) as bar:
        time.sleep(0.3)
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    with Progress("epoch 2/5") as phase, phase.child("train", total=64) as bar:
        time.sleep(0.2)  # past tqdm's mininterval, so the update is drawn
        bar.update(64)
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 2/5 train: 100%" in err and "img/s" in err


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", value)
    with pytest.raises(UserError, match="ADVMEM_PROGRESS_INTERVAL"):
        progress_module.interval()


def test_zero_interval_turns_the_lines_off(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0")
    with Progress("epoch 1/1") as phase, phase.child("train", total=1) as bar:
        time.sleep(0.2)
        bar.update(1)
    assert capsys.readouterr().err == ""


def test_train_through_a_pipe_prints_lines_for_training_and_evaluation(write_recipe, tmp_path, monkeypatch):
    """The CLI with stderr to a pipe (nohup, Slurm): progress lines of the training pass, the
    per-epoch evaluation and the final full-test evaluation, the run directory first, a run ETA."""
    # a pass prints a line only if an interval ends while it is open; the tiny passes take about 10-20 ms,
    # so at 0.02 s a pass's line was missed now and then (a CI failure): 2 ms gives each pass several
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.002")
    recipe = write_recipe(**{"output_root": str(tmp_path / "runs"), "data.synthetic.n_test": 256})
    proc = run_cli(["train", str(recipe)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert err[0] == f"advmem train: run directory {tmp_path / 'runs' / 'tiny'}", err[:3]
    assert any(re.fullmatch(r"epoch 1/2 train:" + LINE, line) for line in err), err
    assert any(re.fullmatch(r"epoch [12]/2 (train|val|test) (clean|PGD-2):" + LINE, line) for line in err), err
    assert any(re.fullmatch(r"epoch 2/2 test_full (clean|PGD-2):" + LINE, line) for line in err), err
    epoch_lines = [line for line in err if line.startswith("epoch   ")]
    assert re.search(r"run ETA \d\d:\d\d$", epoch_lines[0]) and "ETA" not in epoch_lines[1], epoch_lines
    assert "\r" not in proc.stderr  # no bar redraws in a log

    quiet = run_cli(["train", str(recipe), "--name", "q", "--quiet"], cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_eval_through_a_pipe_prints_lines_per_attack_and_autoattack_component(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, "ev", "pgd_at")
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.02")
    proc = run_cli(["eval", str(run), "--checkpoint", "last", "--attack", "pgd", "--attack", "autoattack-lite",
                    "--batch-size", "4", "--steps", "100"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert any(re.fullmatch(r"eval ev/last pgd:" + LINE, line) for line in err), err
    assert any(re.fullmatch(r"eval ev/last autoattack-lite apgd-(ce|t):" + LINE, line) for line in err), err
    # AutoAttack's bar counts batches as pyautoattack logs them, not only whole components
    counts = [int(m.group(1)) for line in err if (m := re.match(r"eval ev/last autoattack-lite apgd-ce: +\d+% (\d+)/", line))]
    assert counts and counts[-1] > 0, err


def test_bad_interval_from_the_cli_exits_2_before_the_run_directory_exists(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "soon")
    recipe = write_recipe(**{"output_root": str(tmp_path / "runs")})
    proc = run_cli(["train", str(recipe)], cwd=tmp_path)
    assert proc.returncode == 2 and "ADVMEM_PROGRESS_INTERVAL='soon'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs" / "tiny").exists()


def test_run_eta_on_the_epoch_line():
    row = {"epoch": 3, "lr": 0.1, "train_loss": 1.0, "images_per_s": 100.0, "epoch_time": 12.0}
    assert format_row(row, eta=3725).endswith("run ETA 1:02:05")
    assert "ETA" not in format_row(row, eta=0.0) and "ETA" not in format_row(row)


def test_sweep_progress_reads_each_runs_metrics(tmp_path):
    for name, epochs in (("a", 2), ("b", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n"
                                                               for e in range(1, epochs + 1)))
    watch = RunsProgress({"a": (tmp_path / "a", 3), "b": (tmp_path / "b", 3), "c": (tmp_path / "c", 2)},
                         enabled=False)
    assert watch.bar.n == 3 and watch.bar.total == 8
    (tmp_path / "a" / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    watch.run_ended("a")
    watch.poll(["b"], force=True)
    line = watch.bar.line()
    assert re.match(r"sweep:  50% 4/8 \[", line) and line.endswith("1/3 runs done; running b 1/3]"), line
    watch.close()


# ---------------------------------------------------------------------------------------------
# Item 7: the train command's own lines, and what an interrupted run keeps


def tiny(epochs=3):
    return recipe_from_dict(tiny_recipe(**{"optim.epochs": epochs, "optim.schedule.milestones": [1]}))


def test_an_interrupted_run_has_a_summary_and_curves_and_resume_says_where(tmp_path, capsys):
    recipe = tiny()
    with pytest.raises(Interrupt):
        train(recipe, run_root=tmp_path, callbacks=[CrashAt(3)])
    run = RunDir(tmp_path / "tiny")
    summary = json.loads(run.summary_path.read_text())
    assert summary["complete"] is False and summary["epochs_completed"] == 2 and summary["last"]["epoch"] == 2
    assert run.curves_path.stat().st_size > 0
    assert not run.finished(3)
    capsys.readouterr()
    train(recipe, run_root=tmp_path, resume=True)
    err = capsys.readouterr().err.splitlines()
    first_epoch = next(i for i, line in enumerate(err) if line.startswith("epoch "))
    assert f"advmem train: resuming {run.path} at epoch 3/3" in err[:first_epoch], err
    summary = json.loads(run.summary_path.read_text())
    assert summary["complete"] is True and summary["epochs_completed"] == 3 and run.finished(3)
    train(recipe, run_root=tmp_path, resume=True)
    assert "has completed all 3 epochs; nothing to train" in capsys.readouterr().err


class Killed(BaseException):
    """A kill the process cannot clean up after (no refresh on the way out)."""


def test_curves_are_drawn_during_the_fit(tmp_path, monkeypatch):
    import advmem.training as training

    monkeypatch.setattr(training, "CURVES_EVERY", 0.0)
    with pytest.raises(Killed):
        train(tiny(), run_root=tmp_path, quiet=True, callbacks=[CrashAt(2, Killed)])
    run = RunDir(tmp_path / "tiny")
    assert run.curves_path.is_file()  # drawn after epoch 1 by the Curves callback
    assert json.loads(run.summary_path.read_text())["epochs_completed"] == 1


def test_a_quiet_run_has_no_progress_and_curves_wait_for_the_interval(tmp_path, monkeypatch, capsys):
    import advmem.training as training

    monkeypatch.setattr(training, "CURVES_EVERY", 3600.0)
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.01")
    with pytest.raises(Killed):
        train(tiny(), run_root=tmp_path, quiet=True, callbacks=[CrashAt(3, Killed)])
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "tiny" / "curves.png").exists()  # CURVES_EVERY has not passed: not drawn yet


def test_the_weights_are_identical_with_and_without_the_display(tmp_path):
    """Same weights with and without the display (it only reads counters)."""
    from safetensors.torch import load_file

    quiet, _ = train(tiny(epochs=2), run_root=tmp_path / "q", quiet=True)
    shown, _ = train(tiny(epochs=2), run_root=tmp_path / "s", quiet=False)
    a, b = (load_file(str(r.path / "checkpoints" / "last.safetensors")) for r in (quiet, shown))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
