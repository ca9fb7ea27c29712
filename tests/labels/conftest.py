"""Fixtures for the labelling tests: a device key, a tiny random causal LM, a provenance."""

from __future__ import annotations

from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def tiny_causal():
    """personal.models' seeded random miniature Llama (MiniLM tokenizer, vocab 30522)."""
    from personal.models import load_base

    return load_base("tiny-causal")


@pytest.fixture(scope="session")
def provenance(tiny_causal):
    from personal.provenance import provenance_for

    return provenance_for(tiny_causal, adapter_sha256="ab" * 32)


@contextmanager
def one_thread():
    """Run tiny-model work on one intra-op thread (restored after).

    On a busy 2-core machine, OpenMP's spinning threads made an 80-token tiny generation take
    ~120 s instead of ~3 s.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def watermark_key(signer) -> bytes:
    from personal.provenance import derive_watermark_key

    return derive_watermark_key(signer)


@pytest.fixture(scope="session")
def generations(tiny_causal, provenance, signer, watermark_key):
    """Two watermarked answers (one batch) and one unwatermarked, generated once per session."""
    import torch

    from personal.provenance import generate_labelled, generate_labelled_batch

    n = 80
    torch.manual_seed(1)
    with one_thread():
        marked = generate_labelled_batch(
            tiny_causal.model, tiny_causal.tokenizer, ["what do I do on friday evenings", "suggest a walk"],
            provenance, signer, watermark_key=watermark_key, max_new_tokens=n, min_new_tokens=n,
        )
        plain = generate_labelled(
            tiny_causal.model, tiny_causal.tokenizer, "what do I do on friday evenings", provenance, signer,
            watermark_key=None, max_new_tokens=n, min_new_tokens=n,
        )
    return watermark_key, marked, plain
