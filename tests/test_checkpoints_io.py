"""Checkpoints in (external layouts, refused pickles, HTML pages, truncated files) and out (export)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from _eval_helpers import cli_env, trained_run

from advmem.errors import UserError
from advmem.evaluation.loading import build_external, load_external_state


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run):
    from advmem.engine.checkpoint import build_from_checkpoint

    return build_from_checkpoint(run / "checkpoints" / "last.safetensors")[0]


EXTERNAL = dict(arch="mlp", dataset="synthetic", num_classes=None, model_kwargs={"hidden": [32]}, norm="Linf",
                eps=None, device=torch.device("cpu"))


def _logits(m, n=16):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model_state_dict", "dataparallel", "bare_net"])
def test_external_layouts_load_and_reproduce_logits(model, tmp_path, layout):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    norm = {}
    if layout == "bare_net":  # a network without advmem's normalize layer: say the normalization
        mean, std = model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist()
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        norm = {"mean": mean, "std": std}
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
           "model_state_dict": {"model_state_dict": state, "optimizer_state_dict": {}},
           "dataparallel": {"state_dict": {f"module.{k}": v for k, v in state.items()}}, "bare_net": state}[layout]
    path = tmp_path / "ext.pt"
    torch.save(obj, path)
    loaded, meta, _ = build_external(path, mean=norm.get("mean"), std=norm.get("std"), no_normalize=False, **EXTERNAL)
    assert torch.equal(_logits(loaded), _logits(model))
    assert meta["eps"] == "8/255" and meta["architecture"]["name"] == "mlp"


def test_external_needs_arch_and_normalization(model, tmp_path):
    path = tmp_path / "ext.pt"
    torch.save({k[4:]: v for k, v in model.state_dict().items() if k.startswith("net.")}, path)
    with pytest.raises(UserError, match="--arch"):
        build_external(path, **{**EXTERNAL, "arch": None}, mean=None, std=None, no_normalize=False)
    with pytest.raises(UserError, match="--no-normalize"):
        build_external(path, **EXTERNAL, mean=None, std=None, no_normalize=False)
    with pytest.raises(UserError, match="do not match"):
        build_external(path, **{**EXTERNAL, "model_kwargs": {"hidden": [16]}}, mean=None, std=None, no_normalize=True)


class _CreatesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # unpickling would call open(target, "w"), creating the file
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    from advmem.cli import main

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"net.0.weight": torch.zeros(2), "payload": _CreatesFile(marker)}, evil)
    with pytest.raises(UserError, match="refused"):
        load_external_state(evil)
    assert main(["eval", str(evil), "--arch", "mlp", "--dataset", "synthetic", "--no-normalize"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # nothing written


def test_html_page_and_truncated_file_get_clear_messages(model, tmp_path):
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    html = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>"
    for content, message in ((html, "HTML page"), (good.read_bytes()[: good.stat().st_size // 2], "truncated"),
                             (b"", "empty")):
        bad = tmp_path / "model.pt"
        bad.write_bytes(content)
        with pytest.raises(UserError, match=message):
            load_external_state(bad)


def test_eval_cli_on_external_checkpoint(model, tmp_path):
    from advmem.cli import main

    path = tmp_path / "ext.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    code = main(["eval", str(path), "--arch", "mlp", "--model-kwargs", '{"hidden": [32]}', "--dataset", "synthetic",
                 "--eps", "0.1", "--n-examples", "32", "--steps", "5", "--no-checks", "--quiet", "--device", "cpu"])
    assert code == 0
    result = json.loads((tmp_path / "ext.eval.json").read_text())
    assert result["architecture"] == "mlp" and result["n_examples"] == 32 and result["eps"] == "0.1"


LOADER = r'''
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
# a RobustBench-style loader: build the class, load a (possibly wrapped) state dict strictly
model = mod.Model()
ckpt = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
model.load_state_dict({k.replace("module.", "", 1): v for k, v in state.items()}, strict=True)
model.eval()
x = torch.load(sys.argv[3], weights_only=True)
with torch.no_grad():
    torch.save({"a": model(x), "b": mod.load_model()(x)}, sys.argv[4])
print("advmem" in sys.modules)
'''


def test_export_robustbench_loads_in_fresh_interpreter(run, model, tmp_path):
    from advmem.cli import main

    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "robustbench", "--checkpoint", "last", "-o", str(out)]) == 0
    py = next(out.glob("*.py"))
    pt = py.with_suffix(".pt")
    assert set(torch.load(pt, weights_only=True)) == set(model.state_dict())
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}  # advmem not importable there
    proc = subprocess.run([sys.executable, str(tmp_path / "loader.py"), str(py), str(pt), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(y["a"], expected) and torch.equal(y["b"], expected)
    info = json.loads(py.with_suffix(".json").read_text())
    assert info["format"] == "robustbench" and info["eps"] == "0.1"


def test_external_checkpoint_takes_its_threat_model_from_the_json_sidecar(model, tmp_path):
    path = tmp_path / "ext.pt"
    torch.save(model.state_dict(), path)
    opts = {**EXTERNAL, "norm": None, "mean": None, "std": None, "no_normalize": False}
    assert build_external(path, **opts)[1]["eps"] == "8/255"  # no sidecar: the default
    side = path.with_suffix(".json")
    side.write_text(json.dumps({"format": "robustbench", "threat_model": "L2", "eps": 0.1}))
    meta = build_external(path, **opts)[1]
    assert (meta["threat_model"], meta["eps"], meta["threat_model_from"]) == ("L2", "0.1", str(side))
    meta = build_external(path, **{**opts, "eps": "0.3"})[1]  # --eps wins over the sidecar
    assert (meta["threat_model"], meta["eps"]) == ("L2", "0.3")
    meta = build_external(path, **{**opts, "norm": "Linf"})[1]  # another norm: the sidecar's eps is not its budget
    assert (meta["threat_model"], meta["eps"]) == ("Linf", "8/255")
    side.write_text(json.dumps({"epochs": 3}))  # a JSON file that says nothing of the threat model
    assert build_external(path, **opts)[1]["eps"] == "8/255"
    side.write_text(json.dumps({"threat_model": "Linfinity", "eps": "8/255"}))
    with pytest.raises(UserError, match="not a threat model advmem knows.*pass --norm and --eps"):
        build_external(path, **opts)


def test_eval_of_an_exported_checkpoint_uses_the_exported_eps(run, tmp_path, capsys):
    from advmem.cli import main

    assert main(["export", str(run), "--checkpoint", "last", "--out", str(tmp_path), "--name", "m"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["eps"] == "0.1"  # the run's attack.eps
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.pt"), "--arch", "mlp", "--model-kwargs", '{"hidden": [32]}', "--dataset",
                 "synthetic", "--no-normalize", "--n-examples", "16", "--steps", "2", "--no-checks",
                 "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "m.eval.json").read_text())
    assert (result["threat_model"], result["eps"]) == ("Linf", "0.1")
    assert f"threat model from {tmp_path / 'm.json'}" in capsys.readouterr().err
