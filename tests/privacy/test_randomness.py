"""Issue 13, item 1: the randomness primitives (OS CSPRNG) and the gate's rule on seeded noise.

- `privacy.randomness`: uniforms and Gaussians from os.urandom with the right distribution, no seed,
  fast enough for a federated update; a seeded generator only when a seed is given.
- `ReleaseGate.commit`: a DP release must name its randomness (`details["rng"]`); a real device's
  gate (the default) refuses "seeded" before writing anything; simulations opt in and it is recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from privacy.accountant import SubsampledGaussian
from privacy.budget import BudgetError, ReleaseGate, SeededNoiseRefused
from privacy.randomness import (OS_CSPRNG, SEEDED, SecureGenerator, noise_source, rng_kind, secure_normal,
                                secure_uniform)

from .priv_helpers import sha, signed_db

MECH = SubsampledGaussian(2.0, 0.1, 50)


def test_secure_uniform_is_uniform_on_0_1_and_never_repeats():
    u = secure_uniform(200_000)
    assert u.shape == (200_000,) and u.dtype == np.float64
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    assert not np.array_equal(secure_uniform(1000), secure_uniform(1000))  # no hidden fixed seed


def test_secure_normal_has_the_requested_scale_and_gaussian_shape():
    x = secure_normal((400, 500), 2.5)
    assert x.shape == (400, 500)
    flat = x.ravel()
    assert abs(flat.mean()) < 0.03 and flat.std() == pytest.approx(2.5, rel=0.01)
    assert stats.kstest(flat / 2.5, "norm").pvalue > 1e-4
    assert np.all(secure_normal(7, 0.0) == 0.0)


def test_secure_generator_is_a_drop_in_for_the_generator_methods_used():
    g = SecureGenerator()
    assert g.random((3, 4)).shape == (3, 4) and g.random(5).shape == (5,)
    assert g.normal(1.0, 2.0, size=(2, 3)).shape == (2, 3) and g.standard_normal(4).shape == (4,)
    a, b = SecureGenerator().normal(0.0, 1.0, size=64), SecureGenerator().normal(0.0, 1.0, size=64)
    assert not np.array_equal(a, b)  # two instances are independent: there is no seed to share


def test_noise_source_is_the_csprng_unless_a_seed_is_given():
    assert rng_kind(noise_source()) == OS_CSPRNG and isinstance(noise_source(None), SecureGenerator)
    seeded = noise_source([1, 2, 3])
    assert rng_kind(seeded) == SEEDED
    assert np.array_equal(seeded.normal(size=8), noise_source([1, 2, 3]).normal(size=8))  # reproducible on purpose
    assert rng_kind(np.random.default_rng()) == SEEDED  # PCG64, even OS-seeded, is not a CSPRNG


def test_a_federated_update_worth_of_noise_is_fast():
    noise_source().normal(0.0, 1.0, size=1000)  # warm-up
    t0 = time.perf_counter()
    x = noise_source().normal(0.0, 1.0, size=100_000)
    took = time.perf_counter() - t0
    assert x.shape == (100_000,) and took < 1.0, f"100k CSPRNG normals took {took:.3f} s"


def test_real_gate_refuses_seeded_noise_and_writes_nothing(tmp_path: Path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key)  # what every real device builds: no opt-in
    assert gate.allow_seeded_noise is False
    before = (tmp_path / "d.db").read_bytes()
    with pytest.raises(SeededNoiseRefused, match="seeded generator"):
        gate.commit("ann", "record", MECH, sha("adapter"), details={"rng": SEEDED})
    with pytest.raises(BudgetError, match=r"details\['rng'\]"):
        gate.commit("ann", "record", MECH, sha("adapter"))  # a release that does not say is refused too
    with pytest.raises(BudgetError, match=r"details\['rng'\]"):
        gate.commit("ann", "record", MECH, sha("adapter"), details={"rng": "mersenne"})
    assert gate.ledger.records() == [] and (tmp_path / "d.db").read_bytes() == before
    rec = gate.commit("ann", "record", MECH, sha("adapter"), details={"rng": OS_CSPRNG})
    assert rec.details["rng"] == OS_CSPRNG


def test_simulation_gate_opts_in_and_records_seeded(tmp_path: Path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key, allow_seeded_noise=True)
    rec = gate.commit("sim-device", "user", MECH, sha("update"), details={"rng": SEEDED, "round": 1})
    (stored,) = ReleaseGate(db, signer=key).ledger.records("sim-device", "user")
    assert rec.details["rng"] == stored.details["rng"] == SEEDED
