"""The app SDK: one facade an assistant app imports to use homebody for one owner.

    from personal import Assistant

    with Assistant.open("vault.db", passphrase, profile="ana", model="tiny") as a:
        a.record({"event": "Coffee Shop", "timestamp": "2026-01-05T08:10"})
        job = a.personalize(epsilon=1.0, on_progress=print)   # background thread, budget-aware
        job.wait()                                             # re-raises BudgetExhausted etc.
        a.suggest(k=3).items                                   # [("Coffee Shop", 0.61), ...] (habit counts by default)
        reply = a.chat([{"role": "user", "content": "what do I do on Mondays?"}])
        reply.text, reply.label, reply.manifest                # labelled text + signed manifest
        a.budget(); a.forget()

It composes the library, never re-implements it: ``personal.personalize`` (check → train →
commit → sealed adapter), ``personal.predict`` (suggest), ``personal.answers`` (the one grounded
answer path: question → facts from the owner's events → phrasing → check → label, the same one
``homebody ask`` uses; model text goes through ``generate_labelled_batch``: visible label, signed
manifest, keyed watermark) and ``privacy.budget`` / ``privacy.report``.

Suggestions: ``suggest`` ranks with ``personal.habits.DEFAULT_PREDICTOR`` unless the call or the
config names another predictor (habit, lora, combined); chat's "what next" uses the adapter.

Models: ``model`` is the base the owner's adapter is trained on and ``suggest`` uses (lora, combined);
``chat_model`` is the causal base that answers. A causal ``model`` (``tiny-causal``,
``smollm2-135m``) serves both, so chat answers with the owner's adapter. An encoder ``model``
is paired with a causal partner (``tiny`` → ``tiny-causal``, ``minilm-l6`` → ``smollm2-135m``),
which answers with the owner's adapter only if one was trained on it.

Threads: every call is thread-safe. One lock guards the vault connection, one the models (their
LoRA tensors are shared state). Chat requests are queued to one worker thread that answers
concurrent requests with the same token limit together: habit questions from the facts (no
model), the ones that need the model (chit-chat, ``phrasing="model"``) in one ``generate`` call. A personalization
job runs in its own thread with its OWN vault connection and its OWN copy of the base, so
serving continues while it trains (SQLite's locking orders the writes); at most one job runs
at a time, and erasure waits for no job: it is refused while one runs, because a finishing job
would otherwise store an adapter learned from erased data.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from personal.base_identity import CHAT_PARTNER, DEFAULT_BASE, chat_partner  # noqa: F401 (CHAT_PARTNER: re-exported)
from personal.errors import ArtefactNotFound, InvalidEvent, ProfileNotFound
from personal.habits import PREDICTORS, check_predictor
from personal.training import DPConfig, TrainConfig
from personal.vault import Event, Vault, VaultConfig
from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from personal.adapter import LoraSettings
    from personal.models import BaseModel
    from personal.predict import Suggestions
    from personal.provenance import LabelledText

ROLES = ("system", "developer", "user", "assistant", "tool")
DEFAULT_PROFILE = "owner"
UNIT = "record"


class AssistantError(HomebodyError):
    """The assistant was asked something it cannot do in its current state."""


class JobRunning(AssistantError):
    """A personalization job is already running (one at a time; erasure waits for it)."""


class JobNotFound(AssistantError):
    """No job of that id exists in this process."""


class JobCancelled(AssistantError):
    """The job was cancelled before it released anything (no budget spent, no adapter stored)."""


class InvalidMessages(AssistantError, ValueError):
    """A chat was not a non-empty list of {role, content} messages with a user turn."""


@dataclass(frozen=True)
class AssistantConfig:
    """Which bases serve the owner, and how chat generates."""

    model: str = DEFAULT_BASE  # the CLI's default too (tests/test_defaults.py)
    chat_model: str | None = None  # None: ``model`` if causal, else its partner (personal.base_identity.CHAT_PARTNER)
    max_new_tokens: int = 48
    history: int = 3
    chat_batch: int = 8
    token_cap: int = 512  # no answer is longer, whatever a request asks
    phrasing: str = "template"  # habit answers: "template" (from the facts) or "model" (rephrased, then checked)
    predictor: str | None = None  # suggest's predictor: habit, lora or combined (None: personal.habits.DEFAULT_PREDICTOR)

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096 or not 1 <= self.chat_batch <= 256 or self.history < 1 \
                or not 1 <= self.token_cap <= 4096:
            raise AssistantError("max_new_tokens and token_cap must be 1..4096, chat_batch 1..256 and history >= 1")
        if self.phrasing not in ("template", "model"):
            raise AssistantError(f"phrasing must be 'template' or 'model', got {self.phrasing!r}")
        if self.predictor is not None and self.predictor not in PREDICTORS:
            raise AssistantError(f"predictor must be one of {', '.join(PREDICTORS)} or None, got {self.predictor!r}")

    @property
    def chat_name(self) -> str:
        """The base that answers chats."""
        return self.chat_model or chat_partner(self.model)


@dataclass(frozen=True)
class Reply:
    """A labelled answer: ``text`` carries the visible label, ``manifest`` is signed by the device key."""

    labelled: "LabelledText"
    model: str
    used_adapter: bool
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    seconds: float
    notes: tuple[str, ...] = ()
    grounded: Any = None  # personal.answers.GroundedAnswer: kind, habit type, facts, phrasing

    @property
    def text(self) -> str:
        """The answer with its visible AI-generated label."""
        return self.labelled.text

    @property
    def content(self) -> str:
        """The generated text without the label (for apps that render the label themselves)."""
        return self.labelled.content

    @property
    def label(self) -> str:
        """The visible label."""
        return self.labelled.label

    @property
    def manifest(self) -> dict[str, Any]:
        """The signed provenance manifest."""
        return self.labelled.manifest

    @property
    def finish_reason(self) -> str:
        """``length`` when the token limit cut the answer, else ``stop`` (OpenAI's wording)."""
        return "length" if self.completion_tokens >= self.max_new_tokens else "stop"


@dataclass(frozen=True)
class Budget:
    """One profile+unit's budget: epsilon spent (None: unbounded after a non-private release), cap, remaining."""

    profile: str
    unit: str
    spent: float | None
    cap: float
    remaining: float
    delta: float
    releases: int

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "unit": self.unit, "spent_epsilon": self.spent, "cap_epsilon": self.cap,
                "remaining_epsilon": self.remaining, "delta": self.delta, "releases": self.releases}


