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
