"""Using an adapter: ``suggest`` the next events, ``ask`` a question in the owner's context.

``suggest`` builds the moment's context with ``context_text`` (the one serialisation) from the
events before ``at`` and ranks the adapter's label space. ``ask`` answers through the grounded
answer path (personal/answers.py): the question is understood, the facts are computed from the
owner's events (and their personal model for "what next"), the answer is phrased from them and
checked, and it comes back through the provenance API: a visible AI-generated label and a
manifest signed with the device key that names the facts (a watermark where the model wrote it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from personal.examples import DAYS, context_text, part_of_day
from personal.models import CAUSAL, BaseModel
from personal.personalize import load_adapter
from personal.training import TrainingError, wrap

if TYPE_CHECKING:
    from personal.adapter import Adapter
    from personal.habit_predictor import HabitChoice
    from personal.vault import Event, Vault


@dataclass
class Suggestions:
    """The top-k next events at ``at`` with probabilities, which predictor ranked them, and its privacy line."""

    at: datetime
    items: list[tuple[str, float]]
    privacy: str = ""
    predictor: str = "lora"  # the one actually used (``combined`` without an adapter falls back to ``habit``)

    def line(self) -> str:
        """E.g. ``Tue 08:10 — Coffee Shop 0.62, Subway 0.21``."""
        when = f"{DAYS[self.at.weekday()]} {self.at:%H:%M}"
        if not self.items:
            return f"{when} — nothing to suggest yet (no events before this time)"
        return f"{when} — " + ", ".join(f"{lab} {p:.2f}" for lab, p in self.items)


def _utc_key(ts: datetime) -> datetime:
    # Same ordering rule as the vault: naive timestamps order as if UTC.
    return ts if ts.tzinfo is None else ts.astimezone(timezone.utc).replace(tzinfo=None)


def history_before(events: Sequence["Event"], at: datetime) -> list["Event"]:
    """The events strictly before ``at`` (chronological)."""
    key = _utc_key(at)
    return [e for e in events if _utc_key(e.timestamp) < key]


def base_name(base: "BaseModel | str") -> str:
    """The name a base's adapter is stored under: a loaded base's name, a folder's resolved path, or the name."""
    if not isinstance(base, str):
        return base.name
    return str(Path(base).expanduser().resolve()) if Path(base).expanduser().is_dir() else base


def suggest(vault: "Vault", profile: str, base: BaseModel, at: datetime | None = None, k: int = 5,
            context: Mapping[str, str] | None = None) -> Suggestions:
    """Top-``k`` next events for ``profile`` at ``at`` (default: now, local time) from the owner's adapter."""
    from personal.habits import top_k

    at = at or datetime.now().astimezone()
    labels, probs, label = _adapter_probs(vault, profile, base, at, context)
    return Suggestions(at, top_k(labels, probs, k), label, "lora")


def _adapter_probs(vault: "Vault", profile: str, base: BaseModel, at: datetime,
                   context: Mapping[str, str] | None) -> tuple[list[str], Any, str]:
    """The adapter's labels, their probabilities at ``at`` and its privacy label (ArtefactNotFound without one)."""
    adapter = load_adapter(vault, profile, base)
    hist = adapter.meta.get("history", 3)
    events = history_before(vault.events(profile), at)
    text = context_text(events[-hist:], at, dict(context or {}), k=hist)
    pm = wrap(base, adapter.lora)
    pm.load_adapter(adapter)
    label = "NON-PRIVATE adapter" if adapter.meta.get("non_private") else (
        f"DP adapter (record-level epsilon {adapter.meta.get('epsilon', float('nan')):.3g}, "
        f"delta {adapter.meta.get('delta')}, trained on this device)")
    return list(pm.labels), pm.predict_proba([text])[0], label


def habit_probs(vault: "Vault", profile: str, at: datetime) -> tuple[list[str], Any, str]:
    """The habit predictor's candidates, their probabilities at ``at`` and its privacy line (on the device).

    The simulations' on-device choice (``personal.habit_predictor.next_event_probs``) with every event
    before ``at`` as the training events: a device that took part in a federated run keeps the habit
    scorer's shared weights and the federation's usefulness check as a vault artefact
    (``personal.habits.ARTEFACT_KIND``). It ranks with the weights if the check kept them and it has
    more than FEW_EVENTS events; otherwise, and without weights, with its own best counting. The
    privacy line says which. Either way nothing is released here.
    """
    from personal.errors import ArtefactNotFound
    from personal.habit_predictor import next_event_probs
    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, check_vocabulary, weights_from_bytes

    events = history_before(vault.events(profile), at)
    try:
        data, meta = vault.get_artefact(profile, ARTEFACT_KIND, ARTEFACT_NAME)
    except ArtefactNotFound:
        names, probs, choice = next_event_probs(events, at)
        return names, probs, _habit_line(choice, None, len(events))
    weights, vocab = weights_from_bytes(data)
    check_vocabulary(vocab, {e.event for e in events})
    eps = meta.get("epsilon")
    how = f"user-level ε {eps:.2f}" if isinstance(eps, (int, float)) else "NON-PRIVATE"
    if not (meta.get("check") or {}).get("kept", True):  # no verdict stored (weights from before the check): used
        names, probs, choice = next_event_probs(events, at)
        return names, probs, _habit_line(choice, how, len(events), check_failed=True)
    names, probs, choice = next_event_probs(events, at, weights, vocab)
    return names, probs, _habit_line(choice, how, len(events))


