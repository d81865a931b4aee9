"""Recipes that scale down (issue 16, item 2): epochs as fractions of optim.epochs, and the
evaluation-cost note at the start of training."""

from __future__ import annotations

import pytest
import yaml

from advmem.cli import main
from advmem.errors import UserError
from advmem.recipe import load_recipe, recipe_from_dict, shipped_recipes
from conftest import tiny_recipe

# Recipe.hash() of the shipped recipes as advmem computed it before fractions existed (commit
# 0747c2e, recipes written in integers). The fractions resolve to the same epochs at full scale,
# so the hashes, and with them the resume states of existing run directories, are unchanged.
HASHES_BEFORE = {
    "paper/cifar10-pgd-at-te": "13dc66be9a3540e1", "paper/cifar10-pgd-at": "15511658fc2de4c6",
    "paper/cifar10-random-labels-pgd-at": "b7490a39e4e29439", "paper/cifar10-random-labels-trades": "bd5668975ef8aa29",
    "paper/cifar10-trades-te": "2f84a83b366387f1", "paper/cifar10-trades": "13dc66be9a3540e1",
    "paper/cifar100-pgd-at-te": "a97309af845a84ea", "paper/cifar100-pgd-at": "6415935ea4eab070",
    "paper/cifar100-trades-te": "c5a997fc0e3ad8ff", "paper/cifar100-trades": "a97309af845a84ea",
    "paper/svhn-pgd-at-te": "d2231882825addcd", "paper/svhn-pgd-at": "b42f295c19cf969a",
    "paper/svhn-trades-te": "7d6de98ed5916930", "paper/svhn-trades": "d2231882825addcd",
    "quickstart": "8786ca77a4663aef",
    "studies/random-labels-small-pgd-at": "2564e1dc4c34da4b", "studies/random-labels-small-trades": "c10c915618cd8b5e",
}
SCALABLE = [k for k in shipped_recipes() if not k.startswith("studies/")]


def _recipe(epochs, milestones, **method):
    data = {"optim": {"epochs": epochs, "schedule": {"name": "multistep", "milestones": milestones}}}
    if method:
        data["method"] = {"name": "te", **method}
    return recipe_from_dict(data)


@pytest.mark.parametrize("epochs,milestones,expected", [
    (200, [0.5, 0.75], [100, 150]),
    (10, [0.7, 0.9], [7, 9]),          # 0.7 * 10 is 7.000000000000001 in floating point
    (300, [0.3333, 0.6667], [100, 200]),
    (4, [0.5, 0.75], [2, 3]),
    (3, [0.5, 0.75], [2]),             # 0.75 * 3 rounds to 2, pushed to 3 = the last epoch: dropped (it changes no lr)
    (2, [0.5, 0.75], [1]),             # 0.75 * 2 = 1.5 rounds to the last epoch: dropped
    (2, [0.1], [1]),                   # never below epoch 1
    (200, [0.5, 180], [100, 180]),     # fractions and epochs mixed
])
def test_fractional_milestones_resolve(epochs, milestones, expected):
    assert _recipe(epochs, milestones).optim.schedule.milestones == expected


def test_te_fractions_resolve():
    r = _recipe(200, [0.5, 0.75], start_epoch=0.45, end_epoch=0.75)
    assert (r.method.start_epoch, r.method.end_epoch) == (90, 150)
    r = _recipe(2, [0.5], start_epoch=0.45, end_epoch=0.75)
    assert (r.method.start_epoch, r.method.end_epoch) == (1, 2)
    r = _recipe(10, [], start_epoch=3, end_epoch=0.9)  # integer and fraction mixed
    assert (r.method.start_epoch, r.method.end_epoch) == (3, 9)


def test_fraction_recipe_is_the_integer_recipe():
    """Fractions are resolved at validation: the recipe, its hash and so its run are the integer one's."""
    frac = recipe_from_dict(tiny_recipe(**{"optim.schedule.milestones": [0.5]}))
    ints = recipe_from_dict(tiny_recipe(**{"optim.schedule.milestones": [1]}))
    assert frac == ints and frac.hash() == ints.hash()
    assert frac.to_dict()["optim"]["schedule"]["milestones"] == [1]  # recipe.yaml records whole epochs


@pytest.mark.parametrize("name", list(HASHES_BEFORE))
def test_shipped_recipes_hash_as_before(name):
    """Fractions changed no hash (the method-name fix since then did: old run directories are
    recognised through recipe_hash_matches, which this checks)."""
    from advmem.engine.resume import recipe_hash_matches

    recipe = load_recipe(name)
    assert recipe.hash(legacy_method_names=True) == HASHES_BEFORE[name]
    assert recipe_hash_matches(recipe, HASHES_BEFORE[name])


