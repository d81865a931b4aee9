"""The benchmark harness runs end to end and writes every section (tiny sizes; no timing asserted)."""

from __future__ import annotations

import torch

from advmem.bench.__main__ import main
from advmem.bench.gpu import NOT_MEASURED

SECTIONS = ["## Goal metrics", "## Step cost: R_step", "## Epoch: speedup over a reference-style loop",
            "## Evaluation: AutoAttack", "## Scale: epoch time and memory", "## GPU: PreActResNet-18 PGD-10 epoch"]


def test_harness_writes_every_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        assert main(["all", "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "python3 -m advmem.bench all --tiny" in text or "python -m advmem.bench all --tiny" in text
    for fact in ("- Git commit:", "- CPU:", "- Date (UTC):", "torch " + torch.__version__, "Load average"):
        assert fact in text, fact
    for metric in ("R_step(PGD-10), small_cnn", "R_step(TRADES-10), preact_resnet18", "Epoch speedup",
                   "Fixed-overhead index", "TE overhead", "AWP overhead", "AutoAttack lite vs standard"):
        assert metric in text, metric
    if not torch.cuda.is_available():
        assert NOT_MEASURED in text
    assert "failed" not in text.lower()
