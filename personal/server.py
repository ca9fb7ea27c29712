"""The local HTTP API (FastAPI + uvicorn): an ``Assistant`` behind a bearer token on 127.0.0.1.

``POST /v1/chat/completions`` speaks OpenAI's chat protocol (also ``stream: true`` as
server-sent events), so the official ``openai`` client works unchanged with
``base_url="http://127.0.0.1:PORT/v1"`` and the token as ``api_key``. Every answer carries the
visible AI-generated label in the message text and the signed manifest in the extra field
``homebody`` (``completion.model_extra["homebody"]`` in the client). Streaming sends the
labelled answer in chunks once it is generated and signed (the manifest covers the whole text),
the manifest riding on the last chunk.

Other routes: events, suggestions, personalization jobs, budget, ledger report, erasure, models.
Every route, the OpenAPI document included, needs ``Authorization: Bearer <token>`` (401
without); a body over ``max_body_bytes`` gets 413 before it is parsed; a schema mismatch gets
422; a personalization beyond the budget gets 409 with ``remaining_epsilon`` in the body. Errors
use OpenAI's shape ``{"error": {"message", "type", "code"}}`` (FastAPI's ``detail`` for 422).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from personal.auth import token_matches
from personal.habits import DEFAULT_PREDICTOR, PREDICTORS
from personal.training import DEFAULT_EPSILON, TrainConfig

if TYPE_CHECKING:
    from personal.assistant import Assistant

API_VERSION = "1.0.0"
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far above any event batch or chat an app sends
ADMISSION_TIMEOUT_S = 120.0  # how long POST /v1/personalize waits for the budget check before answering 202


# ------------------------------------------------------------------------------------ schemas
def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _sane_time(value: Optional[datetime]) -> Optional[datetime]:
    # The vault's own range rule (far-off years overflow when shifted to UTC).
    from personal.vault import timestamp_problem

    problem = None if value is None else timestamp_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Time = Annotated[Optional[datetime], AfterValidator(_sane_time)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(Strict):
    event: Annotated[Text, Field(min_length=1, max_length=200)] = Field(description="What happened, e.g. 'Coffee Shop'.")
    timestamp: Time = Field(None, description="When (ISO 8601); default now.")
    context: dict[Annotated[Text, Field(max_length=100)], Annotated[Text, Field(max_length=500)]] = Field(
        default_factory=dict, max_length=32)
    text: Optional[Annotated[Text, Field(max_length=4000)]] = None


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsOut(BaseModel):
    added: int
    total: int


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_calls...: accepted, not used
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[TextPart], None] = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI sampling options homebody does not use are accepted
    model: Text = Field("homebody", description="Any name: the server answers with its own chat model.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: Optional[int] = Field(None, ge=1, le=1024)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1024)
    stream: bool = False
    n: Optional[Literal[1]] = None


class Homebody(BaseModel):
    label: str
    manifest: dict[str, Any]
    used_adapter: bool
    notes: list[str]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    homebody: Homebody


PREDICTOR_DOC = (f"habit: the owner's habit counts, ranked by the federation's shared weights when the vault has them; "
                 f"lora: the owner's DP adapter; combined: both (habit alone, said in `privacy`, until an adapter "
                 f"exists). Default: the assistant's configured predictor, else {DEFAULT_PREDICTOR}.")


class Suggestion(BaseModel):
    event: str
    probability: float


class SuggestionsOut(BaseModel):
    at: datetime
    items: list[Suggestion]
    privacy: str
    predictor: str = Field(description="The predictor that ranked them (combined without an adapter falls back to habit).")


class PersonalizeIn(Strict):
    epsilon: float = Field(DEFAULT_EPSILON, gt=0, le=100, description="Target epsilon of this release (record level).")
    noise_multiplier: Optional[float] = Field(None, ge=0.3, le=100, description="Use this noise instead of a target epsilon.")
    epochs: float = Field(TrainConfig.epochs, gt=0, le=50)
    batch_size: int = Field(TrainConfig.batch_size, ge=1, le=512)
    non_private: bool = Field(False, description="Train WITHOUT differential privacy (spends the budget to infinity).")


class JobError(BaseModel):
    type: str
    message: str
    remaining_epsilon: Optional[float] = None


class JobOut(BaseModel):
    id: str
    profile: str
    state: Literal["queued", "running", "done", "failed"]
    step: int
    total: int
    progress: float
    loss: Optional[float]
    created: float
    finished: Optional[float]
    result: Optional[dict[str, Any]]
    error: Optional[JobError]


class BudgetOut(BaseModel):
    profile: str
    unit: Literal["record", "user"]
    spent_epsilon: Optional[float] = Field(description="null: unbounded, after a non-private release")
    cap_epsilon: float
    remaining_epsilon: float
    delta: float
    releases: int


class BudgetsOut(BaseModel):
    profile: str
    budgets: list[BudgetOut]


class ForgetOut(BaseModel):
    profile: str
    forgotten: bool
    events: int


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelsOut(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: Optional[str] = None
    remaining_epsilon: Optional[float] = None
    spent_epsilon: Optional[float] = None
    cap_epsilon: Optional[float] = None


class ErrorOut(BaseModel):
    error: ErrorBody


# ------------------------------------------------------------------------------------ errors
def _status(exc: Exception) -> int:
    from personal.assistant import InvalidMessages, JobNotFound, JobRunning
    from personal.errors import ArtefactMismatch, ArtefactNotFound, InvalidEvent, ProfileNotFound
    from personal.habits import HabitError
    from personal.training import TrainingError
    from privacy.budget import BudgetExhausted

    for kinds, code in (((BudgetExhausted, JobRunning, ArtefactNotFound, ArtefactMismatch, TrainingError, HabitError), 409),
                        ((JobNotFound, ProfileNotFound), 404), ((InvalidEvent, InvalidMessages), 422)):
        if isinstance(exc, kinds):
            return code
    return 400


def error_body(exc: Exception, status: int) -> dict[str, Any]:
    """OpenAI's error shape; a spent budget also names what remains."""
    body: dict[str, Any] = {"message": str(exc), "type": type(exc).__name__, "code": str(status)}
    if hasattr(exc, "remaining") and hasattr(exc, "cap"):
        spent = exc.spent
        body.update(remaining_epsilon=exc.remaining, spent_epsilon=None if spent == float("inf") else spent,
                    cap_epsilon=exc.cap)
    return {"error": body}