class Job:
    """A personalization run in a background thread: state, progress, result or error."""

    def __init__(self, profile: str) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.profile = profile
        self.state = "queued"  # queued → running → done | failed
        self.step = self.total = 0
        self.loss: float | None = None
        self.created = time.time()
        self.finished: float | None = None
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._admitted = threading.Event()  # set once the budget check passed (training started) or the job ended
        self._done = threading.Event()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next step; it then fails with ``JobCancelled`` having released nothing."""
        self._cancel.set()

    def _progress(self, step: int, total: int, loss: float) -> None:
        self.state, self.step, self.total = "running", step, total
        self.loss = None if loss != loss else float(loss)  # NaN (an empty Poisson batch) → None
        self._admitted.set()

    def _finish(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.state = "failed" if error is not None else "done"
        self.finished = time.time()
        self._admitted.set()
        self._done.set()

    @property
    def done(self) -> bool:
        """Whether the job has ended (done or failed)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; return its result or re-raise its error (e.g. ``BudgetExhausted``)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self.error is not None:
            raise self.error
        return dict(self.result or {})

    def wait_admitted(self, timeout: float | None = None) -> bool:
        """Block until training started (True) or ``timeout`` passed (False); re-raise an early error."""
        if not self._admitted.wait(timeout):
            return False
        if self.error is not None:
            raise self.error
        return True

    def to_dict(self) -> dict[str, Any]:
        """The job as plain values (the API's job body)."""
        err = None
        if self.error is not None:
            err = {"type": type(self.error).__name__, "message": str(self.error)}
            if hasattr(self.error, "remaining"):
                err["remaining_epsilon"] = self.error.remaining
        return {"id": self.id, "profile": self.profile, "state": self.state, "step": self.step, "total": self.total,
                "progress": (self.step / self.total) if self.total else 0.0, "loss": self.loss,
                "created": self.created, "finished": self.finished, "result": self.result, "error": err}


EventLike = Union[Event, Mapping[str, Any]]


@dataclass
class _ChatRequest:
    prompt: Any
    max_new_tokens: int
    future: concurrent.futures.Future
    notes: tuple[str, ...] = ()
    prompt_tokens: int = 0


