"""Walking our source for calls: the helpers the source-scanning tests share
(tests/labels/test_all_paths.py: every `generate`; tests/privacy/test_release_paths.py: every release)."""

from __future__ import annotations

import ast


def callee(call: ast.Call) -> str | None:
    """The called name: `f` for `f(...)` and `x.f(...)`."""
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def calls(tree: ast.AST):
    """(enclosing function name, call node) for every call in a module."""
    def walk(node, owner):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else owner
            if isinstance(child, ast.Call):
                yield owner, child
            yield from walk(child, name)

    yield from walk(tree, "<module>")