def _habit_line(choice: "HabitChoice", how: str | None, n_events: int, check_failed: bool = False) -> str:
    """The habit predictor's privacy line: which part ranked (shared scorer or own counts, and which) and why."""
    from personal.habit_predictor import FEW_EVENTS

    if choice.part == "scorer":
        return (f"own habit counts ranked by the federated habit scorer's shared weights ({how}, learnt with "
                "DP-FedAvg; the federation's usefulness check found them better than counting on its population); "
                "the counts never left this device")
    own = f"own habit counts on this device (counting predictor {choice.counting.replace('_', ' ')}"
    why = ("the federation's usefulness check did not find the shared weights "
           f"({how}) better than counting on its population" if check_failed else
           {"no weights": "no federated shared weights in this vault",
            "few events": f"only {n_events} events (≤ {FEW_EVENTS}): the shared weights ({how}) are not used"}[choice.reason])
    return f"{own}; {why}; nothing released)"


def suggest_from_counts(vault: "Vault", profile: str, at: datetime | None = None, k: int = 5) -> Suggestions:
    """Top-``k`` next events by the habit predictor (``habit_probs``): no model, no privacy cost, no ledger record."""
    from personal.habits import top_k

    at = at or datetime.now().astimezone()
    names, probs, label = habit_probs(vault, profile, at)
    return Suggestions(at, top_k(names, probs, k), label, "habit")


def suggest_with(vault: "Vault", profile: str, base: "BaseModel | str", at: datetime | None = None, k: int = 5,
                 context: Mapping[str, str] | None = None, predictor: str | None = None) -> Suggestions:
    """Top-``k`` next events by ``predictor`` (None: ``personal.habits.DEFAULT_PREDICTOR``).

    ``habit``: ``habit_probs``. ``lora``: the owner's adapter on ``base`` (ArtefactNotFound without
    one). ``combined``: habit log-probabilities + COMBINE_WEIGHT x the adapter's, over the union of
    their candidates (``personal.habits.combined_scores``); without an adapter it falls back to
    ``habit`` and says so in the privacy line. ``base`` is a loaded base or its name; a name is
    loaded only when an adapter is used.
    """
    from personal.habits import check_predictor, top_k

    name = check_predictor(predictor)
    at = at or datetime.now().astimezone()
    load = _once(base)
    if name == "lora":
        return suggest(vault, profile, load(), at, k, context)
    names, probs, label = habit_probs(vault, profile, at)
    if name == "combined":
        model = base_name(base)
        if _has_adapter(vault, profile, model):
            return _combined(vault, profile, load(), at, k, context, (names, probs, label))
        label = f"combined fell back to habit: no adapter for {model} yet (run `homebody personalize`); {label}"
    return Suggestions(at, top_k(names, probs, k) if len(names) else [], label, "habit")


def default_use(vault: "Vault", profile: str, model: str) -> str:
    """One line: what ``suggest`` ranks with by default for ``profile`` (said after ``homebody personalize``)."""
    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, DEFAULT_PREDICTOR

    shared = (ARTEFACT_KIND, ARTEFACT_NAME) in vault.list_artefacts(profile)
    habit = ("your habit counts ranked by the federation's shared weights stored in this vault where they do at "
             "least as well as your own best counting (else that)" if shared
             else "your own habit counts (no federated shared weights in this vault)")
    adapter = f"the adapter for {model}" if _has_adapter(vault, profile, model) else f"an adapter for {model} (none yet)"
    what = {"habit": habit, "lora": adapter, "combined": f"{habit} combined with {adapter}"}[DEFAULT_PREDICTOR]
    return (f"`homebody suggest` ranks by default with predictor {DEFAULT_PREDICTOR}: {what}; "
            "--predictor habit, lora or combined chooses")


def _has_adapter(vault: "Vault", profile: str, model: str) -> bool:
    from personal.personalize import ADAPTER

    return (ADAPTER, model) in vault.list_artefacts(profile)


def _combined(vault: "Vault", profile: str, base: BaseModel, at: datetime, k: int,
              context: Mapping[str, str] | None, habit: tuple[list[str], Any, str]) -> Suggestions:
    """habit log-probabilities + COMBINE_WEIGHT x the adapter's log-probabilities over the union of candidates."""
    import numpy as np

    from personal.habits import combined_scores, floor_unscored, top_k

    names, probs, habit_label = habit
    labels, lora, lora_label = _adapter_probs(vault, profile, base, at, context)
    seen = set(names)
    union = list(names) + [lab for lab in labels if lab not in seen]
    h = dict(zip(names, np.log(np.clip(probs, 1e-300, None))))
    p = dict(zip(labels, np.asarray(lora, dtype=float)))
    habit_lp = floor_unscored(np.array([h.get(n, np.nan) for n in union]))
    z = combined_scores(habit_lp, np.array([p.get(n, 0.0) for n in union]))
    q = np.exp(z - z.max())
    return Suggestions(at, top_k(union, q / q.sum(), k), f"habit: {habit_label}; adapter: {lora_label}", "combined")