class Assistant:
    """One owner's homebody: vault, personalization, suggestions, labelled chat, budget, erasure."""

    def __init__(self, vault: Vault, passphrase: str, profile: str, config: AssistantConfig = AssistantConfig()) -> None:
        if not isinstance(profile, str) or not profile.strip():
            raise AssistantError(f"profile must be a non-empty string, got {profile!r}")
        self.vault, self.profile, self.config = vault, profile, config
        self._passphrase = passphrase  # a job opens its own connection to the vault
        self._vault_lock = threading.RLock()  # order: _model_lock before _vault_lock, never the reverse
        self._model_lock = threading.RLock()
        self._submit_lock = threading.Lock()
        self._bases: dict[str, "BaseModel"] = {}
        self._train_base: "BaseModel | None" = None  # used by one job at a time
        self._jobs: dict[str, Job] = {}
        self._active: Job | None = None
        self._version = itertools.count()
        self._state = next(self._version)  # bumped when events or adapters change: invalidates the caches
        self._owner_facts: tuple[int, Any] | None = None
        self._adapter: tuple[int, Any] | None = None
        self._queue: queue.Queue[_ChatRequest | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        with self._vault_lock:
            self._signer = vault.signing_key()

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, vault_path: str | os.PathLike, passphrase: str, profile: str | None = None, model: str = AssistantConfig.model,
             **config: Any) -> "Assistant":
        """Open an existing vault for ``profile`` (default: its only profile, or ``owner`` when empty)."""
        vault = Vault.open(vault_path, passphrase)
        try:
            return cls(vault, passphrase, profile or _only_profile(vault), AssistantConfig(model=model, **config))
        except BaseException:
            vault.close()
            raise

    @classmethod
    def create(cls, vault_path: str | os.PathLike, passphrase: str, profile: str = DEFAULT_PROFILE,
               model: str = AssistantConfig.model,
               *, vault_config: VaultConfig = VaultConfig(), **config: Any) -> "Assistant":
        """Create a new vault (and its API token, see ``personal.auth``) and open it for ``profile``."""
        from personal.auth import ensure_token

        vault = Vault.create(vault_path, passphrase, vault_config)
        try:
            ensure_token(vault_path)
            return cls(vault, passphrase, profile, AssistantConfig(model=model, **config))
        except BaseException:
            vault.close()
            raise

    def close(self) -> None:
        """Stop the chat worker, cancel a running job (nothing is released), close the vault."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
        if self._active is not None:
            self._active.cancel()
            self._active._done.wait()
        with self._vault_lock:
            self.vault.close()

    def __enter__(self) -> "Assistant":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The vault file."""
        return self.vault.path

    def _bump(self) -> None:
        self._state = next(self._version)

    def _base(self, name: str) -> "BaseModel":
        """A base loaded once per assistant (call with ``_model_lock`` held)."""
        from personal.models import load_base

        if name not in self._bases:
            self._bases[name] = load_base(name)
        return self._bases[name]

    # ---------------------------------------------------------------- events
    def record(self, events: EventLike | Iterable[EventLike]) -> int:
        """Store one event or several (an ``Event`` or a mapping with event, timestamp, context, text)."""
        batch = [events] if isinstance(events, (Event, Mapping)) else list(events)
        parsed = []
        for i, item in enumerate(batch):  # all or nothing: any refusal names the event and stores none
            try:
                parsed.append(self._event(item))
            except InvalidEvent as exc:
                raise InvalidEvent(f"event {i}: {exc}" if len(batch) > 1 else str(exc)) from None
        with self._vault_lock:
            added = self.vault.add_events(parsed)
        self._bump()
        return added

    def _event(self, item: EventLike) -> Event:
        if isinstance(item, Event):
            if item.user != self.profile:
                raise InvalidEvent(f"this assistant records for profile {self.profile!r}, not {item.user!r}")
            return item
        if not isinstance(item, Mapping):
            raise InvalidEvent(f"an event is an Event or a mapping, got {type(item).__name__}")
        unknown = set(item) - {"event", "timestamp", "context", "text", "user"}
        if unknown:
            raise InvalidEvent(f"unknown event field(s): {', '.join(sorted(unknown))}")
        if item.get("user", self.profile) != self.profile:
            raise InvalidEvent(f"this assistant records for profile {self.profile!r}, not another one")
        when = item.get("timestamp")
        if when is None:
            when = datetime.now().astimezone()
        elif not isinstance(when, datetime):
            from personal.events_io import parse_timestamp

            try:
                when = parse_timestamp(when)
            except ValueError as exc:
                raise InvalidEvent(f"timestamp: {exc}") from None
        context = item.get("context") or {}
        if not isinstance(context, Mapping):
            raise InvalidEvent(f"context must be a mapping of strings, got {type(context).__name__}")
        return Event(self.profile, when, item.get("event"), dict(context), item.get("text"))  # the vault's one check

    def count(self) -> int:
        """How many events the owner has stored."""
        with self._vault_lock:
            return self.vault.count(self.profile) if self.vault.has_profile(self.profile) else 0

    # ---------------------------------------------------------------- personalization
    def personalize(self, epsilon: float | None = None, *, noise_multiplier: float | None = None,
                    epochs: float = TrainConfig.epochs, batch_size: int = TrainConfig.batch_size, lr: float = TrainConfig.lr,
                    max_grad_norm: float = DPConfig.max_grad_norm, lora: "LoraSettings | None" = None,
                    non_private: bool = False, on_progress: Callable[[Job], None] | None = None,
                    background: bool = True) -> Job:
        """Train the owner's adapter with DP-LoRA within the budget; returns the ``Job``.

        ``background=True`` starts a thread and returns at once (``job.wait()`` re-raises a
        ``BudgetExhausted`` with ``.remaining``); ``background=False`` runs here and raises
        directly. ``on_progress(job)`` is called after every step. A ``noise_multiplier`` replaces
        the target epsilon (the release's epsilon is then computed, not searched for); with neither,
        the target is ``personal.training.DEFAULT_EPSILON``. Every default is the one
        ``homebody personalize`` has (``personal.personalize.release_configs``; ``lora``: the
        top layer at ``LoraSettings``' rank).
        """
        from personal.personalize import release_configs

        cfg, dp = release_configs(epsilon, noise_multiplier, non_private, epochs=epochs, batch_size=batch_size, lr=lr,
                                  max_grad_norm=max_grad_norm, lora=lora)
        with self._vault_lock:
            if self._closed:
                raise AssistantError("this assistant is closed")
            if self._active is not None and not self._active.done:
                raise JobRunning(f"personalization job {self._active.id} is still {self._active.state}; wait for it")
            job = self._active = Job(self.profile)
            self._jobs[job.id] = job
        if background:
            threading.Thread(target=self._run_job, args=(job, cfg, dp, on_progress), name=f"homebody-job-{job.id}",
                             daemon=True).start()
        else:
            self._run_job(job, cfg, dp, on_progress)
            job.wait()
        return job

    def _run_job(self, job: Job, cfg: Any, dp: Any, on_progress: Callable[[Job], None] | None) -> None:
        from personal.models import load_base
        from personal.personalize import personalize

        def progress(step: int, total: int, loss: float) -> None:
            if job._cancel.is_set():  # raised inside training: before the ledger commit, so nothing is released
                raise JobCancelled(f"job {job.id} cancelled at step {step} of {total}; nothing was released")
            job._progress(step, total, loss)
            if on_progress is not None:
                on_progress(job)

        try:
            job.state = "running"
            with Vault.open(self.path, self._passphrase) as vault:
                if self._train_base is None:  # its own copy: serving keeps its LoRA state meanwhile
                    self._train_base = load_base(self.config.model)
                base = self._train_base
                out = personalize(vault, self.profile, base, cfg, dp, history=self.config.history, progress=progress)
            result = {"model": base.name, "privacy": out.privacy_label, "epsilon": out.result.epsilon,
                      "delta": out.result.delta, "steps": out.result.steps, "non_private": out.result.non_private,
                      "adapter_sha256": out.adapter.sha256(), "labels": len(out.adapter.labels)}
        except BaseException as exc:  # surfaced through job.error / job.wait()
            job._finish(None, exc)
        else:
            self._bump()
            job._finish(result, None)
        if on_progress is not None:
            on_progress(job)

    def job(self, job_id: str) -> Job:
        """A job started by this assistant."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job {job_id!r}") from None

    # ---------------------------------------------------------------- suggest
    def suggest(self, at: datetime | None = None, k: int = 5, context: Mapping[str, str] | None = None,
                predictor: str | None = None) -> "Suggestions":
        """The top-``k`` next events at ``at`` (default now) with probabilities.

        ``predictor``: ``habit`` (habit counts, ranked by the vault's federated shared weights when
        present), ``lora`` (the owner's adapter; ``ArtefactNotFound`` without one) or ``combined``
        (both; habit alone, said in ``privacy``, until an adapter exists). None: the config's,
        else ``personal.habits.DEFAULT_PREDICTOR``. ``Suggestions.predictor`` names the one used.
        """
        from personal.predict import suggest_with

        if not isinstance(k, int) or k < 1:
            raise AssistantError(f"k must be a positive integer, got {k!r}")
        name = check_predictor(predictor if predictor is not None else self.config.predictor)
        with self._model_lock:
            base = self.config.model if name == "habit" else self._base(self.config.model)
            with self._vault_lock:
                self._require_profile()
                return suggest_with(self.vault, self.profile, base, at, k=k, context=context, predictor=name)

    def _require_profile(self) -> None:
        if not self.vault.has_profile(self.profile):
            raise ProfileNotFound(f"profile {self.profile!r} has no data yet: record events first")

    # ---------------------------------------------------------------- chat
    def ask(self, question: str, max_new_tokens: int | None = None) -> Reply:
        """Answer one question from the owner's events, labelled (an empty question gets a labelled hint)."""
        if not isinstance(question, str):
            raise InvalidMessages(f"a question is a string, got {type(question).__name__}")
        if not question.strip():  # a labelled "please ask..." reply, not an error
            return self._enqueue([{"role": "user", "content": question}], max_new_tokens).result()
        return self.chat([{"role": "user", "content": question}], max_new_tokens)

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int | None = None,
             timeout: float | None = None) -> Reply:
        """Answer a conversation (OpenAI-style messages) in the owner's context, labelled."""
        return self.submit_chat(messages, max_new_tokens).result(timeout)

    def submit_chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int | None = None) -> concurrent.futures.Future:
        """Queue a chat; the returned future resolves to a ``Reply`` (batched with concurrent chats)."""
        return self._enqueue(_check_messages(messages), max_new_tokens)

    def _enqueue(self, convo: list[dict[str, str]], max_new_tokens: int | None) -> concurrent.futures.Future:
        n = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4096:
            raise AssistantError(f"max_new_tokens must be an integer in 1..4096, got {n!r}")
        n = min(n, self.config.token_cap)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._submit_lock:  # never the vault lock: an event loop calls this and must not wait on the vault
            if self._closed:
                raise AssistantError("this assistant is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._chat_worker, name="homebody-chat", daemon=True)
                self._worker.start()
            self._queue.put(_ChatRequest(convo, n, fut))
        return fut

    def _owner(self) -> Any:
        """The owner's events prepared for answers (cached until events change)."""
        from personal.answers import Owner

        state = self._state
        if self._owner_facts is None or self._owner_facts[0] != state:
            with self._vault_lock:
                events = self.vault.events(self.profile) if self.vault.has_profile(self.profile) else []
            self._owner_facts = (state, Owner(events))
        return self._owner_facts[1]

    def _suggestions(self) -> "Suggestions | None":
        """The personal model's next events for "what next", or None without an adapter."""
        from personal.personalize import ADAPTER
        from personal.training import TrainingError

        with self._vault_lock:
            if not self.vault.has_profile(self.profile) or \
                    (ADAPTER, self.config.model) not in self.vault.list_artefacts(self.profile):
                return None
        try:
            return self.suggest(k=3, predictor="lora")
        except (ArtefactNotFound, ProfileNotFound, TrainingError):
            return None

    def _chat_model(self) -> tuple["BaseModel", str | None]:
        """The chat base with the owner's adapter loaded (or cleared), for chit-chat and model phrasing."""
        from personal.models import CAUSAL
        from personal.predict import use_adapter
        from personal.training import TrainingError

        base = self._base(self.config.chat_name)
        if base.kind != CAUSAL:
            raise TrainingError(f"chat needs a causal (generative) base such as smollm2-135m, not {base.name}")
        return base, use_adapter(base, self._chat_adapter(base))

    def _chat_adapter(self, base: "BaseModel") -> Any:
        """The owner's adapter for the chat base, or None (cached until events or adapters change)."""
        from personal.personalize import load_adapter

        state = self._state
        if self._adapter is None or self._adapter[0] != state:
            with self._vault_lock:
                try:
                    self._require_profile()
                    adapter = load_adapter(self.vault, self.profile, base)
                except (ArtefactNotFound, ProfileNotFound):
                    adapter = None
            self._adapter = (state, adapter)
        return self._adapter[1]

    def _chat_worker(self) -> None:
        pending: list[_ChatRequest] = []
        while True:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.append(item)
            while True:  # take whatever else is waiting: those are batched together
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._fail_all(pending, AssistantError("this assistant was closed"))
                    return
                pending.append(item)
            n = pending[0].max_new_tokens
            batch = [r for r in pending if r.max_new_tokens == n][: self.config.chat_batch]
            pending = [r for r in pending if r not in batch]
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                self._answer(batch, n)

    @staticmethod
    def _fail_all(requests: list[_ChatRequest], exc: BaseException) -> None:
        for r in requests:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(exc)

    def _answer(self, batch: list[_ChatRequest], max_new_tokens: int) -> None:
        """Answer a batch through the grounded path (personal.answers); the model runs once for those needing it."""
        try:
            from personal.answers import AnswerConfig, prepare, respond

            with self._model_lock:
                owner = self._owner()
                drafts = [prepare(_last_question(r.prompt), owner, suggestions=self._suggestions, convo=r.prompt)
                          for r in batch]
                out = respond(drafts, self._signer, config=AnswerConfig(self.config.phrasing, max_new_tokens),
                              load_model=self._chat_model, vocabulary=owner.vocabulary)
        except BaseException as exc:  # every caller in the batch sees the failure
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        for r, g in zip(batch, out):
            r.future.set_result(Reply(g.labelled, g.model, g.used_adapter, g.prompt_tokens, g.new_tokens, max_new_tokens,
                                      g.seconds, g.notes, g))

    # ---------------------------------------------------------------- privacy
    def budget(self) -> list[Budget]:
        """The owner's record-level and user-level budgets (spent, cap, remaining epsilon): ``ReleaseGate.status``."""
        from privacy.budget import ReleaseGate

        with self._vault_lock:
            gate = ReleaseGate(self.vault.db, signer=self.vault.signing_key())
            return [Budget(s.profile, s.unit, None if s.unbounded else s.spent, s.cap, s.remaining, s.delta, s.releases)
                    for s in gate.status(self.profile)]

    def privacy_report(self) -> dict[str, Any]:
        """The verified ledger report for the owner (``privacy.report.ledger_report``)."""
        from privacy.report import ledger_report

        with self._vault_lock:
            return ledger_report(self.vault.db, self.profile, signer=self.vault.signing_key(), names=[self.profile])

    def forget(self) -> int:
        """Erase the owner's events and artefacts and destroy their key; returns how many events went.

        Refused while a personalization job runs. The ledger keeps its records (they hold no
        personal values), so the budget already spent stays spent.
        """
        with self._model_lock:
            with self._vault_lock:
                if self._active is not None and not self._active.done:
                    raise JobRunning(f"personalization job {self._active.id} is running; erase after it ends")
                if not self.vault.has_profile(self.profile):
                    return 0
                n = self.vault.count(self.profile)
                self.vault.forget(self.profile)
                self._bump()
            for base in self._bases.values():  # no erased adapter weights stay in memory
                for pm in base.wrapped.values():
                    pm.clear()
            self._adapter = self._owner_facts = None
        return n


def _only_profile(vault: Vault) -> str:
    names = vault.profiles()
    if len(names) > 1:
        raise AssistantError(f"{vault.path} holds {len(names)} profiles ({', '.join(names)}): say which one")
    return names[0] if names else DEFAULT_PROFILE


def _text(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of parts (only text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise InvalidMessages("message content must be a string or a list of {'type': 'text', 'text': ...} parts")


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidMessages("messages must be a non-empty list of {'role', 'content'} mappings")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise InvalidMessages(f"each message needs a role among {', '.join(ROLES)}, got {m!r}"[:300])
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": _text(m.get("content") or "")})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise InvalidMessages("a chat needs at least one non-empty user message")
    return out


def _last_question(convo: list[dict[str, str]]) -> str:
    """The last user turn: what a grounded answer answers."""
    return next((m["content"] for m in reversed(convo) if m["role"] == "user"), "")


__all__ = ["Assistant", "AssistantConfig", "AssistantError", "Budget", "InvalidMessages", "Job", "JobCancelled", "JobNotFound",
           "JobRunning", "Reply"]
