"""Issue 13, item 1 and acceptance 2: `homebody personalize` draws its DP noise and Poisson sampling
from the OS CSPRNG by default, so two releases on two copies of one vault give different adapters,
and the ledger record says so; seeded noise is only for tests and simulations that ask for it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from personal.adapter import LoraSettings
from personal.examples import events_to_examples, label_space
from personal.models import load_base
from personal.personalize import personalize
from personal.training import DPConfig, TrainConfig, TrainingError, train_adapter
from personal.vault import Vault, VaultConfig
from privacy.budget import ReleaseGate, SeededNoiseRefused
from privacy.randomness import OS_CSPRNG, SEEDED
from tests.cli_support import run_homebody
from tests.personal.pers_helpers import routine_owner

PASS = "correct horse"
LORA = LoraSettings(r=2, layers=(-1,))


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny")


def _two_copies(tmp_path: Path) -> list[Path]:
    first = tmp_path / "a.db"
    with Vault.create(first, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner("ana", weeks=2))
    second = tmp_path / "b.db"
    shutil.copyfile(first, second)
    return [first, second]


def _only_record(path: Path):
    with Vault.open(path, PASS) as v:
        (rec,) = ReleaseGate(v.db, signer=v.signing_key()).ledger.records("ana", "record")
    return rec


def test_cli_releases_on_two_copies_of_one_vault_differ(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    records = []
    for path in _two_copies(tmp_path):
        code, out, err = run_homebody(monkeypatch, capsys, "personalize", "--profile", "ana", "--model", "tiny",
                                      "--epsilon", "3", "--vault", str(path))
        assert code == 0, err
        records.append(_only_record(path))
    assert [r.details["rng"] for r in records] == [OS_CSPRNG, OS_CSPRNG]
    assert records[0].params == records[1].params  # the same release, planned the same way...
    assert records[0].artefact_sha256 != records[1].artefact_sha256  # ...but secret, fresh noise


def test_the_cli_offers_no_seeded_noise(monkeypatch, capsys):
    code, out, err = run_homebody(monkeypatch, capsys, "personalize", "--help")
    assert code == 0 and "--epsilon" in out and "rng" not in out.lower() and "seed" not in out.lower()
    assert DPConfig().rng == DPConfig(epsilon=3.0).rng == OS_CSPRNG


def test_training_noise_is_fresh_by_default_and_reproducible_only_when_seeded(tiny):
    events = routine_owner("ana", weeks=2)
    examples, labels = events_to_examples(events), label_space(events)
    cfg = TrainConfig(lora=LORA, epochs=1, batch_size=16)

    def flat(dp: DPConfig) -> np.ndarray:
        tensors = train_adapter(tiny, examples, labels, cfg, dp).adapter.tensors
        return np.concatenate([tensors[k].ravel() for k in sorted(tensors)])

    secure = [flat(DPConfig(noise_multiplier=1.0)) for _ in range(2)]
    assert not np.array_equal(*secure)
    seeded = [flat(DPConfig(noise_multiplier=1.0, rng=SEEDED)) for _ in range(2)]
    assert np.array_equal(*seeded)
    with pytest.raises(TrainingError, match="rng must be one of"):
        DPConfig(noise_multiplier=1.0, rng="mt19937").validate()


def test_seeded_personalize_is_refused_on_a_real_vault_unless_opted_in(tmp_path: Path, tiny):
    cfg, dp = TrainConfig(lora=LORA, epochs=1, batch_size=16), DPConfig(noise_multiplier=1.0, rng=SEEDED)
    first, second = _two_copies(tmp_path)
    before = hashlib.sha256(first.read_bytes()).hexdigest()
    with Vault.open(first, PASS) as v:
        with pytest.raises(SeededNoiseRefused):
            personalize(v, "ana", tiny, cfg, dp)
    assert hashlib.sha256(first.read_bytes()).hexdigest() == before  # refused before any work: nothing written
    for path in (first, second):
        with Vault.open(path, PASS) as v:
            personalize(v, "ana", tiny, cfg, dp, allow_seeded_noise=True)  # a test asks for reproducibility
    one, two = _only_record(first), _only_record(second)
    assert one.details["rng"] == two.details["rng"] == SEEDED
    assert one.artefact_sha256 == two.artefact_sha256  # seeded means reproducible, hence recorded and refused