class BodyLimit:
    """ASGI middleware: answer 413 to a body over ``max_bytes`` (declared or streamed) before any parsing."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send)
        if body[:1].isspace() or body[:1] in (b"{", b"["):
            from personal.events_io import MAX_JSON_DEPTH, json_too_deep

            # json.loads recurses: a deeply nested body would raise RecursionError (a 500) while parsing.
            if json_too_deep(body.decode("utf-8", "replace"), MAX_JSON_DEPTH):
                detail = [{"loc": ["body"], "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "type": "json_too_deep"}]
                return await _send_json(send, 422, {"detail": detail})
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # a streaming response listens for the disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        await _send_error(send, 413, f"request body over the limit of {self.max_bytes} bytes", "PayloadTooLarge")


async def _send_error(send: Any, status: int, msg: str, kind: str) -> None:
    """An error in OpenAI's shape straight from the ASGI layer (the connection closes after it)."""
    await _send_json(send, status, {"error": {"message": msg, "type": kind, "code": str(status)}})


async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class NoValuesInLogs:
    """ASGI middleware: an unexpected error answers 500 and logs its type and place only.

    A traceback's messages can carry request values (pydantic puts the input in its errors),
    so none is logged; the place (file:line of the innermost frame) is enough to find the bug.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the last line of defence, by design
            import logging
            import traceback

            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            place = f"{where.filename}:{where.lineno}" if where else "?"
            logging.getLogger("homebody.api").error("internal error %s at %s on %s %s", type(exc).__name__, place,
                                                    scope.get("method", ""), scope.get("path", ""))
            if scope["type"] == "http" and not started:
                await _send_error(send, 500, f"internal error ({type(exc).__name__})", "InternalError")


def _validation_errors(exc: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` without the ``input``/``ctx`` echo: no request value is repeated or logged."""
    out = []
    for err in exc.errors():
        loc = [p.encode("utf-8", "backslashreplace").decode() if isinstance(p, str) else p for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")).encode("utf-8", "backslashreplace").decode(),
                    "type": str(err.get("type", ""))})
    return out


