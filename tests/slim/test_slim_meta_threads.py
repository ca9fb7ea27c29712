"""Issue 18 item 3: loading a slim base builds its skeleton on the meta device for the loading
thread only. `Assistant` loads a base in a background thread; another thread creating a head at
that moment must get real parameters (a process-wide patch of `nn.Module.register_parameter`
used to hand it meta ones)."""

from __future__ import annotations

import sys
import threading

import torch
from torch import nn

from personal.models import load_base
from personal.slim.folder import load_slim
from personal.slim.pipeline import SlimConfig, slim_to_folder


def test_a_head_made_in_another_thread_while_a_slim_base_loads_is_real(tmp_path, monkeypatch):
    folder = tmp_path / "slim"
    slim_to_folder(load_base("tiny"), SlimConfig(quantize="int8"), folder)
    building, head_made = threading.Event(), threading.Event()
    transformers = sys.modules["transformers"]  # the module object the loader looks classes up in (it gets replaced)

    class PausingBert(transformers.BertModel):
        """The slim loader's BertModel: holds the loading thread inside the skeleton build."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            building.set()
            assert head_made.wait(60), "the other thread never made its head"

    monkeypatch.setattr(transformers, "BertModel", PausingBert)
    devices: dict[str, str] = {}

    def make_head() -> None:
        assert building.wait(60)
        try:
            head = nn.Linear(4, 3)
            devices["weight"], devices["bias"] = head.weight.device.type, head.bias.device.type
        finally:
            head_made.set()

    other = threading.Thread(target=make_head)
    other.start()
    slim = load_slim(folder)
    other.join(60)
    assert devices == {"weight": "cpu", "bias": "cpu"}
    # the slim base itself loaded completely: no meta tensor left, non-persistent buffers recomputed
    assert all(t.device.type != "meta" for t in list(slim.model.parameters()) + list(slim.model.buffers()))
    ids = slim.model.embeddings.position_ids
    assert torch.equal(ids, torch.arange(ids.shape[-1]).expand((1, -1)))
    assert not torch.any(slim.model.embeddings.token_type_ids)