@pytest.mark.parametrize("epochs", [2, 4])
@pytest.mark.parametrize("name", SCALABLE)
def test_shipped_recipes_scale_down(name, epochs):
    r = load_recipe(name, [f"optim.epochs={epochs}"])
    m = r.optim.schedule.milestones
    assert all(1 <= a < b < epochs for a, b in zip(m, m[1:])) and all(1 <= x < epochs for x in m), m
    raw = yaml.safe_load(shipped_recipes()[name].read_text())
    if r.method.name == "te":  # each fraction resolved to round(f x epochs), within 1..epochs
        for key in ("start_epoch", "end_epoch"):
            assert getattr(r.method, key) == min(epochs, max(1, round(raw["method"][key] * epochs))), key


def test_shipped_recipes_use_fractions():
    for name in SCALABLE:
        raw = yaml.safe_load(shipped_recipes()[name].read_text())
        assert all(isinstance(m, float) for m in raw["optim"]["schedule"]["milestones"]), name
        if raw["method"]["name"] == "te":
            assert isinstance(raw["method"]["start_epoch"], float) and isinstance(raw["method"]["end_epoch"], float)


@pytest.mark.parametrize("data,needle", [
    ({"optim": {"epochs": 10, "schedule": {"milestones": [1.5]}}},
     "optim.schedule.milestones: 1.5 is neither an epoch number"),
    ({"optim": {"epochs": 200, "schedule": {"milestones": [0.9, 150]}}},
     "optim.schedule.milestones [0.9, 150] resolve to [180, 150] with optim.epochs=200; they must be strictly increasing"),
    ({"optim": {"epochs": 1}, "method": {"name": "te", "start_epoch": 0.45, "end_epoch": 0.75}},
     "method.start_epoch (1) must be before method.end_epoch (1)"),
    ({"optim": {"epochs": 10}, "method": {"name": "te", "start_epoch": 2.5, "end_epoch": 8}},
     "method.start_epoch: 2.5 is neither an epoch number"),
    ({"optim": {"epochs": 10, "schedule": {"milestones": [10]}}},   # integers keep their typo guard
     "optim.schedule.milestones [10] are not before the last epoch 10"),
])
def test_bad_fractions_are_one_line_errors(data, needle):
    with pytest.raises(UserError) as err:
        recipe_from_dict(data)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bad_fraction_from_cli_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    code = main(["train", str(path), "--quiet", "--set", "optim.schedule.milestones=[1.5]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "1.5 is neither an epoch number" in err, err
    assert not (tmp_path / "runs").exists()


# -- the evaluation-cost note ------------------------------------------------------------------------


def test_eval_cost_note_triggers_and_names_the_knobs():
    from advmem.engine.evaluate import eval_cost_note

    # a paper recipe downscaled to 1000 training images, test set left at all 10,000
    r = load_recipe("paper/cifar10-pgd-at", ["data.train_size=1000"])
    note = eval_cost_note(r, n_train=1000, n_train_eval=1000, n_val=0, n_test=10000)
    assert note is not None and "data.test_size" in note and "eval.every" in note and "\n" not in note
    assert "11.0x" in note  # (1000 + 10000) * (1 + 10) passes vs 1000 * (10 + 1)
    # the full paper recipe: 50,000 training images cost more than evaluating 11,000
    assert eval_cost_note(r, n_train=50000, n_train_eval=1000, n_val=0, n_test=10000) is None
    # eval.every amortizes the evaluation
    sparse = r.model_copy(update={"eval": r.eval.model_copy(update={"every": 20})})
    assert eval_cost_note(sparse, n_train=1000, n_train_eval=1000, n_val=0, n_test=10000) is None


@pytest.mark.parametrize("eval_steps,expect", [(2, False), (20, True)])
def test_eval_cost_note_at_training_start(tmp_path, capsys, eval_steps, expect):
    from advmem.training import train

    # tiny: 320 training images x (2 + 1) passes = 960; evaluation: (64 + 64 + 128) x (1 + eval steps)
    recipe = recipe_from_dict(tiny_recipe(**{"optim.epochs": 1, "optim.schedule.milestones": [],
                                             "eval.attack.steps": eval_steps}))
    train(recipe, run_root=tmp_path, quiet=False)
    err = capsys.readouterr().err
    assert ("evaluation costs about" in err) is expect, err
    if expect:
        assert "data.test_size (now 128)" in err and "eval.every" in err
        train(recipe.model_copy(update={"name": "quiet"}), run_root=tmp_path, quiet=True)
        assert "evaluation costs" not in capsys.readouterr().err  # --quiet: no note
