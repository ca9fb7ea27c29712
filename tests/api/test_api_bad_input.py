"""Issue 13 item 4, the local API over real HTTP: bad input is a 422 naming the field, never a 500,
nothing of it is stored, and no request value reaches the server's log."""

from __future__ import annotations

import logging

import httpx
import pytest

SECRET = "SECRET-Mitte-Cafe"
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi", "homebody.api")

BAD_BODIES = {
    # raw bytes, so JSON escapes reach the server exactly as an attacker writes them
    "lone surrogate in event": b'{"events": [{"event": "SECRET-Mitte-Cafe\\ud800"}]}',
    "lone surrogate in context key": b'{"events": [{"event": "Gym", "context": {"SECRET-Mitte-Cafe\\udfff": "v"}}]}',
    "lone surrogate in context value": b'{"events": [{"event": "Gym", "context": {"k": "SECRET-Mitte-Cafe\\udc80"}}]}',
    "lone surrogate in text": b'{"events": [{"event": "Gym", "text": "SECRET-Mitte-Cafe\\ud83d"}]}',
    "far future": b'{"events": [{"event": "SECRET-Mitte-Cafe", "timestamp": "9999-12-31T23:00:00-05:00"}]}',
    "before 1970": b'{"events": [{"event": "SECRET-Mitte-Cafe", "timestamp": "1969-12-31T23:00:00Z"}]}',
    "unix 1e20": b'{"events": [{"event": "SECRET-Mitte-Cafe", "timestamp": 1e20}]}',
    "Infinity": b'{"events": [{"event": "SECRET-Mitte-Cafe", "timestamp": Infinity}]}',
    "NaN": b'{"events": [{"event": "SECRET-Mitte-Cafe", "timestamp": NaN}]}',
    "deep nesting": b'{"events": [{"event": "SECRET-Mitte-Cafe", "context": ' + b"[" * 20_000 + b"]" * 20_000 + b"}]}",
    "second event bad": b'{"events": [{"event": "Gym"}, {"event": "SECRET-Mitte-Cafe", "timestamp": "0001-01-01T00:00:00"}]}',
    "surrogate in chat": b'{"messages": [{"role": "user", "content": "SECRET-Mitte-Cafe\\ud800"}]}',
}


@pytest.fixture
def server_log(capfd):
    """Every record any logger of the server emits, plus what reaches the process's stderr/stdout."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield lambda: "\n".join(records) + "\n".join(capfd.readouterr())
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_422_stores_nothing_and_logs_no_value(live_api, server_log, case):
    url, token, assistant = live_api
    before = assistant.count()
    path = "/chat/completions" if "chat" in case else "/events"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        r = c.post(path, content=BAD_BODIES[case], headers={"content-type": "application/json"})
        assert r.status_code == 422, (case, r.status_code, r.text)
        body = r.json()
        assert "detail" in body or "error" in body
        assert "input" not in str(body) and "\\ud800" not in r.text
        assert c.get("/privacy/budget").status_code == 200  # the server is still up
    assert assistant.count() == before
    log = server_log()
    assert SECRET not in log, log


def test_refusal_names_the_field(live_api):
    url, token, _ = live_api
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        r = c.post("/events", content=BAD_BODIES["far future"], headers={"content-type": "application/json"})
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "events", 0, "timestamp"] and "out of range" in err["msg"]
        r = c.post("/events", content=BAD_BODIES["lone surrogate in text"], headers={"content-type": "application/json"})
        assert r.json()["detail"][0]["loc"] == ["body", "events", 0, "text"]
        r = c.get("/suggestions", params={"at": "9999-12-31T23:00:00-05:00"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "at"]


def test_unexpected_error_is_a_500_without_values_in_the_log(server_log):
    """The last line of defence around the app: an exception nobody expected logs only its type and place."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from personal.server import NoValuesInLogs

    async def buggy(request):
        body = await request.body()
        raise RuntimeError(f"bug while handling {body.decode()}")

    # placed as create_app places it: a user middleware, inside Starlette's own error middleware
    app = Starlette(routes=[Route("/v1/events", buggy, methods=["POST"])], middleware=[Middleware(NoValuesInLogs)])
    with TestClient(app) as client:
        r = client.post("/v1/events", content=SECRET.encode())
    assert r.status_code == 500 and SECRET not in r.text and r.json()["error"]["type"] == "InternalError"
    log = server_log()
    assert "RuntimeError" in log and SECRET not in log, log
