"""Issue 18 item 1: federation/ is modules a newcomer can change, on Flower's public API only.

Static checks over federation/'s source (AST): no module over 450 lines, no import of a private
name (ours across modules, or Flower's), none of Flower's internal `flwr.supercore` package;
and `HomebodyStrategy` is a real subclass of Flower's `Strategy` (Flower's round loop is inherited,
not borrowed).
"""

from __future__ import annotations

import ast
from pathlib import Path

FEDERATION = Path(__file__).resolve().parents[2] / "federation"
MAX_LINES = 450


def _imports(path: Path):
    """(module, imported name or None) for every import in a file, wherever it sits."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.module, a.name) for a in node.names)


def _private(module: str, name: str | None) -> bool:
    parts = module.split(".") + ([name] if name else [])
    return any(p.startswith("_") and p != "__future__" for p in parts)


def test_no_federation_module_is_over_the_line_limit():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in FEDERATION.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_federation_imports_no_private_name_and_no_flower_internals():
    found = [f"{p.name}: {module}{'.' + name if name else ''}" for p in sorted(FEDERATION.glob("*.py"))
             for module, name in _imports(p)
             if (module.startswith(("flwr", "federation")) and _private(module, name)) or module.startswith("flwr.supercore")]
    assert found == []


def test_the_scan_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from federation.x import _log\nfrom flwr.supercore.inflatable import thing\n")
    found = [(m, n) for m, n in _imports(bad) if _private(m, n) or m.startswith("flwr.supercore")]
    assert found == [("federation.x", "_log"), ("flwr.supercore.inflatable", "thing")]


def test_homebody_strategy_is_a_flower_strategy():
    from flwr.serverapp.strategy import Strategy

    from federation.strategy import HomebodyStrategy

    assert issubclass(HomebodyStrategy, Strategy)
    assert not getattr(HomebodyStrategy, "__abstractmethods__", None)  # every abstract method is implemented
    assert HomebodyStrategy.start is Strategy.start  # Flower's round loop, inherited unchanged
