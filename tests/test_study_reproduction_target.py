"""Which REPRODUCTION.md a study may write: only when asked, only inside the advmem checkout, never for smoke scales."""

from __future__ import annotations

from pathlib import Path

import pytest

from advmem.cli import main
from advmem.errors import UserError
from advmem.studies import reproduction
from advmem.studies.reproduction import find_checkout, reproduction_target

REPO_REPRODUCTION = Path(__file__).resolve().parents[1] / "REPRODUCTION.md"
COMMITTED = ("# Reproduction\n\n<!-- robust-overfitting:begin -->\ncommitted small-scale results\n"
             "<!-- robust-overfitting:end -->\n")


def make_checkout(root: Path, name: str = "advmem") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(f'[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "{name}"\n')
    (root / "REPRODUCTION.md").write_text(COMMITTED)
    return root


def test_checkout_is_found_from_the_working_directory_not_the_package(tmp_path, monkeypatch):
    checkout = make_checkout(tmp_path / "clone")
    (checkout / "src" / "deep").mkdir(parents=True)
    assert find_checkout(checkout / "src" / "deep") == checkout.resolve()
    monkeypatch.chdir(checkout / "src")
    assert find_checkout() == checkout.resolve()
    other = make_checkout(tmp_path / "other-project", name="not-advmem")
    assert find_checkout(other) is None  # a pyproject of another project is not the checkout
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pyproject.toml").write_text('[project]\nname = "advmem"\n')
    assert find_checkout(bare) is None  # no REPRODUCTION.md next to it
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pyproject.toml").write_text("[project\nname = ")
    (tmp_path / "broken" / "REPRODUCTION.md").write_text("x")
    assert find_checkout(tmp_path / "broken") is None


def test_reproduction_target_rules(tmp_path, monkeypatch):
    checkout = make_checkout(tmp_path / "clone")
    monkeypatch.chdir(checkout)
    small = frozenset({"small", "paper"})
    assert reproduction_target("small", explicit=None, disabled=False, default_scales=small)[0] == \
        checkout.resolve() / "REPRODUCTION.md"
    path, why = reproduction_target("tiny", explicit=None, disabled=False, default_scales=small | {"tiny"})
    assert path is None and "smoke test" in why and "--reproduction PATH" in why
    path, why = reproduction_target("paper", explicit=None, disabled=False, default_scales=frozenset({"small"}))
    assert path is None and "paper" in why
    assert reproduction_target("small", explicit=None, disabled=True, default_scales=small)[0] is None
    # asked explicitly: any scale, that file
    assert reproduction_target("tiny", explicit="x/R.md", disabled=False, default_scales=small)[0] == Path("x/R.md")
    with pytest.raises(UserError, match="contradict"):
        reproduction_target("small", explicit="R.md", disabled=True, default_scales=small)
    with pytest.raises(UserError, match="not a file path"):
        reproduction_target("small", explicit=str(tmp_path), disabled=False, default_scales=small)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    path, why = reproduction_target("small", explicit=None, disabled=False, default_scales=small)
    assert path is None and "not inside an advmem checkout" in why


def test_every_study_keeps_tiny_out_of_reproduction():
    from advmem.studies import random_labels, random_labels_boundary, robust_overfitting

    for module in (random_labels, random_labels_boundary, robust_overfitting):
        assert "tiny" not in module.REPRODUCTION_SCALES and "small" in module.REPRODUCTION_SCALES
        assert "tiny" in module.SCALES


def study(out: Path) -> list[str]:
    return ["study", "robust-overfitting", "--scale", "tiny", "--methods", "pgd_at", "--aa-n", "0",
            "--out", str(out), "--quiet"]


@pytest.mark.slow
def test_tiny_study_leaves_the_checkout_reproduction_untouched(tmp_path, monkeypatch, capsys, one_thread):
    checkout = make_checkout(tmp_path / "clone")
    repo_before = REPO_REPRODUCTION.read_bytes() if REPO_REPRODUCTION.is_file() else None
    monkeypatch.chdir(checkout)
    assert main(study(tmp_path / "s")) == 0
    err = capsys.readouterr().err
    assert "REPRODUCTION.md not updated: scale tiny is a smoke test" in err
    assert (checkout / "REPRODUCTION.md").read_text() == COMMITTED
    if repo_before is not None:
        assert REPO_REPRODUCTION.read_bytes() == repo_before
    readme = (tmp_path / "s" / "README.md").read_text()
    assert "**Smoke test**" in readme and "say nothing about the paper" in readme

    # Were tiny a scale whose results belonged there, the default would be the checkout's file
    # (found from the working directory) and, from outside any checkout, no file at all.
    monkeypatch.setattr(reproduction, "SMOKE_SCALES", frozenset())
    from advmem.studies import robust_overfitting

    monkeypatch.setattr(robust_overfitting, "REPRODUCTION_SCALES", frozenset({"tiny"}))
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert main(study(tmp_path / "s")) == 0  # the run is complete: only the tables are rewritten
    assert "not inside an advmem checkout" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("REPRODUCTION.md")) == \
        [Path("clone/REPRODUCTION.md")]
    assert (checkout / "REPRODUCTION.md").read_text() == COMMITTED
    if repo_before is not None:
        assert REPO_REPRODUCTION.read_bytes() == repo_before

    monkeypatch.chdir(checkout)  # positive control: inside the checkout the default is its file
    assert main(study(tmp_path / "s")) == 0
    text = (checkout / "REPRODUCTION.md").read_text()
    assert text.count("<!-- robust-overfitting:begin -->") == 1 and "committed small-scale results" not in text
    assert "--scale tiny" in text
