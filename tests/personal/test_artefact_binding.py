"""Issue 13 item 5: an adapter is bound to the ledger record that released it.

The attack: two copies of one vault (same keys). Each personalizes; the adapter ciphertext of one
is copied into the other's row. It opens (same keys, same row), so before this fix it was served
by suggest, ask, the SDK and the API, while the ledger recorded another adapter's hash.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from personal.adapter import LoraSettings
from personal.errors import ArtefactMismatch
from personal.models import load_base
from personal.personalize import ADAPTER, load_adapter, personalize, store_released
from personal.predict import ask, suggest
from personal.training import DPConfig, TrainConfig
from personal.vault import Vault, VaultConfig
from privacy.ledger import Ledger
from tests.personal.pers_helpers import routine_owner

PASS = "correct horse"
PROFILE = "ana"
CFG = TrainConfig(lora=LoraSettings(r=4, layers=(-1,)), epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def base():
    return load_base("tiny-causal")  # a causal base serves suggest and ask alike


def _copy(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


def _adapter_row(path: Path) -> tuple[int, str]:
    """The (id, lookup) of the only adapter row (checkpoints are dropped after a release)."""
    with Vault.open(path, PASS) as v:
        assert v.list_artefacts(PROFILE) == [(ADAPTER, "tiny-causal")]
    with sqlite3.connect(path) as conn:
        ((rid, look),) = conn.execute("select id, lookup from artefacts").fetchall()
    return rid, look


@pytest.fixture
def swapped(tmp_path, base) -> Path:
    """Vault A serving the adapter ciphertext released in its copy B."""
    a = tmp_path / "a.db"
    with Vault.create(a, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner(PROFILE, weeks=3))
    b = _copy(a, tmp_path / "b.db")
    for path, z in ((a, 1.2), (b, 3.0)):
        with Vault.open(path, PASS) as v:
            personalize(v, PROFILE, base, CFG, DPConfig(noise_multiplier=z))
    (rid_a, look_a), (rid_b, look_b) = _adapter_row(a), _adapter_row(b)
    assert (rid_a, look_a) == (rid_b, look_b)  # same keys, same row: the ciphertext of B opens in A
    with sqlite3.connect(a) as conn:
        conn.execute("attach database ? as b", (str(b),))
        conn.execute("update artefacts set data = (select data from b.artefacts where id = ?), "
                     "meta = (select meta from b.artefacts where id = ?) where id = ?", (rid_b, rid_b, rid_a))
    with Vault.open(a, PASS) as v:
        data, _ = v.get_artefact(PROFILE, ADAPTER, "tiny-causal")  # it opens: the vault alone cannot tell
        (record,) = Ledger(v.db, signer=v.signing_key()).records(PROFILE, "record")
        assert hashlib.sha256(data).hexdigest() != record.artefact_sha256
    return a


def test_library_refuses_the_swapped_adapter(swapped, base):
    with Vault.open(swapped, PASS) as v:
        for use in (lambda: load_adapter(v, PROFILE, base), lambda: suggest(v, PROFILE, base),
                    lambda: ask(v, PROFILE, "What will I do next?", base, max_new_tokens=2)):
            with pytest.raises(ArtefactMismatch, match="not the one the ledger recorded"):
                use()
        personalize(v, PROFILE, base, CFG, DPConfig(noise_multiplier=1.2))  # a new release serves again
        assert suggest(v, PROFILE, base).items


def test_sdk_and_api_refuse_the_swapped_adapter(swapped):
    from personal.assistant import Assistant
    from personal.auth import ensure_token
    from personal.server import start_in_thread

    token, _ = ensure_token(swapped)
    with Assistant.open(swapped, PASS, PROFILE, "tiny-causal", max_new_tokens=2) as a:
        for predictor in ("lora", "combined"):  # combined never falls back from a refused adapter
            with pytest.raises(ArtefactMismatch):
                a.suggest(predictor=predictor)
        with pytest.raises(ArtefactMismatch):
            a.chat([{"role": "user", "content": "hi"}])
        server, url = start_in_thread(a, token)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                r = c.get("/suggestions", params={"predictor": "lora"})
                assert r.status_code == 409 and r.json()["error"]["type"] == "ArtefactMismatch", r.text
                r = c.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 409 and r.json()["error"]["type"] == "ArtefactMismatch", r.text
        finally:
            server.should_exit = True
            server.thread.join(10)


def test_adapter_stored_outside_a_release_is_refused(tmp_path, base):
    with Vault.create(tmp_path / "v.db", PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner(PROFILE, weeks=2))
        out = personalize(v, PROFILE, base, CFG, DPConfig(noise_multiplier=1.2))
        other = tmp_path / "other.db"
        with Vault.create(other, PASS, VaultConfig(fast_kdf=True)) as w:
            w.add_events(routine_owner(PROFILE, weeks=2))
            w.put_artefact(PROFILE, ADAPTER, base.name, out.adapter.to_bytes(), {})  # no ledger record in this vault
            with pytest.raises(ArtefactMismatch, match="no ledger record released it"):
                load_adapter(w, PROFILE, base)
        with pytest.raises(ArtefactMismatch, match="nothing stored"):
            store_released(v, PROFILE, base.name, b"not the released bytes", {})
        assert load_adapter(v, PROFILE, base).sha256() == out.adapter.sha256()  # the released one is untouched
