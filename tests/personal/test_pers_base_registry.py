"""Issue 18 item 2 (personal/): the base-model identity is a leaf module, bases load through a registry.

- personal/ has no import cycle (personal/models.py and personal/slim/ used to import each other:
  models to load slim folders and ``BASE:STEPS`` names, slim for ``BaseModel`` and ``load_base``).
- ``load_base`` asks the registry: a loader registered under a new name serves it, frozen like
  every base; an unknown name's error lists the registered names.
- personal/slim's loaders register themselves, tried before the plain folder loader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at module level or inside functions)."""
    mods = {_module_name(p): p for p in (REPO / package).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod and not mod.startswith(target + "."):
                    edges[mod].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_personal_has_no_import_cycle():
    assert _cycles(_graph("personal")) == []


def test_slim_does_not_import_the_model_registry():
    edges = _graph("personal")
    assert {m for m in edges if m.startswith("personal.slim") and "personal.models" in edges[m]} == set()


def test_a_registered_loader_serves_its_name(monkeypatch):
    from personal import base_identity
    from personal.models import ModelNotFound, load_base

    monkeypatch.setattr(base_identity, "_NAMED", dict(base_identity._NAMED))  # this test's registration only
    asked = []

    def loader(request):
        asked.append((request.name, request.dtype))
        return request.load("tiny")  # a loader may build on another base

    base_identity.register_loader("my-test-base", loader)
    base = load_base("my-test-base")
    assert asked == [("my-test-base", "float32")]
    assert base.weights_sha256 == load_base("tiny").weights_sha256
    assert not any(p.requires_grad for p in base.model.parameters()) and not base.model.training
    with pytest.raises(ModelNotFound, match="my-test-base"):
        load_base("no-such-base-anywhere")


def test_the_slim_loaders_register_themselves_before_the_folder_loader():
    from personal.base_identity import matcher_labels, registered_names
    from personal.models import load_base

    load_base("tiny")
    assert registered_names()[:5] == ("minilm-l6", "smollm2-135m", "tiny", "tiny-encoder", "tiny-causal")
    labels = matcher_labels()
    assert labels.index("slim folder") < labels.index("local model folder") < labels.index("BASE:STEPS (a slimmed base)")
