"""Using an adapter: ``suggest`` the next events, ``ask`` a question in the owner's context.

``suggest`` builds the moment's context with ``context_text`` (the one serialisation) from the
events before ``at`` and ranks the adapter's label space. ``ask`` gives ``smollm2-135m`` (with the
owner's adapter if one was trained on it) a compact summary of the owner's habits drawn from the
vault, and returns the answer through the provenance API: a visible AI-generated label, a
manifest signed with the device key and a keyed watermark.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from personal.examples import DAYS, context_text, part_of_day
from personal.models import CAUSAL, BaseModel
from personal.personalize import load_adapter
from personal.training import TrainingError, wrap

if TYPE_CHECKING:
    from personal.vault import Event, Vault


@dataclass
class Suggestions:
    """The top-k next events at ``at`` with probabilities, and the adapter's privacy label."""

    at: datetime
    items: list[tuple[str, float]]
    privacy: str = ""

    def line(self) -> str:
        """E.g. ``Tue 08:10 — Coffee Shop 0.62, Subway 0.21``."""
        when = f"{DAYS[self.at.weekday()]} {self.at:%H:%M}"
        return f"{when} — " + ", ".join(f"{lab} {p:.2f}" for lab, p in self.items)


def _utc_key(ts: datetime) -> datetime:
    # Same ordering rule as the vault: naive timestamps order as if UTC.
    return ts if ts.tzinfo is None else ts.astimezone(timezone.utc).replace(tzinfo=None)


def history_before(events: Sequence["Event"], at: datetime) -> list["Event"]:
    """The events strictly before ``at`` (chronological)."""
    key = _utc_key(at)
    return [e for e in events if _utc_key(e.timestamp) < key]


def suggest(vault: "Vault", profile: str, base: BaseModel, at: datetime | None = None, k: int = 5,
            context: Mapping[str, str] | None = None) -> Suggestions:
    """Top-``k`` next events for ``profile`` at ``at`` (default: now, local time) with probabilities."""
    adapter = load_adapter(vault, profile, base)
    at = at or datetime.now().astimezone()
    hist = adapter.meta.get("history", 3)
    events = history_before(vault.events(profile), at)
    text = context_text(events[-hist:], at, dict(context or {}), k=hist)
    pm = wrap(base, adapter.lora)
    pm.load_adapter(adapter)
    probs = pm.predict_proba([text])[0]
    order = probs.argsort()[::-1][:k]
    label = "NON-PRIVATE adapter" if adapter.meta.get("non_private") else (
        f"DP adapter (epsilon {adapter.meta.get('epsilon', float('nan')):.3g}, delta {adapter.meta.get('delta')})")
    return Suggestions(at, [(pm.labels[i], float(probs[i])) for i in order], label)


def suggest_from_counts(vault: "Vault", profile: str, at: datetime | None = None, k: int = 5) -> Suggestions:
    """Top-``k`` next events from the owner's own habit counts only (``personal.habits``), no model.

    What a device that never federated and never trained has: nothing is released, so there is no
    privacy cost and no ledger record. (The federated habit scorer's shared weights are not stored
    on devices yet; when they are, ``suggest_from_habits`` takes them.)
    """
    from personal.habits import suggest_from_habits

    at = at or datetime.now().astimezone()
    events = history_before(vault.events(profile), at)
    return Suggestions(at, suggest_from_habits(events, at, k=k), "own habit counts on this device (nothing released)")


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
    """A labelled answer (``labelled`` is provenance's ``LabelledText``) and its speed."""

    labelled: Any
    new_tokens: int
    seconds: float
    used_adapter: bool
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def ask(vault: "Vault", profile: str, question: str, base: BaseModel, *, max_new_tokens: int = 64,
        summary_events: int = 2000, seed: int = 0) -> Answer:
    """Answer ``question`` in the owner's context with a causal base (+ their adapter if any), labelled."""
    import torch

    from personal.errors import ArtefactNotFound
    from personal.provenance import generate_labelled, provenance_for
    from personal.provenance.watermark import derive_watermark_key

    if base.kind != CAUSAL:
        raise TrainingError(f"ask needs a causal (generative) base such as smollm2-135m, not {base.name}")
    events = vault.events(profile)
    notes, adapter_sha = [], None
    try:
        adapter = load_adapter(vault, profile, base)
        pm = wrap(base, adapter.lora)
        pm.load_adapter(adapter)
        adapter_sha = adapter.sha256()
    except ArtefactNotFound:
        notes.append(f"no {base.name} adapter for {profile!r}: answering from the habit summary only")
        for pm in base.wrapped.values():  # an adapter loaded earlier must not leak into this answer
            pm.clear()
    system = ("You are a private assistant running on the owner's own device. Answer briefly from the "
              "owner's habits below.\nHabits:\n" + habit_summary(events[-summary_events:]))
    chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    signer = vault.signing_key()
    torch.manual_seed(seed)
    t = time.perf_counter()
    labelled = generate_labelled(base.model, base.tokenizer, chat, provenance_for(base, adapter_sha256=adapter_sha),
                                 signer, watermark_key=derive_watermark_key(signer), max_new_tokens=max_new_tokens)
    took = time.perf_counter() - t
    n = len(base.tokenizer(labelled.content, add_special_tokens=False)["input_ids"])
    return Answer(labelled, n, took, adapter_sha is not None, notes)
