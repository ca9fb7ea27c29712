"""Fixtures for tests/personal only."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test: on a shared 2-core machine, more threads spin against other jobs.

    Set and restored around each test so nothing leaks into other folders' tests.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
