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
    assert header + ["eval_protocol_detail"] == list(rows[0].keys())  # the CSV also spells the protocol out
    for line, row in zip(printed[1:5], rows):
        assert line.split() == list(row.values())[:-1]
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


# -- issue 16: reports compare like with like -----------------------------------------------------

ESCAPED = __import__("re").compile(r"\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}|&#x?[0-9a-fA-F]+;")


def test_recipe_differences_show_a_missing_key_as_a_dash_not_an_escape(runs):
    from advmem.report.html import build_report
    from advmem.report.tables import MISSING, load_run, recipe_differences

    std, trades = load_run(runs[0]), load_run(runs[1])
    trades.name, trades.recipe = "trades-q", {**trades.recipe, "method": {"name": "trades", "beta": 6.0},
                                              "description": "TRADES's beta \N{EM DASH} 6, as in the paper"}
    header, rows = recipe_differences([std, trades])
    assert header == ["key", "std", "trades-q"]
    assert ["method.beta", MISSING, "6.0"] in rows and MISSING == "\N{EM DASH}"
    page = build_report([std, trades])
    assert not ESCAPED.search(page), ESCAPED.search(page)
    assert "\N{EM DASH} = the key is not in that run's recipe" in page
    assert "TRADES's beta \N{EM DASH} 6, as in the paper" in page  # as written, not as &#x27; or \u2014


def test_every_robust_number_names_its_protocol_and_mixed_protocols_are_said_to_be(runs, tmp_path, capsys):
    from advmem.cli import main
    from advmem.evaluation import evaluate_target

    std, at = runs
    evaluate_target(str(at), attacks=["fgsm"], n_examples=16, which="last", device="cpu", quiet=True, checks=False)
    capsys.readouterr()
    assert main(["compare", str(std), str(at), "-o", str(tmp_path)]) == 0  # -o: an alias of --out
    printed = capsys.readouterr().out
    rows = {(r["run"], r["checkpoint"]): r for r in csv.DictReader((tmp_path / "compare.csv").open())}
    assert rows["std", "last"]["eval_protocol_detail"] == "pgd-3 on test, 24 points, Linf eps 0.15"
    assert rows["at", "last"]["eval_protocol_detail"] == "fgsm on test, 16 points, Linf eps 0.1"
    assert rows["std", "best"]["eval_protocol"] == "-" and rows["std", "best"]["eval_robust"] == "-"
    ids = {rows["std", "last"]["eval_protocol"], rows["at", "last"]["eval_protocol"]}
    assert len(ids) == 2 and rows["at", "best"]["eval_protocol"] == rows["std", "last"]["eval_protocol"]
    for pid in ids:
        assert f"{pid}: eval_robust = per-sample worst case of" in printed
    assert "2 different protocols" in printed and "not a ranking" in printed
    assert "2 different protocols" in (tmp_path / "compare.md").read_text()

    out = tmp_path / "r.html"
    assert main(["report", str(std), str(at), "--out", str(out)]) == 0
    page = out.read_text()
    evaluation = page[page.index('id="evaluation"'):page.index('id="memorization"')]
    assert "pgd-3 on test, 24 points, Linf eps 0.15" in evaluation
    assert "fgsm on test, 16 points, Linf eps 0.1" in evaluation
    assert "not a ranking" in evaluation and "not a ranking" in page[page.index('id="best-last"'):]
    assert not ESCAPED.search(page)


def test_report_states_the_shared_settings_first(runs, tmp_path):
    from advmem.report.html import build_report
    from advmem.report.tables import load_run

    page = build_report([load_run(runs[0]), load_run(runs[1])])
    assert page.index('id="settings"') < page.index('id="recipe"')
    parser = Collect()
    parser.feed(page[page.index('id="settings"'):page.index('id="recipe"')])
    text = " ".join(t.strip() for t in parser.text if t.strip())
    for expected in ("dataset synthetic", "model mlp", "threat model Linf eps 0.1", "training attack PGD-3 step 0.025",
                     "PGD-3 step 0.025 eps 0.1"):
        assert expected in text, text


def test_a_study_folder_reports_and_compares_its_runs(runs, tmp_path, capsys):
    import shutil

    from advmem.cli import main

    study = tmp_path / "study"
    for run in runs:
        shutil.copytree(run, study / "runs" / run.name, ignore=shutil.ignore_patterns("study"))
    (study / "runs" / "logs").mkdir()  # a study's log folder is not a run
    shutil.copy(runs[0] / "curves.png", study / "training_curves.png")
    out = tmp_path / "study.html"
    assert main(["report", str(study), "-o", str(out)]) == 0
    page = out.read_text()
    assert "No metrics.jsonl found" not in page
    best_last = page[page.index('id="best-last"'):page.index('id="evaluation"')]
    assert "<td>std</td>" in best_last and "<td>at</td>" in best_last
    assert "training_curves.png" in page  # the study's own figure
    assert page.count("<h4>study/training_curves.png</h4>") == 1
    capsys.readouterr()
    assert main(["compare", str(study)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:5]] == [["at", "pgd_at", "best"], ["at", "pgd_at", "last"],
                                                          ["std", "standard", "best"], ["std", "standard", "last"]]


