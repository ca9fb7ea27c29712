"""The habit scorer and its usefulness check on real Flower (ClientApp / ServerApp, simulation runtime).

One seeded run over four SuperNodes with real vaults (one of them with its user-level budget spent):
(a) every other vault holds the final weights + verdict artefact and its ledger shows the scorer
    rounds (settlement included) and exactly one check release, composing to the stated epsilon;
(b) the weights and the check's noised sum equal `run_scorer_federation` + `run_check` on copies of
    the same vaults, same seed and config (exactly: same float operations in the same order);
(c) a device replies only the update's arrays ("w", "b") / ("gain",) and the public header;
(d) the spent device declines with one reason, its ledger gets no release and its vault no artefact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from federation.config import FederationConfig, FederationConfigError
from tests.federation.conftest import ACTIVITIES, routine_examples

SEED, ROUNDS = 7, 3
PASS = "correct horse battery staple"


def _vaults(folder: Path, n: int = 4, capped: int = 3):
    """n vaults on disk (their events: routine days, shifted per owner); vault `capped` has a spent budget."""
    from federation.sources import VaultRef
    from personal.vault import Vault, VaultConfig
    from privacy.budget import BudgetPolicy, ReleaseGate

    refs = []
    for i in range(n):
        path, profile = folder / f"owner{i}.vault", f"owner{i}"
        with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as vault:
            vault.add_events(routine_examples(i % 3, n=48, user=profile)[0])
            if i == capped:
                ReleaseGate(vault.db, signer=vault.signing_key()).set_policy(profile, "user", BudgetPolicy(epsilon_cap=0.05, delta=1e-5))
        refs.append(VaultRef(str(path), PASS, profile))
    return refs


def _device(ref):
    """A DeviceHandle on one vault (events, vault, gate), opened as the simulation's source opens it."""
    from federation.sources import open_vault_device

    handle = open_vault_device(ref.path, ref.passphrase, ref.profile, 3, 0.2, seeded=True, accountant="rdp")
    return handle


def _fast_engine(refs, cfg: FederationConfig, q_cohort: int):
    """run_scorer_federation + run_check (the fast engine's functions) on the vaults `refs`."""
    from federation.habit_check import CheckRun, run_check
    from federation.habit_clientapp import CHECK_SEED_OFFSET
    from federation.habit_round import ScorerRun, run_scorer_federation
    from federation.habit_serverapp import check_plan
    from personal.habits import ScorerShape, initial_weights, training_batch

    handles = {r.profile: _device(r) for r in refs}
    try:
        shape = ScorerShape(tuple(ACTIVITIES))
        batches = {u: training_batch(h.events, shape) for u, h in handles.items()}
        gates = {u: h.gate for u, h in handles.items()}
        run = ScorerRun(rounds=cfg.rounds, cohort=q_cohort, run="fast-habit-scorer", server_lr=cfg.server_lr, noise_seed=SEED)
        weights, _ = run_scorer_federation(initial_weights(shape), batches, cfg, run, np.random.default_rng([SEED, 1]), gates)
        check_cfg, _ = check_plan(cfg, len(handles), q_cohort / len(handles))
        result, _ = run_check({u: h.events for u, h in handles.items()}, ACTIVITIES, weights, check_cfg,
                              CheckRun("fast-habit-check", SEED + CHECK_SEED_OFFSET), np.random.default_rng([SEED, 2]), gates)
    finally:
        for h in handles.values():
            h.close()
    return weights, result


def _replies(folder: Path) -> list[tuple[str, dict, dict]]:
    """(message type, records, arrays) of every reply the devices sent, as the outermost mod saw them."""
    out = []
    for meta in sorted(folder.glob("*.json")):
        if meta.name.endswith(".error.json"):
            out.append((meta.name.split("-node")[0], json.loads(meta.read_text()), {}))
            continue
        with np.load(meta.with_suffix(".npz")) as data:
            out.append((meta.name.split("-node")[0], json.loads(meta.read_text()), {k: data[k] for k in data.files}))
    return out


