"""Recipes: budgets as written, overrides, shipped recipes, one-line errors."""

from __future__ import annotations

import pytest

from advmem.errors import UserError
from advmem.recipe import (
    apply_overrides,
    budget_value,
    load_recipe,
    parse_override,
    recipe_from_dict,
    shipped_recipes,
)


def test_budget_fractions_are_parsed_and_recorded_as_written():
    assert budget_value("8/255") == pytest.approx(8 / 255)
    assert budget_value(" 0.5 ") == 0.5
    assert budget_value(0.031) == 0.031
    r = recipe_from_dict({"attack": {"eps": "8/255", "step_size": 0.0078}})
    assert r.attack.eps == "8/255" and r.attack.eps_value == pytest.approx(8 / 255)
    assert r.to_dict()["attack"]["eps"] == "8/255"
    for bad in ("eight", "8/0", "1/2/3", "__import__('os')"):
        with pytest.raises(ValueError):
            budget_value(bad)


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({}, ["optim.lr=0.05", "attack.eps=8/255", "data.train_size=100", "optim.nesterov=true"])
    assert data == {"optim": {"lr": 0.05, "nesterov": True}, "attack": {"eps": "8/255"}, "data": {"train_size": 100}}
    assert parse_override("model.kwargs={width: 8}") == (["model", "kwargs"], {"width": 8})


@pytest.mark.parametrize("text", ["optim.lr", "=3", "optim..lr=1", ""])
def test_malformed_override(text):
    with pytest.raises(UserError, match="expected key.path=value"):
        parse_override(text)


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"optim": {"lrr": 0.1}}, "unknown key 'optim.lrr'; valid keys at optim: batch_size, ema, epochs"),
        ({"bogus": 1}, "unknown key 'bogus'; valid keys at the top level"),
        ({"method": {"name": "trades", "bta": 6}}, "valid keys at method: beta, name"),
        ({"attack": {"eps": -0.1}}, "attack.eps must be >= 0"),
        ({"attack": {"eps": 2}}, "> 1"),
        ({"attack": {"steps": 0}}, "attack.steps"),
        ({"method": {"name": "nope"}}, "unknown method 'nope'; choose one of:"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset"),
        ({"optim": {"epochs": 10, "schedule": {"milestones": [5, 12]}}}, "not before the last epoch"),
        ({"attack": {"eps": "abc"}}, "not a number or a fraction"),
        ({"name": "a/b"}, "name 'a/b'"),
    ],
)
def test_bad_recipes_give_one_line_errors(data, needle):
    with pytest.raises(UserError) as err:
        recipe_from_dict(data)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_every_shipped_recipe_validates():
    recipes = shipped_recipes()
    assert "quickstart" in recipes
    for name, path in recipes.items():
        recipe = load_recipe(path)
        assert recipe.description, f"{name} needs a one-line description"


def test_recipe_hash_ignores_name_but_not_settings():
    a = recipe_from_dict({"name": "a"})
    b = recipe_from_dict({"name": "b"})
    c = recipe_from_dict({"name": "a", "optim": {"lr": 0.01}})
    assert a.hash() == b.hash() != c.hash()


def test_recipe_hash_ignores_resume_settable_keys_given_or_not():
    """Setting a resume-settable key must not leave an empty section in the hashed data."""
    base = recipe_from_dict({"name": "a"})
    for extra in ({"reliability": {"on_nonfinite": "skip_batch"}}, {"distributed": {"backend": "gloo"}},
                  {"distributed": {"timeout_s": 100}}, {"reliability": {"on_nonfinite": "stop"}},
                  {"reliability": {"on_nonfinite": "skip_batch"}, "distributed": {"backend": "gloo", "timeout_s": 100}}):
        assert recipe_from_dict({"name": "a", **extra}).hash() == base.hash(), extra
    # keys of those sections that do change what is computed still count
    assert recipe_from_dict({"name": "a", "distributed": {"sync_bn": True, "backend": "gloo"}}).hash() != base.hash()
    assert recipe_from_dict({"name": "a", "reliability": {"check_every": 5}}).hash() != base.hash()


def test_paper_recipes_match_the_paper_settings():
    recipes = shipped_recipes()
    for key in ("paper/cifar10-random-labels-pgd-at", "paper/cifar10-random-labels-trades"):
        if key not in recipes:
            pytest.skip(f"{key} not shipped yet")
        r = load_recipe(recipes[key])
        assert r.model.name in ("wrn_28_10", "wide_resnet")
        assert r.optim.epochs == 300 and r.optim.weight_decay == 0 and r.data.augment == "none"
        assert r.optim.schedule.milestones == [100, 200] and r.optim.lr == 0.1
        assert r.attack.eps == "8/255" and r.attack.step_size == "2/255" and r.attack.steps == 10


def test_the_method_name_is_always_hashed():
    """Each method config's name is its own default, so `exclude_defaults` used to drop it: TE
    and TRADES at their default settings hashed alike. Old run directories still match."""
    from advmem.engine.resume import recipe_hash_matches

    bodies = [{"name": "pgd_at"}, {"name": "trades"}, {"name": "te"}, {"name": "te", "base": "trades"},
              {"name": "mart"}, {"name": "awp", "base": {"name": "pgd_at"}}, {"name": "awp", "base": {"name": "trades"}}]
    recipes = [recipe_from_dict({"method": body, "optim": {"epochs": 200}}) for body in bodies]
    hashes = [r.hash() for r in recipes]
    assert len(set(hashes)) == len(hashes)
    legacy = [r.hash(legacy_method_names=True) for r in recipes]
    assert legacy[1] == legacy[2]  # TRADES and TE alike: the bug, kept only to recognise old runs
    assert all(recipe_hash_matches(r, h) for r, h in zip(recipes, legacy))
    assert not recipe_hash_matches(recipes[1], hashes[0])
