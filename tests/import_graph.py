"""The import graph between homebody's modules: the check behind "no cycle, no upward import".

Run it as a test (tests/test_architecture.py) or by hand: `python -m tests.import_graph` prints
every module's imports of our own modules, then any cycle and any upward import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each folder may import only the folders before it in this tuple (docs/architecture.md).
FLOORS = ("privacy", "personal", "federation", "simulations")


def module_name(path: Path) -> str:
    """personal/slim/folder.py -> personal.slim.folder (a package's __init__ -> the package)."""
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def module_graph(packages: tuple[str, ...] = FLOORS) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (at module level, inside functions, or for
    type checking only: any of them closes a cycle for a reader)."""
    mods = {module_name(p): p for package in packages for p in (REPO / package).rglob("*.py")}
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


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
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


def floor(module: str) -> int:
    """The floor of a module of ours (0 = privacy ... 3 = simulations)."""
    return FLOORS.index(module.split(".")[0])


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every "a -> b" where b sits on a higher floor than a."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if floor(b) > floor(a))


if __name__ == "__main__":
    graph = module_graph()
    for name in sorted(graph):
        print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    found, up = cycles(graph), upward_imports(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports: {len(found)} cycles, {len(up)} upward")
    for c in found:
        print("cycle:", " <-> ".join(c))
    for u in up:
        print("upward:", u)
    raise SystemExit(1 if found or up else 0)