@pytest.mark.slow
def test_habit_scorer_on_flower(flower_env):
    from federation.device import USER, round_mechanism
    from federation.habit_serverapp import scorer_cohort
    from federation.simulation import run_scorer_simulation
    from personal.errors import ArtefactNotFound
    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, weights_from_bytes
    from personal.predict import habit_probs
    from privacy.accountant import SubsampledGaussian, compute_epsilon

    refs = _vaults(flower_env / "vaults")
    copies = flower_env / "copies"
    shutil.copytree(flower_env / "vaults", copies)
    cfg = FederationConfig(rounds=ROUNDS, model="habit-scorer", clip_norm=1.0, noise_multiplier=3.0, local_lr=1.0,
                           fraction_train=0.5, min_train_devices=2, min_available_devices=4, seed=SEED)
    history = run_scorer_simulation(refs, cfg, ACTIVITIES, record_dir=str(flower_env / "sent"))

    k = scorer_cohort(cfg, len(refs))
    # (d) the spent device declined with one reason; nothing was released or stored on it
    assert set(history.declined) == {"owner3"}
    assert history.declined["owner3"].endswith("user-level budget spent")
    # (a) every other vault: the artefact, the scorer rounds and one check on its ledger, at the stated epsilon
    mechs = [round_mechanism(cfg, k / len(refs), ROUNDS), SubsampledGaussian(history.check_noise_multiplier, 1.0, 1)]
    composed = compute_epsilon(mechs, cfg.delta, "rdp")
    assert composed <= history.epsilon  # the stated epsilon (the check's noise is calibrated at 0.999 of it)
    assert len(history.stored) == 3
    for ref in refs:
        h = _device(ref)
        try:
            records = h.gate.ledger.records(ref.profile, USER)
            if ref.profile == "owner3":
                assert records == []
                with pytest.raises(ArtefactNotFound):
                    h.vault.get_artefact(ref.profile, ARTEFACT_KIND, ARTEFACT_NAME)
                continue
            scorer = [r for r in records if r.details["run"].endswith("-habit-scorer")]
            check = [r for r in records if r.details["run"].endswith("-habit-check")]
            assert sum(int(r.details["rounds_charged"]) for r in scorer) == ROUNDS
            assert len(check) == 1 and len(records) == len(scorer) + 1
            assert h.gate.spent(ref.profile, USER) == pytest.approx(composed, rel=1e-9)
            data, meta = h.vault.get_artefact(ref.profile, ARTEFACT_KIND, ARTEFACT_NAME)
            weights, vocab = weights_from_bytes(data)
            assert list(vocab) == ACTIVITIES and meta["check"] == history.check.to_json()
            assert all(np.array_equal(weights[n], history.weights[n]) for n in ("w", "b"))
            assert meta["epsilon"] == pytest.approx(composed, rel=1e-9)
            names, probs, line = habit_probs(h.vault, ref.profile, h.events[-1].timestamp)  # what `homebody suggest` ranks with
            assert "usefulness check" in line or "federated habit scorer" in line
        finally:
            h.close()
    # (b) the fast engine's functions on the same (copied, untouched) vaults learn the same weights and verdict
    fast_weights, fast_check = _fast_engine([type(r)(str(copies / Path(r.path).name), r.passphrase, r.profile) for r in refs],
                                            cfg, k)
    assert all(np.array_equal(fast_weights[n], history.weights[n]) for n in ("w", "b"))
    assert fast_check == history.check
    # (c) what left the devices: the update's arrays and the public header, nothing else
    replies = _replies(flower_env / "sent")
    kinds = {kind for kind, _, _ in replies}
    assert kinds == {"query_habit_hello", "train_habit_scorer", "train_habit_check", "query_habit_store"}
    sent = [kind for kind, _, arrays in replies if arrays]
    assert sent.count("train_habit_check") == 3 and sent.count("train_habit_scorer") >= 3
    for kind, records, arrays in replies:
        assert set(arrays) <= {"update/flat"}
        if not arrays:  # hello, store, a decline: the header only
            assert set(records) == {"header"} and set(records["header"]) <= {"device_id", "stored", "declined"}
            continue
        assert set(records) == {"header"}
        header = records["header"]
        assert header["names"] == (["b", "w"] if kind == "train_habit_scorer" else ["gain"])
        assert set(header) <= {"round", "device_id", "encoding", "clip_norm", "noise_std", "names", "ndims", "dims",
                               "num_examples", "sigma", "model"}, header


def test_model_setting_is_checked():
    """An unknown `model` in the run config is one typed error naming the setting."""
    with pytest.raises(FederationConfigError, match="model must be one of"):
        FederationConfig.from_record({"model": "transformer"})
    assert FederationConfig.from_record({"model": "habit-scorer"}).model == "habit-scorer"


def test_unseeded_cohorts_come_from_the_os_csprng():
    """Without a seed the server draws cohorts with the OS CSPRNG: distinct, sorted, in range."""
    from federation.habit_round import draw_cohort
    from privacy.randomness import SecureGenerator

    draws = [draw_cohort(SecureGenerator(), 10, 4) for _ in range(20)]
    assert all(len(set(d)) == 4 and d == sorted(d) and 0 <= d[0] and d[-1] < 10 for d in draws)
    assert len({tuple(d) for d in draws}) > 1


def test_secagg_mode_is_refused_before_any_message():
    """Mode secagg would show the server each device's update with only its share of the noise."""
    from federation.config import FederationSetupError
    from federation.habit_serverapp import run_scorer_flower

    with pytest.raises(FederationSetupError, match="secagg"):
        run_scorer_flower(None, FederationConfig(model="habit-scorer", mode="secagg"), ACTIVITIES)
