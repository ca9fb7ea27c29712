"""The vault's library contract: events, profiles, artefacts, keys, errors."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from personal.errors import (
    ArtefactNotFound,
    HomebodyError,
    IntegrityError,
    InvalidArtefact,
    InvalidEvent,
    NotAVault,
    ProfileNotFound,
    VaultExists,
    WrongPassphrase,
)
from personal.vault import Event, Vault, VaultConfig
from tests.vault.conftest import FAST, PASS, make_events


def test_events_round_trip_in_chronological_order(vault):
    events = make_events(300)
    # add in reverse order, with a naive and an offset timestamp mixed in
    extra = [
        Event("ann", datetime(2024, 5, 1, 5, 0), "early", {}, "naive"),
        Event("ann", datetime(2024, 5, 1, 7, 0, tzinfo=timezone(timedelta(hours=2))), "offset"),
    ]
    assert vault.add_events(list(reversed(events)) + extra) == 302
    got = vault.events("ann")
    want = sorted([e for e in events if e.user == "ann"], key=lambda e: e.timestamp)
    assert got[0].event == "early" and got[0].timestamp.tzinfo is None  # 05:00 naive sorts as UTC
    assert got[1].event == "offset" and got[1].timestamp.utcoffset() == timedelta(hours=2)  # 05:00 UTC, added later
    assert got[2:] == want
    assert vault.profiles() == ["ann", "bob"]
    assert vault.count() == 302 and vault.count("bob") == 150
    assert vault.add_events([]) == 0


def test_unknown_profile_and_bad_events_are_typed_errors(vault):
    with pytest.raises(ProfileNotFound, match="carol"):
        vault.events("carol")
    with pytest.raises(ProfileNotFound):
        vault.count("carol")
    with pytest.raises(ProfileNotFound):
        vault.forget("carol")
    assert not vault.has_profile("carol")
    with pytest.raises(InvalidEvent):
        Event("", datetime.now(), "x")
    with pytest.raises(InvalidEvent):
        Event("ann", "2024-01-01", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):
        Event("ann", datetime.now(), "x", {"n": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidEvent):
        vault.add_events([("ann", datetime.now(), "x")])  # type: ignore[list-item]
    assert issubclass(InvalidEvent, HomebodyError)


def test_artefacts_put_get_overwrite_list_delete(vault):
    vault.add_events(make_events(4))
    vault.put_artefact("ann", "adapter", "lora-v1", b"\x00weights" * 100, {"rank": 8})
    vault.put_artefact("ann", "cache", "examples", b"tokens", {})
    vault.put_artefact("carol", "adapter", "lora-v1", b"carol's", {"rank": 4})  # creates the profile
    assert vault.get_artefact("ann", "adapter", "lora-v1") == (b"\x00weights" * 100, {"rank": 8})
    vault.put_artefact("ann", "adapter", "lora-v1", b"v2", {"rank": 16})
    assert vault.get_artefact("ann", "adapter", "lora-v1") == (b"v2", {"rank": 16})
    assert vault.list_artefacts("ann") == [("adapter", "lora-v1"), ("cache", "examples")]
    assert vault.get_artefact("carol", "adapter", "lora-v1")[0] == b"carol's"
    vault.delete_artefact("ann", "cache", "examples")
    with pytest.raises(ArtefactNotFound):
        vault.get_artefact("ann", "cache", "examples")
    with pytest.raises(ArtefactNotFound):
        vault.delete_artefact("ann", "cache", "examples")
    with pytest.raises(InvalidArtefact):
        vault.put_artefact("ann", "x", "y", "not bytes", {})  # type: ignore[arg-type]
    with pytest.raises(InvalidArtefact):
        vault.put_artefact("ann", "x", "y", b"", {"bad": object()})
    assert vault.verify().ok


def test_device_key_public_half_readable_without_passphrase(vault, vault_path):
    signature = vault.signing_key().sign(b"ledger record")
    vault.close()
    with sqlite3.connect(vault_path) as conn:
        hex_key = conn.execute("SELECT value FROM meta WHERE key = 'device_public_key'").fetchone()[0]
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key)).verify(signature, b"ledger record")
    with Vault.open(vault_path, PASS) as again:
        assert again.public_key().public_bytes_raw().hex() == hex_key
        assert again.signing_key().public_key().public_bytes_raw().hex() == hex_key


def test_privacy_tables_share_the_file(vault, vault_path):
    vault.db["privacy_extra"].insert({"seq": 1, "record": "{}"})  # the vault itself starts the ledger at create
    vault.add_events(make_events(3))
    vault.close()
    with Vault.open(vault_path, PASS) as again:
        assert again.db["privacy_extra"].count == 1 and again.count() == 3
        assert again.db["ledger_head"].count == 1  # the signed genesis head


def test_default_kdf_create_open_and_wrong_passphrase(tmp_path):
    path = tmp_path / "default.db"
    with Vault.create(path, PASS) as v:
        assert v.info()["kdf"] == "scrypt n=32768 r=8 p=1" and v.info()["fast_kdf"] is False
        v.add_events(make_events(2))
    with Vault.open(path, PASS) as v:
        assert v.count() == 2
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        Vault.open(path, PASS + "x")


def test_create_refuses_existing_and_open_refuses_non_vaults(tmp_path, vault_path, vault):
    with pytest.raises(VaultExists):
        Vault.create(vault_path, PASS, FAST)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(NotAVault):
        Vault.open(junk, PASS)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.close()
    with pytest.raises(NotAVault):
        Vault.open(other, PASS)
    with pytest.raises(NotAVault):
        Vault.open(tmp_path / "missing.db", PASS)
    with pytest.raises(HomebodyError):
        VaultConfig(kdf_n=1000)


def test_moved_ciphertext_fails_to_open(vault, vault_path):
    vault.add_events(make_events(4, users=("ann",)))
    with sqlite3.connect(vault_path) as conn:
        blob = conn.execute("SELECT event FROM events WHERE id = 1").fetchone()[0]
        conn.execute("UPDATE events SET event = ? WHERE id = 2", (blob,))
    with pytest.raises(IntegrityError) as err:
        vault.events("ann")
    assert (err.value.table, err.value.row, err.value.column) == ("events", 2, "event")


def test_second_handle_picks_up_rotation(vault_path, vault):
    vault.add_events(make_events(10))
    with Vault.open(vault_path, PASS) as other:
        assert other.count("ann") == 5
        vault.rotate_data_key()
        other.add_events(make_events(2, tag="-late"))  # must use the new keys, not stale cached ones
        assert other.count("ann") == 6
    assert vault.verify().ok and vault.count() == 12