# ------------------------------------------------------------------------------------ app
def create_app(assistant: "Assistant | None", token: str, *, max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The API over ``assistant`` guarded by ``token`` (``assistant=None`` builds it for the OpenAPI document only)."""
    bearer = HTTPBearer(auto_error=False, description="The token in <vault>.token, created at `homebody vault init`.")

    def authorised(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if not token_matches(token, request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="homebody local API", version=API_VERSION, openapi_url=None, docs_url=None, redoc_url=None,
                  description=__doc__, dependencies=[Depends(authorised)])
    errors = {401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
              413: {"model": ErrorOut, "description": "Body over the size limit"}}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body = {"error": {"message": str(exc.detail), "type": "HTTPException", "code": str(exc.status_code)}}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, 422)

    from privacy.errors import HomebodyError

    @app.exception_handler(HomebodyError)
    async def homebody_error(request: Request, exc: HomebodyError) -> JSONResponse:
        status = _status(exc)
        return JSONResponse(error_body(exc, status), status)

    def owner() -> "Assistant":
        if assistant is None:
            raise HTTPException(503, "no assistant attached")
        return assistant

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict:
        return app.openapi()

    @app.post("/v1/chat/completions", response_model=ChatCompletion, tags=["chat"],
              responses={**errors, 200: {"content": {"text/event-stream": {}},
                                         "description": "A completion, or with stream=true server-sent chunks"}})
    async def chat_completions(req: ChatRequest) -> Any:
        """OpenAI-compatible chat: the owner's assistant answers, labelled, the manifest in `homebody`."""
        a = owner()
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        fut = a.submit_chat(messages, req.max_completion_tokens or req.max_tokens)
        reply = await asyncio.wrap_future(fut)
        cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        extra = {"label": reply.label, "manifest": reply.manifest, "used_adapter": reply.used_adapter,
                 "notes": list(reply.notes)}
        if req.stream:
            return StreamingResponse(_sse(cid, created, reply, extra), media_type="text/event-stream")
        return {"id": cid, "object": "chat.completion", "created": created, "model": reply.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
                "homebody": extra}

    @app.post("/v1/events", response_model=EventsOut, tags=["events"], responses=errors)
    def add_events(body: EventsIn) -> dict:
        """Record events of the owner (all or nothing)."""
        a = owner()
        added = a.record([e.model_dump() for e in body.events])
        return {"added": added, "total": a.count()}

    @app.get("/v1/suggestions", response_model=SuggestionsOut, tags=["events"],
             responses={**errors, 409: {"model": ErrorOut, "description": "predictor=lora and no adapter yet, or stored shared "
                                                                "habit weights that do not fit this owner"}})
    def suggestions(k: int = Query(5, ge=1, le=50), at: Annotated[Time, Query()] = None,
                    predictor: Optional[Literal[PREDICTORS]] = Query(None, description=PREDICTOR_DOC)) -> dict:
        """The top-k next events at `at` (default now), by `predictor` (default: the server's)."""
        out = owner().suggest(at, k, predictor=predictor)
        return {"at": out.at, "items": [{"event": e, "probability": p} for e, p in out.items], "privacy": out.privacy,
                "predictor": out.predictor}

    @app.post("/v1/personalize", response_model=JobOut, status_code=202, tags=["personalization"],
              responses={**errors, 409: {"model": ErrorOut, "description": "Budget exhausted (names the remaining "
                                                                            "epsilon), a job running, or too few events"}})
    def personalize(body: PersonalizeIn) -> dict:
        """Start DP personalization as a job once the budget check passed; poll `GET /v1/jobs/{id}`."""
        job = owner().personalize(None if body.non_private else body.epsilon, noise_multiplier=body.noise_multiplier,
                                  epochs=body.epochs,
                                  batch_size=body.batch_size, non_private=body.non_private)
        job.wait_admitted(ADMISSION_TIMEOUT_S)  # raises BudgetExhausted → 409 naming what remains
        return job.to_dict()

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["personalization"],
             responses={**errors, 404: {"model": ErrorOut, "description": "No such job"}})
    def get_job(job_id: str) -> dict:
        """A personalization job's state and progress."""
        return owner().job(job_id).to_dict()

    @app.get("/v1/privacy/budget", response_model=BudgetsOut, tags=["privacy"], responses=errors)
    def budget() -> dict:
        """Epsilon spent, cap and remaining, per unit (record: on-device training; user: federation)."""
        a = owner()
        return {"profile": a.profile, "budgets": [b.to_dict() for b in a.budget()]}

    @app.get("/v1/privacy/report", tags=["privacy"], responses=errors)
    def report() -> dict:
        """The owner's verified ledger report: every release, budgets, verification."""
        return owner().privacy_report()

    @app.delete("/v1/profile", response_model=ForgetOut, tags=["privacy"],
                responses={**errors, 409: {"model": ErrorOut, "description": "A personalization job is running"}})
    def forget() -> dict:
        """Erase the owner's events and artefacts and destroy their key (the ledger keeps no personal values)."""
        a = owner()
        n = a.forget()
        return {"profile": a.profile, "forgotten": n > 0, "events": n}

    @app.get("/v1/models", response_model=ModelsOut, tags=["chat"], responses=errors)
    def models() -> dict:
        """The chat model (OpenAI's model list shape)."""
        a = owner()
        names = dict.fromkeys([a.config.chat_name, a.config.model])
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "homebody"} for n in names]}

    app.add_middleware(NoValuesInLogs)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


