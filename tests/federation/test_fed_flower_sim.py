"""Acceptance 1 and 3 in a real Flower run (simulation runtime, Ray backend).

Every reply a ClientApp sends is recorded by the outermost mod; each device's on-device audit
trail holds its pre-noise (clipped) update. From both: only the shared adapter's keys leave, the
pre-noise norm is <= C, and the noise (sent - clipped) is N(0, (sigma*C)^2) (KS test, fixed seed).
A fourth device sends NaN, wrong-shape and over-norm updates: the final global adapter equals the
initial one plus the mean of the honest updates only, and the log names each reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from scipy import stats

from federation.config import FederationConfig
from federation.update import l2_norm
from tests.federation.conftest import ACTIVITIES, routine_examples

pytestmark = [pytest.mark.slow]
C, SIGMA = 0.05, 1.5  # C small enough that clipping is engaged (local deltas have norm ~0.1-0.3)
EVIL = {1: "nan", 2: "shape", 3: "norm"}


class EvilMod:
    """A misbehaving device: corrupts its own outgoing update, differently each round."""

    def __call__(self, msg, context, call_next):
        from flwr.app import Array

        reply = call_next(msg, context)
        if "update" not in reply.content or not str(reply.content["header"]["device_id"]).startswith("evil"):
            return reply
        kind = EVIL[int(reply.content["header"]["round"])]
        flat = reply.content["update"]["flat"].numpy().copy()
        if kind == "nan":
            flat[0] = np.nan
        elif kind == "shape":
            flat = np.append(flat, flat[:1])
        else:
            flat = flat * 50
        reply.content["update"]["flat"] = Array(np.ascontiguousarray(flat))
        return reply


def _load_replies(folder: Path):
    """(header, arrays) of every recorded train reply, unpacked exactly as the server does
    (the evil device's are returned without arrays: some of them cannot be unpacked)."""
    from federation.wire import unpack

    out = []
    for meta in sorted(folder.glob("train-*.json")):
        header = json.loads(meta.read_text())["header"]
        with np.load(meta.with_suffix(".npz")) as data:
            flat = data["update/flat"]
        honest = not str(header["device_id"]).startswith("evil")
        out.append((header, unpack(header, flat).arrays if honest else None))
    return out


def test_flower_run_sends_only_clipped_noised_adapter_updates(flower_env, caplog):
    from federation import simulation
    from federation.device import initial_adapter, shared_base

    cloudpickle.register_pickle_by_value(__import__(__name__))
    devices = [simulation.SimDevice(f"dev-{i}", routine_examples(i)[1]) for i in range(3)]
    devices.append(simulation.SimDevice("evil-3", routine_examples(3)[1]))
    cfg = FederationConfig(rounds=3, clip_norm=C, noise_multiplier=SIGMA, encoding="fp32", fraction_evaluate=0.0,
                           min_available_devices=4, min_train_devices=4, seed=11, local_epochs=1)
    rec, audit = flower_env / "sent", flower_env / "audit"
    with caplog.at_level(logging.INFO):
        history = simulation.run_simulation(devices, cfg, ACTIVITIES, record_dir=str(rec), audit_dir=str(audit),
                                            ledger_dir=str(flower_env / "ledgers"), epsilon_cap=6.0, train_mods=[EvilMod()])

    spec = {k: v.shape for k, v in initial_adapter(shared_base("tiny"), ACTIVITIES, cfg).tensors.items()}
    replies = _load_replies(rec)
    assert len(replies) == 12  # 4 devices x 3 rounds, every one intercepted
    noise, honest, clipped_norms = [], {}, []
    for header, arrays in replies:
        device, rnd = header["device_id"], int(header["round"])
        if device.startswith("evil"):
            continue
        assert set(arrays) == set(spec), "only the shared adapter's tensors may leave a device"
        assert all("lora_" in k or k.startswith("head.") for k in arrays)
        with np.load(audit / f"{device}-r{rnd}-clipped.npz") as clipped_file:
            clipped = {k: clipped_file[k] for k in clipped_file.files}
        clipped_norms.append(l2_norm(clipped))
        assert clipped_norms[-1] <= C * (1 + 1e-5)
        noise.append(np.concatenate([(arrays[k].astype(np.float64) - clipped[k]).ravel() for k in sorted(spec)]))
        honest.setdefault(rnd, []).append(arrays)
    noise = np.concatenate(noise)
    assert max(clipped_norms) == pytest.approx(C, rel=1e-5)  # clipping was really engaged
    assert len(honest) == 3 and all(len(v) == 3 for v in honest.values())
    assert stats.kstest(noise, "norm", args=(0, SIGMA * C)).pvalue > 0.01
    assert np.std(noise) == pytest.approx(SIGMA * C, rel=0.05)
    assert stats.kstest(noise, "norm", args=(0, 1.1 * SIGMA * C)).pvalue < 1e-3  # the test can tell 10% apart

    # Acceptance 3: the evil device changed nothing; the log names every reason.
    expected = {k: history.initial_arrays[k].astype(np.float64) for k in spec}
    for rnd in (1, 2, 3):
        for k in spec:
            expected[k] += np.mean([a[k] for a in honest[rnd]], axis=0)
    for k in spec:
        np.testing.assert_allclose(history.arrays[k], expected[k], atol=1e-5)
    reasons = {r.round: r.reason for rnd in history.rounds for r in rnd.rejected if r.device_id == "evil-3"}
    assert reasons == {1: "non-finite", 2: "wrong-shape", 3: "over-norm"}
    for reason in reasons.values():
        assert f"rejected update from device evil-3: {reason}" in caplog.text
    # user-level accounting: each honest device committed 3 releases to its own signed ledger
    assert history.summary.participations == {f"dev-{i}": 3 for i in range(3)}
    eps = [r.epsilon for r in history.rounds]
    assert eps[-1]["dev-0"] == pytest.approx(history.summary.epsilon, rel=1e-6)
