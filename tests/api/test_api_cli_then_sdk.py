"""`homebody personalize`, then the SDK's personalization, on one running server (issue 18, acceptance 4).

A served base wrapped once for the CLI's adapter used to refuse the SDK's LoRA setting
(`wrap` raised, the API answered 409). Both now default to the same settings, and a served base
re-wraps for another setting: with the CLI's defaults and with other CLI settings, the SDK's
job trains and the server keeps suggesting.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.conftest import PASSPHRASE, PROFILE, make_vault, open_assistant
from tests.cli_support import run_homebody

pytestmark = pytest.mark.network


def _wait_done(c: httpx.Client, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = c.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


@pytest.mark.parametrize("cli_settings", [[], ["--rank", "4", "--layers", "all"]], ids=["cli-defaults", "other-lora"])
def test_cli_then_sdk_personalize_on_one_server(tmp_path, monkeypatch, capsys, cli_settings):
    from personal.auth import read_token
    from personal.server import start_in_thread

    path = make_vault(tmp_path / "vault.db")
    assistant = open_assistant(path, model="tiny")
    server, url = start_in_thread(assistant, read_token(path))
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {read_token(path)}"}, timeout=300) as c:
            lora = {"predictor": "lora", "k": 2}  # the owner's adapter on the served base (the default ranks habit counts)
            assert c.get("/suggestions", params=lora).status_code == 409  # no adapter yet
            monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASSPHRASE)
            code, out, err = run_homebody(monkeypatch, capsys, "personalize", "--vault", str(path), "--profile", PROFILE,
                                          "--model", "tiny", "--noise-multiplier", "3", "--epochs", "1", *cli_settings)
            assert code == 0, err
            first = c.get("/suggestions", params=lora)
            assert first.status_code == 200, first.text  # the served base now holds the CLI's LoRA layers

            started = c.post("/personalize", json={"noise_multiplier": 3.0, "epochs": 1})
            assert started.status_code == 202, started.text
            job = _wait_done(c, started.json()["id"])
            assert job["state"] == "done", job
            again = c.get("/suggestions", params=lora)
            assert again.status_code == 200, again.text
            items = again.json()["items"]
            assert again.json()["predictor"] == "lora"
            assert len(items) == 2 and {i["event"] for i in items} <= {"Coffee Shop", "Office", "Park", "Subway"}
            assert c.get("/privacy/budget").json()["budgets"][0]["releases"] == 2  # both releases in the one ledger
        sug = assistant.suggest(k=3, predictor="lora")  # the SDK in-process, same served base
        assert len(sug.items) == 3 and sug.predictor == "lora"
    finally:
        server.should_exit = True
        server.thread.join(10)
        assistant.close()
