"""Issue 16, item 7: `advmem recipes` in full, one output flag everywhere, the step-size warning."""

from __future__ import annotations

import pytest
import yaml

from conftest import tiny_recipe

from advmem.cli import build_parser, main


def test_recipes_lists_every_recipe_with_its_path_and_whole_description(capsys):
    from advmem.recipe import shipped_recipes

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())
    for name, path in shipped_recipes().items():
        assert f"{name} (" in words and path.name in out
        desc = " ".join(str(yaml.safe_load(path.read_text()).get("description", "")).split())
        assert desc in words  # nothing cut off
    assert "…" not in out
    assert max(len(line) for line in out.splitlines() if line.startswith("    ")) <= 120


@pytest.mark.parametrize("command,dest,aliases", [
    (["eval", "RUN"], "out_dir", ["--out", "--out-dir", "-o"]),
    (["report", "RUN"], "output", ["--out", "-o", "--output"]),
    (["compare", "RUN"], "out", ["--out", "-o", "--output"]),
    (["export", "RUN"], "output", ["--out", "-o", "--output"]),
])
def test_every_output_flag_is_spelled_out_with_its_old_spellings_as_aliases(command, dest, aliases):
    parser = build_parser()
    for flag in aliases:
        args = parser.parse_args(command + [flag, "somewhere"])
        assert getattr(args, dest) == "somewhere"


def test_a_step_size_above_eps_warns_in_one_line(tmp_path, monkeypatch, capsys):
    from advmem.recipe import recipe_from_dict, recipe_warnings

    assert recipe_warnings(recipe_from_dict(tiny_recipe())) == []
    fgsm_rs = recipe_from_dict(tiny_recipe(**{"attack.steps": 1, "attack.step_size": "0.125",
                                              "eval.attack.step_size": "0.025"}))
    assert recipe_warnings(fgsm_rs) == []  # one step of 1.25 eps after a random start is FGSM-RS
    inherited = recipe_from_dict(tiny_recipe(**{"attack.steps": 1, "attack.step_size": "0.125"}))
    assert [w.split(":")[0] for w in recipe_warnings(inherited)] == ["eval.attack"]  # its 2 steps inherit 0.125
    typo = recipe_from_dict(tiny_recipe(**{"attack.step_size": "0.2"}))
    warnings = recipe_warnings(typo)
    assert len(warnings) == 2 and warnings[0].startswith("attack: step size 0.2 exceeds eps 0.1")
    assert warnings[1].startswith("eval.attack: step size 0.2 exceeds eps 0.1")  # eval inherits the step
    fixed_eval = recipe_from_dict(tiny_recipe(**{"attack.step_size": "0.2", "eval.attack.step_size": "0.025"}))
    assert [w.split(":")[0] for w in recipe_warnings(fixed_eval)] == ["attack"]

    monkeypatch.chdir(tmp_path)
    data = tiny_recipe(**{"attack.step_size": "0.2", "optim.epochs": 1, "optim.schedule": {"name": "constant"},
                          "output_root": str(tmp_path / "runs")})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", str(tmp_path / "r.yaml"), "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 2 and err[0].startswith("advmem train: warning: attack: step size 0.2 exceeds eps 0.1")
