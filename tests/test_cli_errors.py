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
