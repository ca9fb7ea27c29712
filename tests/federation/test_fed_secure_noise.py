"""Issue 13, item 1 on a federated device: noise and stochastic rounding from the OS CSPRNG by default,
recorded as such in the device's ledger; a seeded stream is refused by a real device's gate and a
server's seed is ignored by a real device (VaultSource), while simulations still follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.device import DeviceRound, initial_adapter, noise_rng, shared_base, train_round
from federation.update import build_update, encode
from personal.vault import Vault, VaultConfig
from privacy.budget import ReleaseGate, SeededNoiseRefused
from privacy.randomness import OS_CSPRNG, SEEDED, SecureGenerator, rng_kind
from tests.federation.conftest import routine_examples

PASS = "device passphrase"
CONFIG = FederationConfig(base="tiny", rounds=1, noise_multiplier=1.0, clip_norm=1.0, encoding="int8", local_epochs=1)


def _device_vault(path: Path):
    events, examples = routine_examples(0, n=30, user="me")
    vault = Vault.create(path, PASS, VaultConfig(fast_kdf=True))
    vault.add_events(events)
    return vault, examples


def test_device_round_defaults_to_the_csprng_and_records_it(tmp_path: Path):
    assert isinstance(DeviceRound("d", 1).rng, SecureGenerator)
    assert rng_kind(noise_rng(None, 3, 7)) == OS_CSPRNG and rng_kind(noise_rng(5, 3, 7)) == SEEDED
    base = shared_base("tiny", CONFIG.lora_r)
    start = initial_adapter(base, ["coffee", "gym", "home", "lunch", "work"], CONFIG)
    sent = []
    for copy in ("a", "b"):  # two copies of one device: same data, same global adapter, same local seed
        vault, examples = _device_vault(tmp_path / f"{copy}.db")
        with vault:
            gate = ReleaseGate(vault.db, signer=vault.signing_key())  # a real device's gate
            result = train_round(base, start, examples, CONFIG, DeviceRound("me", 1, 1.0, gate, "me", seed=0))
            (rec,) = gate.ledger.records("me", "user")
        assert rec.details["rng"] == OS_CSPRNG and rec.artefact_sha256 == result.wire.sha256()
        sent.append(rec.artefact_sha256)
    assert sent[0] != sent[1], "the same device data gave the same noised update twice: the noise is not secret"


def test_real_gate_refuses_a_seeded_round_before_training(tmp_path: Path):
    base = shared_base("tiny", CONFIG.lora_r)
    start = initial_adapter(base, ["coffee", "gym", "home", "lunch", "work"], CONFIG)
    vault, examples = _device_vault(tmp_path / "v.db")
    with vault:
        gate = ReleaseGate(vault.db, signer=vault.signing_key())
        with pytest.raises(SeededNoiseRefused):
            train_round(base, start, examples, CONFIG, DeviceRound("me", 1, 1.0, gate, "me", noise_rng(11, 1, 0)))
        assert gate.ledger.records() == []
        sim_gate = ReleaseGate(vault.db, signer=vault.signing_key(), allow_seeded_noise=True)  # a simulation opts in
        train_round(base, start, examples, CONFIG, DeviceRound("me", 1, 1.0, sim_gate, "me", noise_rng(11, 1, 0)))
        assert [r.details["rng"] for r in gate.ledger.records()] == [SEEDED]


def test_update_noise_and_rounding_default_to_the_csprng():
    spec = {"w": (50, 40)}
    delta = {"w": np.full((50, 40), 0.01, np.float32)}
    one, _ = build_update(delta, spec, round=1, device_id="d", clip_norm=1.0, sigma=1.0, encoding="int8")
    two, _ = build_update(delta, spec, round=1, device_id="d", clip_norm=1.0, sigma=1.0, encoding="int8")
    assert not np.array_equal(one.arrays["w"], two.arrays["w"])
    assert encode(one).sha256() != encode(one).sha256()  # stochastic rounding draws fresh uniforms too
    seeded = [build_update(delta, spec, round=1, device_id="d", clip_norm=1.0, sigma=1.0,
                           rng=np.random.default_rng(3))[0].arrays["w"] for _ in range(2)]
    assert np.array_equal(*seeded)  # simulations and tests still get reproducible streams when they ask


def test_a_real_device_ignores_the_servers_seed(tmp_path: Path, monkeypatch):
    from flwr.app import Context, RecordDict

    from federation.sources import PopulationSource, SimDevice, VaultSource

    vault, _ = _device_vault(tmp_path / "v.db")
    vault.close()
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    context = Context(run_id=1, node_id=42, node_config={"vault": str(tmp_path / "v.db"), "profile": "me",
                                                         "partition-id": 0}, state=RecordDict(), run_config={})
    handle = VaultSource().open(context)
    try:
        assert handle.gate is not None and handle.gate.allow_seeded_noise is False
        assert isinstance(handle.noise_rng(11, 1, context), SecureGenerator)  # a seed from the server changes nothing
    finally:
        handle.close()
    _, examples = routine_examples(0, n=10)
    sim = PopulationSource([SimDevice("sim", examples)], str(tmp_path / "ledgers")).open(context)
    try:
        assert rng_kind(sim.noise_rng(11, 1, context)) == SEEDED and sim.gate.allow_seeded_noise
        assert isinstance(sim.noise_rng(None, 1, context), SecureGenerator)
    finally:
        sim.close()
