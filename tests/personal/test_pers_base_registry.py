"""Issue 18 item 2 (personal/): the base-model identity is a leaf module, bases load through a registry.

- personal/ has no import cycle (personal/models.py and personal/slim/ used to import each other:
  models to load slim folders and ``BASE:STEPS`` names, slim for ``BaseModel`` and ``load_base``).
- ``load_base`` asks the registry: a loader registered under a new name serves it, frozen like
  every base; an unknown name's error lists the registered names.
- personal/slim's loaders register themselves, tried before the plain folder loader.
"""

from __future__ import annotations

import pytest

from tests.import_graph import cycles as _cycles, module_graph


def _graph(package: str) -> dict[str, set[str]]:
    return module_graph((package,))


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
