"""Bad input: one line naming the problem and the fix, exit 2, no traceback, nothing on disk."""

from __future__ import annotations

import pytest
import yaml

from advmem.cli import main
from conftest import run_cli, tiny_recipe, tree_snapshot


def _write(path, **overrides):
    path.write_text(yaml.safe_dump(tiny_recipe(**overrides)))
    return path


CASES = [
    ({"optim.lrr": 0.1}, [], "unknown key 'optim.lrr'; valid keys at optim:"),
    ({"attack.eps": -0.5}, [], "attack.eps must be >= 0"),
    ({"attack.eps": 1.5}, [], "> 1"),
    ({"attack.steps": 0}, [], "attack.steps"),
    ({"model.name": "resnet99"}, [], "unknown model 'resnet99'; choose one of:"),
    ({"data.dataset": "mnist"}, [], "data.dataset"),
    ({"method.name": "fgsm_at"}, [], "unknown method 'fgsm_at'; choose one of:"),
    ({}, ["--set", "optim.lr"], "expected key.path=value"),
    ({}, ["--set", "optim.lr=abc"], "optim.lr"),
    ({"model.kwargs": {"widht": 3}}, [], "no kwarg 'widht'"),
    ({"data.val_size": 100000}, [], "val_size"),
]


@pytest.mark.parametrize("overrides,extra,needle", CASES)
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, monkeypatch, capsys, overrides, extra, needle):
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path / "r.yaml", **overrides)
    before = tree_snapshot(tmp_path)
    code = main(["train", str(recipe), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err, err
    assert "\n" not in err and "Traceback" not in err
    assert tree_snapshot(tmp_path) == before


def test_existing_run_is_never_overwritten_silently(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path / "r.yaml", **{"optim.epochs": 1, "optim.schedule.milestones": []})
    assert main(["train", str(recipe), "--quiet"]) == 0
    before = tree_snapshot(tmp_path / "runs")
    capsys.readouterr()
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--resume" in err and "--overwrite" in err
    assert tree_snapshot(tmp_path / "runs") == before
    assert main(["train", str(recipe), "--quiet", "--overwrite"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["train", "no-such-recipe"], "not found"),
    (["train", "--resume", "nowhere"], "no such run directory"),
    (["eval", "nowhere"], "no such run directory or checkpoint"),
    (["train", "r.yaml", "--bogus-flag"], "unrecognized arguments"),
])
def test_cli_argument_errors(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "r.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_real_process_prints_no_traceback(tmp_path):
    recipe = _write(tmp_path / "r.yaml", **{"attack.eps": "8/0"})
    proc = run_cli(["train", str(recipe)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_help_for_every_command(capsys):
    for cmd in (["--help"], ["train", "--help"], ["eval", "--help"], ["demo", "--help"], ["recipes", "--help"],
                ["info", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(cmd)
        assert exit_info.value.code == 0
        assert "usage" in capsys.readouterr().out


# -- issue 16, item 6: help and error text -----------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_missing_cifar_suggests_the_set_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tiny_recipe()
    data["data"] = {"dataset": "cifar10", "data_root": str(tmp_path / "none")}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    code = main(["train", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--set data.data_root=DIR" in err and "--data-root" not in err, err


def _all_help_texts():
    import argparse

    from advmem.cli import build_parser

    def walk(p, prefix):
        yield prefix, p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{prefix} {name}")

    return list(walk(build_parser(), "advmem"))


def test_help_texts_reference_only_existing_docs():
    import re

    texts = _all_help_texts()
    assert len(texts) > 10
    for prog, text in texts:
        for ref in re.findall(r"docs/[\w.-]+\.md", text):
            assert (REPO / ref).is_file(), f"'{prog} --help' points to {ref}, which does not exist"


def test_study_help_keeps_its_output_list(capsys):
    with pytest.raises(SystemExit):
        main(["study", "random-labels", "--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    # each output of the study on its own line, as in the docstring, not run into one paragraph
    for name in ("runs/", "training_curves.png", "grad_norm.png", "grad-stability/", "measures/"):
        assert any(line.lstrip().startswith(name) for line in lines), (name, out)


def test_error_from_a_set_value_names_the_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path / "r.yaml")
    assert main(["train", str(recipe), "--quiet", "--set", "optim.lr=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advmem: error: --set optim.lr=abc: optim.lr:") and "r.yaml" not in err, err
    # a --set that makes a section's own check fail names the file and the --set
    assert main(["train", str(recipe), "--quiet", "--set", "optim.epochs=1"]) == 2  # milestone [1] is the last epoch
    err = capsys.readouterr().err.strip()
    assert "r.yaml with --set optim.epochs=1: optim:" in err, err
    # an error in the file itself names the file
    bad = _write(tmp_path / "bad.yaml", **{"optim.lr": "abc"})
    assert main(["train", str(bad), "--quiet", "--set", "optim.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"advmem: error: {bad}: optim.lr:"), err


def test_every_unknown_key_is_reported_with_a_suggestion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path / "r.yaml", **{"optim.lrr": 0.1, "eval.evry": 2, "data.zzzz": 1})
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for key in ("'optim.lrr'", "'eval.evry'", "'data.zzzz'"):
        assert key in err, err
    assert "did you mean 'optim.lr' for 'optim.lrr', 'eval.every' for 'eval.evry'?" in err, err
    assert "valid keys at optim:" in err and "valid keys at eval:" in err and "valid keys at data:" in err
    # one unknown key from --set: named by the --set, with its suggestion
    assert main(["train", str(_write(tmp_path / "ok.yaml")), "--quiet", "--set", "attack.stpes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advmem: error: --set attack.stpes=3: unknown key 'attack.stpes'"), err
    assert err.endswith("did you mean 'attack.steps'?"), err


@pytest.mark.parametrize("flag", ["--steps", "--restarts", "--batch-size", "--n-check", "--n-examples"])
def test_eval_positive_integer_names_the_flag(tmp_path, capsys, flag):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["eval", str(run), flag, "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"advmem: error: {flag} must be a positive integer, got 0", err


def test_eval_of_a_run_without_an_epoch_suggests_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"advmem train --resume {run}" in err and "is this an advmem run directory" not in err, err
    other = tmp_path / "other"
    other.mkdir()
    assert main(["eval", str(other)]) == 2
    assert "not an advmem run directory" in capsys.readouterr().err


def test_readme_lists_every_exit_code():
    text = (REPO / "README.md").read_text()
    section = text[text.index("Exit codes:"):][:600]
    for code in ("0 success", "2 bad input", "1 failure", "130", "143"):
        assert code in section, code
