"""Slim tests run tiny models: one torch thread is faster than two on a busy 2-core machine
(thread hand-offs dominate such small ops), and it keeps the timings steady."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
