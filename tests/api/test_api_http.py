"""The local API over real HTTP on 127.0.0.1: auth, schema errors, body limit, budget 409, no data lost, spec."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import PROFILE

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def _client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=120)


def test_every_route_needs_the_token(live_api):
    url, token, assistant = live_api
    spec = json.loads(SPEC.read_text())
    root = url[: -len("/v1")]
    calls = [(m.upper(), path.replace("{job_id}", "x")) for path, ops in spec["paths"].items() for m in ops]
    calls.append(("GET", "/openapi.json"))
    assert len(calls) >= 10
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {token}"}):
            r = httpx.request(method, root + path, headers=headers, json={}, timeout=60)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    assert assistant.count() == 30  # DELETE /v1/profile without the token erased nothing


def test_served_spec_is_the_checked_in_one(live_api):
    url, token, _ = live_api
    with _client(url[: -len("/v1")], token) as c:
        served = c.get("/openapi.json").json()
    assert served == json.loads(SPEC.read_text()), "docs/openapi.json is stale: run python -m personal.server --write-openapi"
    assert served["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_wrong_schema_is_422_and_stores_nothing(live_api):
    url, token, assistant = live_api
    with _client(url, token) as c:
        bad = [
            ("POST", "/events", {"events": []}),
            ("POST", "/events", {"events": [{"event": ""}]}),
            ("POST", "/events", {"events": [{"event": "   "}]}),  # passes the schema, the vault's check refuses it
            ("POST", "/events", {"events": [{"event": "Gym"}, {"event": "Gym", "timestamp": "not a time"}]}),
            ("POST", "/events", {"events": [{"event": "Gym", "timestamp": "0001-01-01T00:00:00+05:00"}]}),
            ("POST", "/events", {"events": [{"event": "Gym", "context": {"k": 1}}]}),
            ("POST", "/events", {"events": [{"event": "Gym", "user": "bob"}]}),
            ("POST", "/chat/completions", {"messages": []}),
            ("POST", "/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
            ("POST", "/chat/completions", {"messages": [{"role": "system", "content": "only a system turn"}]}),
            ("POST", "/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
            ("POST", "/personalize", {"epsilon": -1}),
            ("POST", "/personalize", {"epsilon": "lots"}),
            ("GET", "/suggestions?k=0", None),
        ]
        for method, path, body in bad:
            r = c.request(method, path, json=body)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
        r = c.post("/events", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert assistant.count() == 30
        assert c.get("/privacy/budget").json()["budgets"][0]["releases"] == 0


def test_oversized_body_is_413_declared_or_streamed(live_api):
    url, token, assistant = live_api
    big = {"events": [{"event": "Gym", "text": "x" * 3000}] * 30}  # ~100 KB > the 64 KiB limit of the fixture
    with _client(url, token) as c:
        r = c.post("/events", json=big)
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

        def chunks():
            for _ in range(100):
                yield b" " * 1024

        r = c.post("/events", content=chunks(), headers={"content-type": "application/json"})  # no Content-Length
        assert r.status_code == 413
    with _client(url, token) as c:  # the server still answers, nothing was stored
        assert c.post("/events", json={"events": [{"event": "Gym"}]}).json() == {"added": 1, "total": 31}
    assert assistant.count() == 31


def test_personalize_beyond_the_budget_is_409_naming_what_remains(live_api):
    from privacy.budget import BudgetPolicy, ReleaseGate

    url, token, assistant = live_api
    with assistant._vault_lock:
        ReleaseGate(assistant.vault.db, signer=assistant.vault.signing_key()).set_policy(PROFILE, "record", BudgetPolicy(epsilon_cap=0.25, delta=1e-5))
    with _client(url, token) as c:
        r = c.post("/personalize", json={"noise_multiplier": 1.0, "epochs": 1, "batch_size": 8})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["type"] == "BudgetExhausted" and err["remaining_epsilon"] == 0.25 and err["cap_epsilon"] == 0.25
        assert "0.25 remains" in err["message"]
        budget = c.get("/privacy/budget").json()["budgets"][0]
        assert budget == {**budget, "unit": "record", "releases": 0, "remaining_epsilon": 0.25, "spent_epsilon": 0.0}
        assert c.get("/privacy/report").json()["verified"] is True
    assert assistant.count() == 30


def test_api_round_trip_with_jobs_suggestions_stream_and_erasure(live_api):
    url, token, assistant = live_api
    with _client(url, token) as c:
        assert c.get("/suggestions", params={"predictor": "lora"}).status_code == 409  # no adapter yet: a clear conflict
        r = c.post("/personalize", json={"noise_multiplier": 1.0, "epochs": 1, "batch_size": 8})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["state"] in ("running", "done") and job["step"] >= 1
        assert c.post("/personalize", json={}).status_code in (202, 409)  # 409 while the first one runs
        assistant.job(job["id"]).wait(120)
        done = c.get(f"/jobs/{job['id']}").json()
        assert done["state"] == "done" and done["progress"] == 1.0 and done["result"]["epsilon"] > 0
        assert c.get("/jobs/nope").status_code == 404

        sug = c.get("/suggestions", params={"k": 2, "at": "2026-01-20T08:00", "predictor": "lora"}).json()
        assert len(sug["items"]) == 2 and sug["privacy"].startswith("DP adapter")

        with c.stream("POST", "/chat/completions", json={"model": "any", "stream": True,
                                                          "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
        extra = chunks[-1]["homebody"]
        assert text.startswith(extra["label"]) and extra["used_adapter"] and extra["manifest"]["signature"]

        n = assistant.count()
        gone = c.delete("/profile").json()
        assert gone == {"profile": PROFILE, "forgotten": True, "events": n}
        assert c.delete("/profile").json()["forgotten"] is False
        assert c.get("/privacy/budget").json()["budgets"][0]["releases"] == 1  # the ledger keeps no personal values
    assert assistant.count() == 0