def habit_summary(events: Sequence["Event"], top: int = 3, recent: int = 5) -> str:
    """A compact, deterministic summary of habits: most frequent events per weekday and part of day."""
    if not events:
        return "No habits recorded yet."
    slots: dict[tuple[int, str], Counter] = {}
    for e in events:
        ts = e.timestamp.replace(tzinfo=None)
        slots.setdefault((ts.weekday(), part_of_day(ts.hour)), Counter())[e.event] += 1
    lines = []
    for (day, part), counts in sorted(slots.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        common = ", ".join(f"{ev} ({n}x)" for ev, n in counts.most_common(top))
        lines.append(f"{DAYS[day]} {part}: {common}")
    overall = ", ".join(ev for ev, _ in Counter(e.event for e in events).most_common(top))
    last = "; ".join(f"{e.event} ({DAYS[e.timestamp.weekday()]} {e.timestamp:%H:%M})" for e in events[-recent:])
    return f"Most frequent overall: {overall}.\n" + "\n".join(lines) + f"\nMost recent: {last}."


@dataclass
class Answer:
    """A labelled answer (``labelled`` is provenance's ``LabelledText``) and its speed.

    ``grounded`` says how it was made (habit type, facts, template or model phrasing);
    ``new_tokens`` counts the tokens the language model generated (0 for a templated answer).
    """

    labelled: Any
    new_tokens: int
    seconds: float
    used_adapter: bool
    notes: list[str] = field(default_factory=list)
    grounded: Any = None

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def ask(vault: "Vault", profile: str, question: str, base: "BaseModel | str", *,
        max_new_tokens: int = 48, phrasing: str = "template", now: datetime | None = None,
        seed: int | None = None) -> Answer:
    """Answer ``question`` from the owner's events (personal.answers: facts → phrasing → check → label).

    ``base`` is the causal base, or its name: a name is loaded only when the model is needed
    (chit-chat, ``phrasing="model"``, or "what next" when the owner has an adapter on it). The answer
    carries the visible label and a manifest, signed with the vault's device key, naming the facts.
    """
    from personal.answers import AnswerConfig, Owner, prepare, respond
    from personal.errors import ProfileNotFound

    config = AnswerConfig(phrasing=phrasing, max_new_tokens=max_new_tokens)
    get_base = _once(base)
    name = base_name(base)
    try:
        events = vault.events(profile)
    except ProfileNotFound:
        events = []
    owner = Owner(events)
    draft = prepare(question, owner, now=now, suggestions=lambda: _owner_suggestions(vault, profile, name, get_base, now))
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    out = respond([draft], vault.signing_key(), config=config, vocabulary=owner.vocabulary,
                  load_model=lambda: _chat_model(vault, profile, get_base()))[0]
    return Answer(out.labelled, out.new_tokens, out.seconds, out.used_adapter, list(out.notes), out)


def _once(base: "BaseModel | str") -> "Callable[[], BaseModel]":
    """A loader that loads a named base at most once (a loaded base is returned as it is)."""
    if not isinstance(base, str):
        return lambda: base
    cache: list = []

    def load() -> "BaseModel":
        from personal.models import load_base

        if not cache:
            cache.append(load_base(base))
        return cache[0]
    return load


def _owner_suggestions(vault: "Vault", profile: str, model: str, get_base: "Callable[[], BaseModel]",
                       now: datetime | None) -> Any:
    """The personal model's next events, or None when the owner has no adapter on this base."""
    from personal.errors import ArtefactNotFound, ProfileNotFound

    try:
        if not _has_adapter(vault, profile, model):
            return None
        return suggest(vault, profile, get_base(), now, k=3)
    except (ArtefactNotFound, ProfileNotFound, TrainingError):
        return None


def _chat_model(vault: "Vault", profile: str, base: BaseModel) -> tuple[BaseModel, str | None]:
    """The causal base with the owner's adapter loaded (or every adapter cleared), and its hash."""
    from personal.errors import ArtefactNotFound, ProfileNotFound

    if base.kind != CAUSAL:
        raise TrainingError(f"ask needs a causal (generative) base such as smollm2-135m, not {base.name}")
    try:
        adapter = load_adapter(vault, profile, base)
    except (ArtefactNotFound, ProfileNotFound):
        adapter = None
    return base, use_adapter(base, adapter)


def use_adapter(base: "BaseModel", adapter: "Adapter | None") -> str | None:
    """Load ``adapter`` into ``base`` for the next generation and return its SHA-256; with None,
    clear every adapter loaded earlier (it must not leak into this answer) and return None."""
    if adapter is None:
        for pm in base.wrapped.values():
            pm.clear()
        return None
    pm = wrap(base, adapter.lora)
    pm.load_adapter(adapter)
    return adapter.sha256()
