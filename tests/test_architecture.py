"""The floors hold: no import cycle anywhere in our four folders, and no folder imports one above it."""

from __future__ import annotations

from tests.import_graph import cycles, module_graph, upward_imports


def test_no_import_cycle_and_no_upward_import():
    graph = module_graph()
    assert {"simulations.runner", "simulations.engine_fast", "federation.device", "privacy.budget"} <= set(graph)
    assert cycles(graph) == [], "import cycle(s): " + "; ".join(" <-> ".join(c) for c in cycles(graph))
    assert upward_imports(graph) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert upward_imports({"privacy.x": {"personal.y"}, "personal.y": set()}) == ["privacy.x -> personal.y"]


def test_engines_do_not_import_the_runner():
    graph = module_graph(("simulations",))
    for engine in ("simulations.engine_fast", "simulations.engine_flower", "simulations.habit_sim"):
        assert "simulations.runner" not in graph[engine], engine
