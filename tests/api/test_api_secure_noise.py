"""Issue 13, acceptance 2 on the app paths: a personalization started from the SDK (`Assistant`) or
the local HTTP API draws its DP noise from the OS CSPRNG, and the ledger record says so."""

from __future__ import annotations

import httpx

from privacy.budget import ReleaseGate
from privacy.randomness import OS_CSPRNG
from tests.api.conftest import PROFILE, open_assistant

SETTINGS = {"noise_multiplier": 1.0, "epochs": 1, "batch_size": 8}


def _records(assistant) -> list:
    with assistant._vault_lock:
        return ReleaseGate(assistant.vault.db, signer=assistant.vault.signing_key()).ledger.records(PROFILE, "record")


def test_sdk_personalize_uses_the_csprng(vault_path):
    with open_assistant(vault_path) as a:
        result = a.personalize(**SETTINGS).wait(120)
        (rec,) = _records(a)
    assert rec.details["rng"] == OS_CSPRNG and rec.artefact_sha256 == result["adapter_sha256"]


def test_api_personalize_uses_the_csprng(live_api):
    url, token, assistant = live_api
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        r = c.post("/personalize", json=SETTINGS)
        assert r.status_code == 202, r.text
        assistant.job(r.json()["id"]).wait(120)
    (rec,) = _records(assistant)
    assert rec.details["rng"] == OS_CSPRNG
