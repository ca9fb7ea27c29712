"""Fixtures for the labelling tests: a device key, a tiny random causal LM, a provenance."""

from __future__ import annotations

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
