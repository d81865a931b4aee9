"""`RunDir.status`: the one "is this run done" rule of the sweep and the studies (issue 17, item 7)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_run

from advmem.engine.rundir import RunDir
from advmem.engine.safety import LOCK_NAME
from advmem.errors import UserError
from advmem.studies.common import study_status
from advmem.sweep import SweepRun, sweep_status

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A complete one-epoch run and its recipe."""
    path = tiny_run(tmp_path_factory.mktemp("runs"), "done", "pgd_at")
    return path, RunDir(path).load_recipe()


def copy(done, tmp_path):
    path = shutil.copytree(done[0], tmp_path / "copy")
    return RunDir(path), done[1]


def test_nothing_to_lose_is_new(tmp_path, done):
    recipe = done[1]
    assert RunDir(tmp_path / "absent").status(recipe) == "new"
    skeleton = tmp_path / "skeleton"  # killed while its directory was being created
    (skeleton / "checkpoints").mkdir(parents=True)
    assert RunDir(skeleton).status(recipe) == "new"
    (skeleton / LOCK_NAME).write_text("{}")  # an unreadable lock of a dead writer
    assert RunDir(skeleton).status(recipe) == "new"


def test_a_complete_run_and_what_makes_it_incomplete(tmp_path, done):
    run, recipe = copy(done, tmp_path)
    assert run.status(recipe) == "complete"
    summary = json.loads(run.summary_path.read_text())
    run.summary_path.write_text(json.dumps(dict(summary, complete=False)))
    assert run.status(recipe) == "incomplete"
    (run.path / "failure.json").write_text("{}")
    assert run.status(recipe) == "failed"
    (run.path / LOCK_NAME).write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "start_time": None}))
    assert run.status(recipe) == "running"  # a writer on another machine (its lock cannot be checked)
    (run.path / LOCK_NAME).unlink()
    assert run.status(recipe) == "failed"


def test_an_epoch_short_of_the_recipe_is_not_complete(tmp_path, done):
    run, recipe = copy(done, tmp_path)
    longer = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"epochs": 2})})
    (run.path / "recipe.yaml").write_text(longer.to_yaml())  # the same recipe, asking for one more epoch
    assert run.status(longer) == "incomplete"


def test_foreign_and_mismatched_directories_are_named_and_refused(tmp_path, done):
    run, recipe = copy(done, tmp_path)
    other = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"lr": 0.02})})
    assert run.status(other) == "mismatch"
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert RunDir(foreign).status(recipe) == "foreign"
    with pytest.raises(UserError, match="trained with different settings"):
        study_status(run.path, other)
    with pytest.raises(UserError, match="not a run directory"):
        study_status(foreign, recipe)
    sweep_run = SweepRun(name=run.path.name, point={}, seed=0, overrides=[], recipe=other)
    with pytest.raises(UserError, match="holds a run of a different recipe"):
        sweep_status(sweep_run, tmp_path)
    assert (foreign / "notes.txt").read_text() == "mine"
