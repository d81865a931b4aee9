"""`python -m advmem.bench gpu-check`: refuses clearly without CUDA; its stages, report, JSON and
BENCHMARKS.md splice run on CPU at tiny sizes (the same code a GPU runs, minus the device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from advmem.bench import gpu_check
from advmem.bench.common import Settings
from advmem.bench.gpu import NOT_MEASURED
from conftest import SRC

GPU_TEST = '''
import pytest

@pytest.mark.gpu
def test_marked():
    assert {ok}

def test_unmarked():
    raise AssertionError("not gpu-marked: must be deselected")
'''

BENCH = """# advmem benchmarks

- Command: `python -m advmem.bench all`

## Goal metrics

| metric | value | goal | verdict |
|---|---|---|---|
| R_step(PGD-10), small_cnn, cpu | 0.70 | <= 0.80 (floor 0.70) | met |
| PRN-18 PGD-10 s per 50k-image epoch, defaults (bf16, channels_last) | 99.0 | <= 10 s on an H100 (bf16) | not met |

## Step cost: R_step

step text

## GPU: PreActResNet-18 PGD-10 epoch

{not_measured}
"""


def marked_tests(tmp_path, ok=True):
    path = tmp_path / "test_marked_gpu.py"
    path.write_text(GPU_TEST.format(ok=ok))
    return [str(path)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_refuses_without_cuda_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem.bench", "gpu-check", "--out", str(tmp_path / "B.md")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == gpu_check.REFUSAL
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_gpu_check_stages_and_report_on_cpu(tmp_path):
    settings = Settings(device=torch.device("cpu"), tiny=True, workdir=tmp_path / "work")
    report = gpu_check.run_check(settings, command="gpu-check (test)", pytest_args=marked_tests(tmp_path))
    stages = report["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {"tests": "passed", "epochs": "passed", "ddp": "passed"}, \
        {k: v.get("why") or v.get("traceback") for k, v in stages.items()}
    assert report["ok"]
    assert stages["tests"]["counts"] == {"passed": 1, "deselected": 1}
    ep = stages["epochs"]["rows"]
    assert ep["fp32"]["perf"]["precision"] == "fp32" and ep["bf16"]["perf"]["precision"] == "bf16"
    assert all(r["images_per_s"] > 0 and 0 <= r["pgd20_acc"] <= r["nat_acc"] + 1e-9 for r in ep.values())
    ddp = stages["ddp"]
    assert ddp["backend"] == "gloo" and ddp["forced_ddp_at_world_size_1"]
    assert ddp["resumed_epochs"] == [1, 2] and ddp["world_size"] == [1]
    assert ddp["runs"]["stopped"]["exit"] != 0 and "--resume" in ddp["runs"]["stopped"]["stderr_tail"]
    assert ddp["bitwise_equal"], ddp["max_abs_diff"]  # CPU, deterministic: the resume is exact

    out, js = tmp_path / "BENCHMARKS.md", tmp_path / "gpu-check.json"
    out.write_text(BENCH.format(not_measured=NOT_MEASURED))
    gpu_check.write(report, out, js)
    text = out.read_text()
    assert json.loads(js.read_text())["stages"]["ddp"]["status"] == "passed"
    assert NOT_MEASURED not in text and "PRN-18 PGD-10 s per 50k-image epoch, defaults" not in text
    assert text.startswith("# advmem benchmarks") and "step text" in text and "| R_step(PGD-10)" in text
    goals = text.split("## Goal metrics")[1].split("\n## ")[0]
    for metric in ("GPU check: PRN-18 PGD-10 s per 50k-image epoch, bf16", "GPU check: bf16 vs fp32 accuracy",
                   "GPU check: GPU-marked tests", "GPU check: DDP smoke test with a resume"):
        assert f"| {metric}" in goals, metric
    gpu = text.split("## GPU: PreActResNet-18 PGD-10 epoch")[1]
    assert "| fp32 |" in gpu and "| bf16 |" in gpu and "gloo (advmem's DDP path forced on" in gpu
    gpu_check.write(report, out, js)  # idempotent: the rows and the section are replaced, not added
    assert out.read_text() == text


def test_a_failing_stage_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(settings):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(gpu_check, "_epochs", broken)
    monkeypatch.setattr(gpu_check, "_ddp", lambda settings, deadline: {"status": "passed", "why": None})
    settings = Settings(device=torch.device("cpu"), tiny=True, workdir=tmp_path / "work")
    report = gpu_check.run_check(settings, command="x", pytest_args=marked_tests(tmp_path, ok=False))
    s = report["stages"]
    assert s["tests"]["status"] == "failed" and s["tests"]["counts"]["failed"] == 1
    assert s["epochs"]["status"] == "failed" and "no kernel image" in s["epochs"]["why"]
    assert s["ddp"]["status"] == "passed" and not report["ok"]
    text = gpu_check.splice(None, gpu_check.section_of(report))  # no BENCHMARKS.md yet: a new one
    assert "| GPU check: GPU-marked tests | 1 failed, 1 deselected" in text and "| not met |" in text
    assert "- Timed epochs: failed (RuntimeError: no kernel image is available)" in text
    # a budget already spent skips the stages instead of overrunning it
    late = gpu_check.run_check(settings, command="x", budget_s=10, pytest_args=marked_tests(tmp_path))
    assert all(v["status"] == "skipped" for v in late["stages"].values()) and not late["ok"]