def test_final_full_test_numbers_appear_in_compare_report_and_the_training_table(tmp_path_factory, tmp_path, capsys):
    from _eval_helpers import recipe_dict

    from advmem.cli import main, print_summary

    data = {**recipe_dict("x")["data"], "test_size": 32}
    run = trained_run(tmp_path_factory, "full", epochs=2, data=data)
    last = json.loads((run / "summary.json").read_text())["last"]
    assert {"test_full_nat_acc", "test_full_rob_acc"} <= set(last)
    assert main(["compare", str(run), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    row = {r["checkpoint"]: r for r in csv.DictReader((tmp_path / "compare.csv").open())}["last"]
    assert row["test_full_nat"] == f"{100 * last['test_full_nat_acc']:.2f}"
    assert row["test_full_rob"] == f"{100 * last['test_full_rob_acc']:.2f}"
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    assert "test_full_rob" in (tmp_path / "r.html").read_text()
    capsys.readouterr()
    print_summary(run, json.loads((run / "summary.json").read_text()))
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[-2:] == ["test_full", "rob"]
    assert table[4].split()[-1] == f"{100 * last['test_full_rob_acc']:.1f}%"


def _capture(monkeypatch, name):
    import advmem.report.plots as plots

    figures = []
    monkeypatch.setattr(plots, name, lambda fig, *a, **k: figures.append(fig) or b"")
    return figures


def test_learning_curves_colour_by_run_mark_best_and_decays_with_integer_epochs(monkeypatch):
    import math

    from advmem.report import plots

    lrs = [0.1] * 4 + [0.01] * 2 + [0.001] * 2
    rows = [{"epoch": e, "lr": lr, "train_rob_acc": 0.1 * e, "val_rob_acc": [.2, .5, .4, .6, .6, .3, .2, .1][e - 1],
             "val_nat_acc": 0.5, "train_nat_acc": 0.5} for e, lr in enumerate(lrs, start=1)]
    assert plots.lr_decays(rows) == [4, 6]
    assert plots.best_epoch(rows) == 4  # val robust 0.6 first at epoch 4 (ties: the first, as the trainer keeps)
    cosine = [{"epoch": e, "lr": 0.5 * (1 + math.cos(math.pi * (e - 1) / 8))} for e in range(1, 9)]
    assert plots.lr_decays(cosine) == []

    figures = _capture(monkeypatch, "figure_png")
    plots.compare_learning_curves([("a", "pgd_at", rows), ("b", "pgd_at", rows), ("c", "pgd_at", rows)])
    ax = figures[0].axes[1]
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    colours = {line.get_color() for line in curves}
    assert len(colours) == 3  # three runs of one method: three colours
    assert {line.get_linestyle() for line in curves} == {"-", "--"}  # train, val
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [list(s.get_xdata()) for s in stars] == [[4]] * 3
    decays = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert decays == [4.5, 6.5]
    figures[0].canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())

    figures = _capture(monkeypatch, "save_figure")
    plots.plot_learning_curves(rows, "unused.png")
    ax = figures[0].axes[1]
    marks = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines() if line.get_label() in
             ("lr decay", "best (epoch 4)")}
    assert marks == {"lr decay": 4.5, "best (epoch 4)": 4}


def test_eval_bar_chart_legend_covers_no_bar_and_labels_stay_whole(monkeypatch):
    from advmem.report import plots

    figures = _capture(monkeypatch, "figure_png")
    labels = ["trades-q/best", "trades-q/last", "pgd-at-long-run-name/best"]
    plots.bar_chart(labels, {"clean": [99.0, 98.0, 97.0], "worst-case robust": [95.0, 94.0, 93.0]}, "accuracy (%)",
                    "advmem eval")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert len(bars) == 6 and not any(legend.overlaps(b) for b in bars)
    assert [t.get_text() for t in ax.get_xticklabels()] == labels


def test_hardest_samples_plot_starts_at_zero_and_labels_the_decay(monkeypatch, tmp_path):
    import advmem.report.plots as plots
    from advmem.studies import robust_overfitting

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append((fig, path)))
    curve = [{"epoch": e, "test_rob_acc": 0.3, "train_rob_acc": 0.4} for e in range(1, 7)]
    results = {"settings": {"milestones": [3, 5], "hard_fraction": 0.1, "seeds": [0]},
               "methods": {"pgd_at": {"label": "PGD-AT",
                                      "per_seed": {"0": {"curve": curve, "hard": [(3, 0.0), (6, 0.02)]}}}}}
    robust_overfitting.plot(results, tmp_path)
    (curves, _), (hard, path) = figures
    assert path.name == "hardest_train_rob_acc.png"
    ax = hard.axes[0]
    assert ax.get_ylim()[0] == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PGD-AT", "lr decay"]
    assert "lr decay" in [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
