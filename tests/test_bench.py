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
                   "Fixed-overhead index", "TE overhead", "AWP overhead", "A/A control", "AutoAttack lite vs standard"):
        assert metric in text, metric
    if not torch.cuda.is_available():
        assert NOT_MEASURED in text
    assert "failed" not in text.lower()


def test_paired_rounds_cancel_a_drift_within_each_round():
    """Variants A and B cost the same; every call gets slower through a round (3 slots, +1 s per
    slot). Interleaved forward/reverse, B (run last in forward rounds) looks slower in each forward
    round, but the forward+reverse pair sums to the same for both."""
    from advmem.bench.common import Settings, ratio

    assert Settings(device=torch.device("cpu")).rounds(default=3) == 4  # rounded up to whole pairs
    a = [10.0, 12.0, 10.0, 12.0]  # slot 0 in forward rounds, slot 2 in reverse rounds
    b = [12.0, 10.0, 12.0, 10.0]
    r = ratio(b, a)
    assert r.rounds == 2 and r.median == r.low == r.high == 1.0
    assert ratio([12.0], [10.0]).median == 1.2  # a single round is what it is
