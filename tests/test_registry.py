"""One registration rule (issue 17, item 2): every kind of named thing is a `Registry` filled by decorators."""

from __future__ import annotations

import pytest

from advmem.errors import UserError
from advmem.registry import Registry


def test_unknown_name_is_one_line_naming_the_choices_and_twice_is_refused():
    reg = Registry("widget")
    reg.register("b")(object())
    reg.register("a")(object())
    with pytest.raises(UserError) as err:
        reg.get("c")
    assert str(err.value) == "unknown widget 'c'; choose one of: a, b"
    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        reg.register("a")(object())
    assert list(reg) == ["b", "a"] and reg.names() == ["a", "b"]


def test_load_runs_once_on_first_lookup_and_again_after_it_failed():
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("broken module")
        reg.register("late")(1)

    reg = Registry("widget", load=load)
    with pytest.raises(ImportError):
        reg.get("late")
    assert reg.get("late") == 1 and "late" in reg and len(calls) == 2


def test_measure_families_table_names_exactly_the_registered_families():
    """FAMILIES (torch-free, for the CLI's help and the column order) must match the registry."""
    from advmem.analysis.measures.names import FAMILIES, MEASURES

    assert len(set(FAMILIES)) == len(FAMILIES)
    assert sorted(FAMILIES) == MEASURES.names(), "add the new family's name to names.py::FAMILIES"


def test_import_package_registers_every_module_of_a_package(tmp_path, monkeypatch):
    """A new entry is one file: the package's load imports it without any list naming it."""
    import sys

    pkg = tmp_path / "widgets_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from advmem.registry import Registry, import_package\n"
                                     "WIDGETS = Registry('widget', load=import_package('widgets_pkg'))\n")
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(f"from widgets_pkg import WIDGETS\n\n@WIDGETS.register({name!r})\n"
                                        f"def make():\n    return {name!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        widgets = __import__("widgets_pkg").WIDGETS
        assert widgets.names() == ["alpha", "beta"] and widgets.get("beta")() == "beta"
    finally:
        for mod in [m for m in sys.modules if m == "widgets_pkg" or m.startswith("widgets_pkg.")]:
            del sys.modules[mod]


def test_every_command_and_group_entry_is_registered():
    from advmem.analysis.cli import ANALYSES
    from advmem.cli import build_parser
    from advmem.commands import COMMANDS
    from advmem.studies.cli import STUDIES

    build_parser()
    assert COMMANDS.names() == ["analyze", "demo", "eval", "export", "info", "recipes", "report", "study", "sweep", "train"]
    assert STUDIES.names() == ["measures", "random-labels", "random-labels-boundary", "robust-overfitting"]
    assert ANALYSES.names() == ["grad-same-weights", "grad-stability", "measures"]
