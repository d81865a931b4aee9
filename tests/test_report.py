"""`advmem report` (self-contained HTML), `advmem compare` (terminal = CSV), TensorBoard logging."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser

import pytest

from _eval_helpers import trained_run

SECTIONS = ("recipe", "curves", "best-last", "evaluation", "memorization")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from advmem.evaluation import evaluate_target

    std = trained_run(tmp_path_factory, "std")
    at = trained_run(tmp_path_factory, "at", "pgd_at", epochs=2, log={"tensorboard": True})
    evaluate_target(str(std), attacks=["pgd"], n_examples=24, steps=3, eps="0.15", which="last", device="cpu",
                    quiet=True, n_check=16)
    # a flagged result (as `advmem eval` writes it for a model failing a sanity check)
    ev = json.loads((std / "checkpoints" / "last.eval.json").read_text())
    ev.update(flagged=True, sanity_flags=["gradients_masked"])
    ev["sanity"]["checks"]["gradients_masked"].update(flagged=True, detail="input gradient zero on 16/16 points")
    (at / "checkpoints" / "best.eval.json").write_text(json.dumps(ev))
    study = std / "study"
    study.mkdir(exist_ok=True)
    (study / "measures.csv").write_text("epoch,checkpoint,sharpness,path_norm\n1,best,0.51,3.2\n2,last,0.77,3.9\n")
    (study / "grad_stability.json").write_text(json.dumps({"epoch": [1, 2, 3], "cosine": [0.9, 0.6, 0.3],
                                                           "summary": {"mean_cosine": 0.6}}))
    return std, at


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.text = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_has_every_section_and_images_decode(runs, tmp_path):
    import matplotlib.image as mpimg

    from advmem.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(runs[0]), str(runs[1]), "-o", str(out)]) == 0
    parser = Collect()
    parser.feed(out.read_text())
    assert set(SECTIONS) <= parser.ids
    text = " ".join(parser.text)
    assert "method" in text and "pgd_at" in text and "standard" in text  # recipe difference
    assert "FLAGGED:gradients_masked" in text  # the flagged result says so in the tables
    assert "sharpness" in text and "mean_cosine" in text  # memorization outputs rendered
    assert len(parser.images) >= 3  # curves, evaluation bars, grad-stability plot
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(io.BytesIO(png), format="png")
        assert img.ndim == 3 and img.shape[0] > 50


def test_compare_terminal_table_agrees_with_csv(runs, tmp_path, capsys):
    from advmem.cli import main

    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert len(rows) == 4
    header = printed[0].split()
    assert header == list(rows[0].keys())
    for line, row in zip(printed[1:5], rows):
        assert line.split() == list(row.values())
    flagged = [r for r in rows if r["sanity"].startswith("FLAGGED")]
    assert [(r["run"], r["checkpoint"]) for r in flagged] == [("at", "best")]
    assert "FLAGGED" in (tmp_path / "compare.md").read_text()
    assert any("not trustworthy" in line for line in printed)


def test_report_refuses_a_non_run(tmp_path, capsys):
    from advmem.cli import main

    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "neither an advmem run" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_tensorboard_scalars_written(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    at = runs[1]
    acc = EventAccumulator(str(at / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/nat_acc", "test/rob_acc", "optim/lr"} <= set(tags)
    metrics = [json.loads(line) for line in (at / "metrics.jsonl").read_text().splitlines()]
    events = acc.Scalars("test/rob_acc")
    assert [e.step for e in events] == [m["epoch"] for m in metrics]
    assert [e.value for e in events] == pytest.approx([m["test_rob_acc"] for m in metrics])