async def _sse(cid: str, created: int, reply: Any, extra: dict):
    """OpenAI chat.completion.chunk events: role, the labelled text in word chunks, then the manifest."""
    def chunk(delta: dict, finish: Optional[str] = None, **more: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": reply.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    words = reply.text.split(" ")
    for i, word in enumerate(words):
        yield chunk({"content": word if i == len(words) - 1 else word + " "})
    yield chunk({}, reply.finish_reason, homebody=extra)
    yield "data: [DONE]\n\n"


def openapi_spec() -> dict:
    """The API's OpenAPI document (what ``GET /openapi.json`` serves; checked in as docs/openapi.json)."""
    return create_app(None, "x" * 43).openapi()


# ------------------------------------------------------------------------------------ running
def serve(assistant: "Assistant", token: str, host: str = "127.0.0.1", port: int = 8765, *,
          max_body_bytes: int = DEFAULT_MAX_BODY, on_ready: Any = None) -> None:
    """Run the API with uvicorn until interrupted. ``on_ready(url)`` is called once it listens."""
    server = make_server(assistant, token, host, port, max_body_bytes=max_body_bytes)
    if on_ready is not None:
        _call_when_started(server, on_ready)
    server.run()


def make_server(assistant: "Assistant", token: str, host: str = "127.0.0.1", port: int = 0, *,
                max_body_bytes: int = DEFAULT_MAX_BODY) -> Any:
    """A ``uvicorn.Server`` for the API (port 0: a free port, see ``bound_url``)."""
    import uvicorn

    app = create_app(assistant, token, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, backlog=2048)
    return uvicorn.Server(config)


def bound_url(server: Any) -> str:
    """The base URL (``http://host:port/v1``) a started server listens on."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}/v1"


def _call_when_started(server: Any, callback: Any) -> None:
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        if server.started:
            callback(bound_url(server))

    server.startup = startup


def start_in_thread(assistant: "Assistant", token: str, host: str = "127.0.0.1", port: int = 0, **kw: Any):
    """Start the API in a background thread (tests, benchmarks); returns (server, url). Stop: ``server.should_exit = True``."""
    import threading

    server = make_server(assistant, token, host, port, **kw)
    thread = threading.Thread(target=server.run, name="homebody-api", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    server.thread = thread
    return server, bound_url(server)


def write_openapi(path: str) -> None:
    """Write the OpenAPI document (sorted keys) to ``path``: ``python -m personal.server --write-openapi docs/openapi.json``."""
    from pathlib import Path

    Path(path).write_text(json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--write-openapi":
        sys.exit("usage: python -m personal.server --write-openapi docs/openapi.json")
    write_openapi(sys.argv[2])
