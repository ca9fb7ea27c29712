"""Issue 13 item 7: a real device is known to the server by its vault key, never its profile name.

The deployment ClientApp (`federation.clientapp.client_app`'s VaultSource) is called in process
with a real vault, a real train message and Flower's own records; what it replies is what leaves
the device. Two vaults with the same profile name give two device ids, and neither the profile
name nor the node config's `device-id` appears anywhere in the reply bytes, declines included.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from federation.config import FederationConfig
from federation.device import device_identity

PROFILE = "alice-private-profile"
PASSPHRASE = "identity test passphrase"
LABELS = ["home", "work", "gym", "coffee", "park"]
CFG = FederationConfig(rounds=1, noise_multiplier=1.0, encoding="int8", fraction_evaluate=0.0)


def _vault(path: Path, shift: int) -> str:
    from personal.vault import Event, Vault, VaultConfig

    start = datetime(2024, 1, 1, 7)
    with Vault.create(path, PASSPHRASE, VaultConfig(fast_kdf=True)) as vault:
        vault.add_events(Event(PROFILE, start + timedelta(hours=3 * i), LABELS[(i + shift) % len(LABELS)]) for i in range(30))
        return device_identity(vault.signing_key().public_key())


def _train(vault: Path, node_id: int):
    """One train message through the deployment ClientApp; returns the reply."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from federation import device as dev
    from federation.clientapp import make_client_app
    from federation.sources import VaultSource
    from federation.wire import arrays_to_record

    base = dev.shared_base(CFG.base, CFG.lora_r)
    initial = dev.initial_adapter(base, LABELS, CFG)
    config = ConfigRecord(CFG.to_record() | {"server-round": 1, "sample-rate": 1.0, "labels": LABELS,
                                             "base-sha256": base.weights_sha256})
    msg = Message(RecordDict({"arrays": arrays_to_record(initial.tensors), "config": config}), dst_node_id=node_id,
                  message_type=MessageType.TRAIN)
    node_config = {"vault": str(vault), "profile": PROFILE, "device-id": PROFILE}  # a name in the node config is ignored
    context = Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})
    return make_client_app(VaultSource())(msg, context)


def _sent_bytes(reply) -> bytes:
    """Every serialised Flower object of the reply's content (what goes over the wire)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return b"".join(obj.deflate() for obj in get_all_nested_objects(reply.content).values())


@pytest.fixture()
def passphrase_env(monkeypatch):
    """The vault passphrase, and the task identity Flower's runtime sets in a process before it makes messages."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASSPHRASE)
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def test_two_vaults_with_one_profile_name_are_two_devices(tmp_path, passphrase_env):
    ids = [_vault(tmp_path / f"v{d}.vault", d) for d in range(2)]
    assert ids[0] != ids[1] and all(len(i) == 16 for i in ids)
    for d, expected in enumerate(ids):
        reply = _train(tmp_path / f"v{d}.vault", node_id=10 + d)
        assert not reply.has_error() and "update" in reply.content
        assert reply.content["header"]["device_id"] == expected
        assert PROFILE.encode() not in _sent_bytes(reply)


def test_a_decline_names_neither_the_profile_nor_the_budget_wording(tmp_path, passphrase_env):
    from personal.vault import Vault
    from privacy.budget import BudgetPolicy, ReleaseGate

    path = tmp_path / "v.vault"
    expected = _vault(path, 0)
    with Vault.open(path, PASSPHRASE) as vault:  # a cap that one round at sigma=1 already crosses
        ReleaseGate(vault.db, signer=vault.signing_key()).set_policy(PROFILE, "user", BudgetPolicy(epsilon_cap=0.01, delta=1e-5))
    reply = _train(path, node_id=3)
    header = reply.content["header"]
    assert "update" not in reply.content and header["device_id"] == expected
    assert "budget spent" in str(header["declined"]) and PROFILE.encode() not in _sent_bytes(reply)
