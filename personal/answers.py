"""Grounded answers: the ONE path from an owner's question to a labelled answer about their habits.

    question → understand (which habit, which event/time/day, against the owner's own vocabulary)
             → facts (deterministic counts from the owner's events; the personal model for "next")
             → phrasing (a plain templated sentence; optionally the language model rephrases it)
             → check (every event, day, time and number in the text is in the facts, else the template)
             → provenance (visible label, signed manifest recording the facts, watermark where generated)

``homebody ask`` (personal.predict.ask), the SDK (``Assistant.ask``/``chat``) and the local API's
chat endpoint all call ``prepare`` then ``respond``. A question the facts cannot answer gets "I
don't have enough about that yet", never a guess. Chit-chat (greetings, questions not about the
owner) may go to the language model, marked so in the notes and the manifest. An empty question,
an owner without events and a question in a language the parser does not read get a clear,
labelled reply.

Habit types: ``overall`` (most frequent), ``time_of_day`` ("mornings", "around 7", "after 6pm"),
``weekday`` ("Saturday", "weekends", optionally with a part of day), ``after_event``,
``when_event``, ``how_often`` and ``next``. Parts of day and clock windows are defined in
``personal.answer_facts``. A bare hour without am/pm reads 7-11 as morning, 1-6 as afternoon/evening.

Watermark: only model-generated text carries the keyed watermark (it lives in sampled tokens);
templated answers are deterministic text built from the facts, so their manifest records the
watermark key id with ``"applied": false`` and the reason.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from personal import answer_facts as F
from personal.answer_facts import DAY_NAMES, PART_WINDOWS, Scope
from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from personal.models import BaseModel
    from personal.provenance import LabelConfig, LabelledText
    from personal.vault import Event

HABIT_TYPES = ("overall", "time_of_day", "weekday", "after_event", "when_event", "how_often", "next")
KINDS = ("habit", "refusal", "chitchat", "empty", "language", "no_events")
PHRASINGS = ("template", "model")
TEMPLATE_MODEL = "homebody-answer-templates"
# Templated text is produced by this module: its hash identifies the templates in the manifest.
TEMPLATES_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
DONT_KNOW = "I don't have enough about that yet."
CHITCHAT_NOTE = "chit-chat: answered by the language model, not from your events"


class AnswerError(HomebodyError):
    """A grounded answer was asked for with arguments it cannot use (not a bad question: those get a reply)."""


@dataclass(frozen=True)
class AnswerConfig:
    """How answers are phrased: ``template`` (instant, exact) or ``model`` (rephrased, then checked)."""

    phrasing: str = "template"
    max_new_tokens: int = 48  # model phrasing and chit-chat stay short: a sentence or two

    def __post_init__(self) -> None:
        if self.phrasing not in PHRASINGS:
            raise AnswerError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {self.phrasing!r}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise AnswerError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")


# ------------------------------------------------------------------------------------ words
_ENGLISH = set("""what where when how which who whom why do does did i my me mine am is are was were the a an to at in on
of for after before around about usually normally typically often frequently most mostly go going goes went visit
time times day days next likely tell guess predict count many much any you your it this that there should will would
can could have has been be hi hello hey thanks thank please yes no ok okay good morning evening afternoon night
week weekend weekends what's where's i'm i've""".split())
_FIRST_PERSON = {"i", "my", "me", "mine", "myself", "im", "ive", "id"}
_STOP = set("""what where when how which who whom why do does did doing done i my me mine myself am is are was were be been
being the a an to at in on of for from with by after before around about usually normally typically often frequently
regularly most mostly more go going goes went gone visit visits visited visiting head heading hit trip trips time
times day days week weeks weekly next likely tend thing things usual routine spend get up right once s m t re ve ll d
number count many much have has had there that this it you your end history show shows guess predict expect should
will would could can come comes follow follows following any idea if favourite favorite common frequent activity
activities habit habits tell place places spot spots typical normal regular then what's than out where's back
stop move""".split())
_GENERIC = {"shop", "store", "place", "spot", "center", "centre", "station", "restaurant", "joint", "service", "general",
            "other", "private", "and", "the", "of", "area", "building", "s"}
_GREETING = re.compile(r"^\s*(hi|hello|hey|yo|thanks|thank you|cheers|good (morning|afternoon|evening|night)|"
                       r"who are you|how are you|what are you|tell me a joke|bye|goodbye)\b", re.I)
_DAY_WORDS = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
_DAY_WORDS.update({name.lower() + "s": i for i, name in enumerate(DAY_NAMES)})
_DAY_WORDS.update({"mon": 0, "tue": 1, "tues": 1, "wed": 2, "thu": 3, "thur": 3, "thurs": 3, "fri": 4})
_GROUP_WORDS = {"weekend": (5, 6), "weekends": (5, 6), "weekday": (0, 1, 2, 3, 4), "weekdays": (0, 1, 2, 3, 4),
                "workday": (0, 1, 2, 3, 4), "workdays": (0, 1, 2, 3, 4)}
_PART_WORDS = {"morning": "morning", "mornings": "morning", "afternoon": "afternoon", "afternoons": "afternoon",
               "evening": "evening", "evenings": "evening", "night": "night", "nights": "night", "tonight": "night",
               "midday": "midday", "noon": "midday", "lunch": "midday", "lunchtime": "midday", "nighttime": "night"}
_HOUR_PREP = {"around": "around", "about": "around", "at": "around", "after": "after", "past": "after",
              "before": "before", "by": "before", "until": "before", "till": "before"}
_COUNT = re.compile(r"\bhow (often|many|frequently|regularly)\b|\bnumber of (times|visits|trips)\b|\bcount\b")
_WHEN = re.compile(r"\bwhen\b|\b(what|which) (time|times|day|days|hour)\b|\bday of the week\b|\btime of day\b")
_AFTER = {"after", "following", "follows", "follow", "once"}
_NEXT = re.compile(r"\bnext\b|\bpredict\b|\bupcoming\b")
_OVERALL = re.compile(r"\b(most|usual|usually|often|frequent|frequently|common|commonly|favou?rite|typical|typically|"
                      r"normal|normally|mostly|habit|habits|regular|regularly)\b|\bwhere do i go\b|\bwhat do i do\b")
_REFUSE = re.compile(r"\b(who|whom|how much|how long|why|eat|ate|eating|feel|felt|weigh)\b")


def _tokens(text: str) -> list[str]:
    """Lower-case word and number tokens ("7:30" stays one token, "7pm" becomes "7", "pm")."""
    text = text.lower().replace("’", "'").replace("a.m.", "am").replace("p.m.", "pm").replace("&", " and ")
    return re.findall(r"\d{1,2}:\d{2}|\d+(?:\.\d+)?|[a-z]+", text)


def _reads_as_english(question: str, vocabulary: "Vocabulary") -> bool:
    """At least half the words are English question words, day/time words or the owner's event words."""
    words = [w for w in re.findall(r"[^\W\d_]+", question.lower().replace("’", "'")) if len(w) > 1]
    if not words:
        return False
    known = sum(1 for w in words if w in _ENGLISH or w in _STOP or w in _DAY_WORDS or w in _GROUP_WORDS
                or w in _PART_WORDS or _singular(w) in vocabulary.words or w in ("am", "pm"))
    return known * 2 >= len(words)


def _singular(word: str) -> str:
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def _norm(text: str) -> tuple[str, ...]:
    """Tokens for matching names: '&' is 'and', '_'/'-'/'/' split words, plurals become singular."""
    return tuple(_singular(w) for w in re.findall(r"[a-z0-9]+", text.lower().replace("&", " and ")))


# ------------------------------------------------------------------------------------ vocabulary
class Vocabulary:
    """The owner's own event names and how a question may refer to them (case, plural, part, typo)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        self.aliases: list[tuple[tuple[str, ...], str]] = []
        self.words: dict[str, set[str]] = {}
        for name in self.counts:
            for alias in self._aliases(name):
                self.aliases.append((alias, name))
                for w in alias:
                    if w not in _GENERIC and w not in _STOP and len(w) >= 3:
                        self.words.setdefault(w, set()).add(name)
        self.aliases.sort(key=lambda a: -len(a[0]))

    @staticmethod
    def _aliases(name: str) -> set[tuple[str, ...]]:
        bare = re.sub(r"\([^)]*\)", " ", name)
        forms = {name, bare, name.replace("_", " ")}
        for whole in (name, bare):
            forms.update(p for p in re.split(r"\s*/\s*", whole) if p.strip())
        out = {_norm(f) for f in forms}
        whole = _norm(name)  # the full name always counts, even a generic one ("Building")
        return {a for a in out if a and (a == whole or not all(w in _GENERIC for w in a))}

    def find(self, words: Sequence[str]) -> list[tuple[str, int, int]]:
        """Events named in ``words`` (singular tokens) as (event, start, end), left to right, no overlaps."""
        taken: set[int] = set()
        found: list[tuple[str, int, int]] = []
        for alias, name in self.aliases:  # longest aliases first
            n = len(alias)
            for i in range(len(words) - n + 1):
                if tuple(words[i:i + n]) == alias and not taken & set(range(i, i + n)):
                    found.append((name, i, i + n))
                    taken |= set(range(i, i + n))
        if not found:
            found = self._partial(words)
        best: dict[tuple[int, int], str] = {}
        for name, i, j in found:  # one event per span: the owner's most frequent of the candidates
            if (i, j) not in best or self.counts[name] > self.counts[best[(i, j)]]:
                best[(i, j)] = name
        return sorted(((n, i, j) for (i, j), n in best.items()), key=lambda x: x[1])

    def _partial(self, words: Sequence[str]) -> list[tuple[str, int, int]]:
        """One distinctive word of a name ("gym" for "Gym / Fitness Center"), or a close typo of one."""
        out = []
        for i, w in enumerate(words):
            if w in _STOP or w in _GENERIC or len(w) < 3 or w.isdigit():
                continue
            names = self.words.get(w)
            if not names and len(w) >= 5:
                close = [c for c in difflib.get_close_matches(w, self.words, n=1, cutoff=0.8) if c[0] == w[0]]
                names = self.words.get(close[0]) if close else None
            for name in names or ():
                out.append((name, i, i + 1))
        return out


# ------------------------------------------------------------------------------------ understanding
@dataclass(frozen=True)
class Query:
    """What a question asks: its kind, the habit type, the event and scope it is about."""

    kind: str  # habit | refusal | chitchat | empty | language
    habit_type: str | None = None
    event: str | None = None
    scope: Scope | None = None
    reason: str = ""  # why a refusal

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the manifest."""
        scope = None
        if self.scope is not None and not self.scope.empty:
            scope = {"days": [DAY_NAMES[d] for d in self.scope.days] if self.scope.days is not None else None,
                     "window": [_clock(self.scope.start), _clock(self.scope.end)] if self.scope.start is not None else None,
                     "said": list(self.scope.time_words)}
        return {"kind": self.kind, "habit_type": self.habit_type, "event": self.event, "scope": scope}


def _clock(minute: int | None) -> str | None:
    return None if minute is None else f"{(minute // 60) % 24:02d}:{minute % 60:02d}"


def _hour_at(words: list[str], i: int) -> tuple[int, int] | None:
    """(minute of day, tokens used) of a clock time at words[i] ("7", "7 pm", "19:00", "7 o clock")."""
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?", words[i]) if i < len(words) else None
    if not m:
        return None
    h, mins, used = int(m.group(1)), int(m.group(2) or 0), 1
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if h > 24 or mins > 59:
        return None
    if nxt in ("am", "pm"):
        used += 1
        if h > 12:
            return None
        h = (h % 12) + (12 if nxt == "pm" else 0)
    elif nxt == "o" and i + 2 < len(words) and words[i + 2] == "clock":
        used += 2
        h = h + 12 if 1 <= h <= 6 else h
    elif 1 <= h <= 6 and ":" not in words[i]:  # a bare "6" is evening, not dawn; "06:00" is read as written
        h += 12
    return (h % 24) * 60 + mins, used


def _scope(words: list[str], now: datetime | None) -> tuple[Scope | None, set[int]]:
    """Days and times a question names, and the token positions they used."""
    days: set[int] = set()
    window: tuple[int, int] | None = None
    said: list[str] = []
    used: set[int] = set()
    part: str | None = None
    for i, w in enumerate(words):
        if i in used:
            continue
        if w in _DAY_WORDS or w in _GROUP_WORDS:
            days.update(_GROUP_WORDS.get(w, (_DAY_WORDS.get(w),)))
            used.add(i)
        elif w in ("today", "tonight", "tomorrow") and now is not None:
            days.add((now + timedelta(days=1 if w == "tomorrow" else 0)).weekday())
            used.add(i)
            part = "night" if w == "tonight" else part
        elif w in _PART_WORDS:
            early = i > 0 and words[i - 1] == "early" and _PART_WORDS[w] == "morning"
            part = "early morning" if early else _PART_WORDS[w]
            used.update({i, i - 1} if early else {i})
        elif w in _HOUR_PREP or w == "between":
            window, n = _clock_window(words, i)
            if window is not None:
                used.update(range(i, i + n))
                said.append(" ".join(words[i:i + n]))
        elif re.fullmatch(r"\d{1,2}(:\d{2})?", w) and i + 1 < len(words) and words[i + 1] in ("am", "pm"):
            hit = _hour_at(words, i)
            if hit is not None and window is None:
                window = (hit[0] - F.AROUND_MIN, hit[0] + F.AROUND_MIN)
                used.update(range(i, i + hit[1]))
                said.append(" ".join(words[i:i + hit[1]]))
    if part is not None and window is None:
        window = PART_WINDOWS[part]
        said.append(part)
    if not days and window is None:
        return None, used
    start, end = (None, None) if window is None else window
    if start is not None and start < 0:
        start, end = start + 1440, end + 1440
    return Scope(tuple(sorted(days)) if days else None, start, end, tuple(said)), used


def _clock_window(words: list[str], i: int) -> tuple[tuple[int, int] | None, int]:
    """The window of "around 7", "after 18:00", "before 9am", "between 7 and 9" at words[i]."""
    if words[i] == "between":
        a = _hour_at(words, i + 1)
        if a and i + 1 + a[1] < len(words) and words[i + 1 + a[1]] == "and":
            b = _hour_at(words, i + 2 + a[1])
            if b and b[0] > a[0]:
                return (a[0], b[0]), 2 + a[1] + b[1]
        return None, 0
    hit = _hour_at(words, i + 1)
    if hit is None:
        return None, 0
    t, n = hit
    kind = _HOUR_PREP[words[i]]
    win = {"around": (t - F.AROUND_MIN, t + F.AROUND_MIN), "after": (t, 1440), "before": (0, t)}[kind]
    return (win if win[1] > win[0] else None), 1 + n


def understand(question: str, vocabulary: Vocabulary, now: datetime | None = None) -> Query:
    """Which habit ``question`` asks about, resolved against the owner's vocabulary (never raises).

    Event names are found first (an owner's "lunch" is an event, not a time), then days and
    times in the other words, then the kind of question from its wording.
    """
    if not isinstance(question, str) or not re.search(r"[^\W\d_]", question):
        return Query("empty")
    words = _tokens(question)
    if not _reads_as_english(question, vocabulary):
        return Query("language")
    lower = " ".join(words)
    if _GREETING.match(question) and len(words) <= 6:
        return Query("chitchat")
    events = vocabulary.find([_singular(w) for w in words])
    in_event = {k for _, i, j in events for k in range(i, j)}
    scope, used = _scope([w if k not in in_event else "\x00" for k, w in enumerate(words)], now)
    event = events[0][0] if events else None
    after = [i for i, w in enumerate(words) if w in _AFTER and i not in used and i not in in_event]
    if _REFUSE.search(lower) and not _COUNT.search(lower):
        return Query("refusal", reason="untracked")
    if _COUNT.search(lower):
        return _needs_event("how_often", event, scope)
    if _WHEN.search(lower):
        return _needs_event("when_event", event, None)
    if after:
        later = [e for e in events if e[1] > after[0]]
        return _needs_event("after_event", later[0][0] if later else None, None)
    if _NEXT.search(lower):
        return Query("habit", "next")
    if scope is not None:
        return Query("habit", "weekday" if scope.days is not None else "time_of_day", None, scope)
    if event is not None:
        return Query("habit", "how_often", event)
    if _OVERALL.search(lower):
        return Query("habit", "overall")
    if any(w in _FIRST_PERSON for w in words):
        return Query("refusal", reason="not a habit question")
    return Query("chitchat")


def _needs_event(habit: str, event: str | None, scope: Scope | None) -> Query:
    if event is None:
        return Query("refusal", habit, reason="no matching event")
    return Query("habit", habit, event, scope)


# ------------------------------------------------------------------------------------ facts + templates
@dataclass(frozen=True)
class Facts:
    """What an answer may say: the structured facts, the templated sentence and the answer itself."""

    data: dict[str, Any]
    sentence: str
    answer: Any  # events named as the answer, {"weekdays", "parts"} for when, {"count"} for how often
    source: str = "counts"  # or "personal model"
    adapter_sha256: str | None = None


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _scope_phrase(scope: Scope | None) -> str:
    """'on Saturday mornings', 'on weekends', 'in the evenings', 'around 07:00' (from the facts)."""
    if scope is None or scope.empty:
        return ""
    part = next((w for w in scope.time_words if w in PART_WINDOWS), None)
    clock = "" if scope.start is None or part else _window_words(scope)
    if scope.days is None:
        return f"in the {part}s" if part else clock
    if scope.days == (5, 6):
        days = "weekend"
    elif scope.days == (0, 1, 2, 3, 4):
        days = "weekday"
    else:
        days = _and([DAY_NAMES[d] for d in scope.days])
    if part:
        return f"on {days} {part}s"
    return f"on {days}s" + (f" {clock}" if clock else "")


def _window_words(scope: Scope) -> str:
    start, end = scope.start, scope.end
    if start == 0:
        return f"before {_clock(end)}"
    if end == 1440:
        return f"after {_clock(start)}"
    if end - start == 2 * F.AROUND_MIN:
        return f"around {_clock(start + F.AROUND_MIN)}"
    return f"between {_clock(start)} and {_clock(end)}"


def _then(rest: Sequence[tuple[str, int]]) -> str:
    if not rest:
        return ""
    return " Then come " + _and([f"{e} ({n})" for e, n in rest]) + "."


def _ranked(counter, total_words: str, lead: str) -> tuple[str, list[str], list]:
    """'<lead> is X: 8 of <total_words>.' with ties named together, then the next ones."""
    win = F.winners(counter)
    ranked = F.top(counter, max(3, len(win)))
    n = counter[win[0]]
    rest = [(e, c) for e, c in ranked if e not in win][: max(0, 3 - len(win))]
    if len(win) == 1:
        head = f"{lead} is {win[0]}: {n} of {total_words}."
    else:
        head = f"{lead}s are {_and(win)}, tied at {n} each of {total_words}."
    return head + _then(rest), win, ranked


def compute_facts(query: Query, events: Sequence["Event"], suggestions: Any = None) -> Facts:
    """The facts for a habit query, or a refusal's facts when the events cannot answer it."""
    kind = query.habit_type
    if kind in ("overall", "time_of_day", "weekday"):
        chosen = F.in_scope(events, query.scope)
        phrase = _scope_phrase(query.scope)
        if not chosen:
            return _refusal(f"You have no events {phrase}.", "empty scope", {"scope": phrase})
        counts = F.event_counts(chosen)
        lead = "your most frequent event" if not phrase else f"{phrase[0].upper()}{phrase[1:]}, your most frequent event"
        total = f"your {len(chosen)} events" if not phrase else f"the {len(chosen)} events there"
        text, win, ranked = _ranked(counts, total, lead[0].upper() + lead[1:])
        return Facts({"type": kind, "scope": phrase or None, "total": len(chosen), "top": ranked}, text, win)
    if kind == "after_event":
        after = F.successors(events, query.event)
        if not after:
            return _refusal(f"Nothing has followed {query.event} in your events yet.", "no successor",
                            {"event": query.event})
        total = sum(after.values())
        text, win, ranked = _ranked(after, f"{total} times", f"After {query.event}, your next event")
        return Facts({"type": kind, "event": query.event, "total": total, "top": ranked}, text, win)
    if kind == "when_event":
        return _when(query.event, events)
    if kind == "how_often":
        return _how_often(query, events)
    if kind == "next":
        return _next(events, suggestions)
    raise AnswerError(f"not a habit query: {query.kind}/{kind}")


def _when(event: str, events: Sequence["Event"]) -> Facts:
    st = F.when_stats(events, event)
    days, parts, hours = F.winners(st.weekdays), F.winners(st.parts), F.winners(st.hours)
    dn = [DAY_NAMES[d] + "s" for d in days]
    d_n, p_n, h_n = st.weekdays[days[0]], st.parts[parts[0]], st.hours[hours[0]]
    each = " each" if len(days) > 1 else ""
    text = (f"{event} happens most often on {_and(dn)} ({d_n}{each} of its {st.total} times), in the "
            f"{_and(parts)} ({p_n}{' each' if len(parts) > 1 else ''} of {st.total}), most often at "
            f"{_and([f'{h:02d}:00' for h in hours])} ({h_n}{' each' if len(hours) > 1 else ''}).")
    data = {"type": "when_event", "event": event, "total": st.total,
            "weekdays": [[DAY_NAMES[d], st.weekdays[d]] for d in days], "parts": [[p, st.parts[p]] for p in parts],
            "hours": [[f"{h:02d}:00", st.hours[h]] for h in hours]}
    return Facts(data, text, {"weekdays": [DAY_NAMES[d] for d in days], "parts": parts})


def _how_often(query: Query, events: Sequence["Event"]) -> Facts:
    chosen = F.in_scope(events, query.scope)
    c = sum(1 for e in chosen if e.event == query.event)
    weeks = F.span_weeks(events)
    phrase = _scope_phrase(query.scope)
    where = f" {phrase}" if phrase else ""
    rate = f"{c / weeks:.1f}"
    text = (f"{query.event} appears {c} time{'s' if c != 1 else ''}{where} in your events, which cover about "
            f"{weeks} week{'s' if weeks != 1 else ''}: about {rate} a week.")
    data = {"type": "how_often", "event": query.event, "scope": phrase or None, "count": c, "weeks": weeks,
            "per_week": rate}
    return Facts(data, text, {"count": c})


def _next(events: Sequence["Event"], suggestions: Any) -> Facts:
    if suggestions is not None and getattr(suggestions, "items", None):
        items = [(e, round(p, 2)) for e, p in suggestions.items[:3]]
        head = f"Your personal model expects {items[0][0]} next ({items[0][1]:.2f})"
        rest = [f"{e} ({p:.2f})" for e, p in items[1:]]
        text = head + (", then " + _and(rest) if rest else "") + "."
        data = {"type": "next", "source": "personal model", "privacy": suggestions.privacy,
                "suggestions": [[e, f"{p:.2f}"] for e, p in items]}
        return Facts(data, text, [items[0][0]], "personal model")
    last = F.last_event(events)
    after = F.successors(events, last.event)
    if not after:
        counts = F.event_counts(events)
        text, win, ranked = _ranked(counts, f"your {len(events)} events", "Your most frequent event")
        text = f"Your last event was {last.event}, and nothing has followed it yet. " + text
        return Facts({"type": "next", "source": "counts", "last": last.event, "total": len(events), "top": ranked},
                     text, win)
    total = sum(after.values())
    text, win, ranked = _ranked(after, f"{total} times", f"After {last.event}, your next event")
    text = f"Your last event was {last.event}. " + text
    return Facts({"type": "next", "source": "counts", "last": last.event, "total": total, "top": ranked}, text, win)


def _refusal(detail: str, reason: str, data: dict[str, Any] | None = None) -> Facts:
    return Facts({"type": "refusal", "reason": reason, **(data or {})}, f"{DONT_KNOW} {detail}".strip(), None)


_REPLIES = {
    "empty": ("Please ask a question about your habits, for example where you go most often.", "empty question"),
    "language": ("I can only answer questions about your habits asked in English so far, and I could not "
                 "understand that one.", "language or wording not understood"),
    "no_events": (f"{DONT_KNOW} There are no events recorded for you: record some first.", "no events"),
    "untracked": (f"{DONT_KNOW} Your events record what you did and when, not that.", "not tracked"),
    "not a habit question": (f"{DONT_KNOW} I can answer what you do most, at a time or on a day, what comes after "
                             "an event, when and how often something happens, and what is likely next.",
                             "not understood"),
    "no matching event": (f"{DONT_KNOW} None of your events matches what you asked about.", "no matching event"),
    "chitchat": ("Hello! I answer questions about your own habits, for example where you go most often.",
                 "chit-chat without a model"),
}


# ------------------------------------------------------------------------------------ the check
_NUMBER = re.compile(r"\d+(?:[.:]\d+)?")
_FUNCTION = set("""a an the and or but so of to in on at by for with from as is are was were be been it its this that
these those you your yours they their there here then than also about around most more often usually
typically mostly next after before each tied times time events event week weeks day days out go goes going went
visit visits usual likely come comes looks look seems seem like just which who what when where how do does did
not no yes one answer question sure well okay ok""".split())


def check_text(text: str, facts: Facts, question: str, vocabulary: Vocabulary) -> list[str]:
    """Problems with a phrasing of ``facts``: names, days, times, numbers or words not in the facts."""
    allowed = _facts_strings(facts.data) | {facts.sentence}
    flat = " ".join(allowed)
    problems = []
    for name in vocabulary.counts:
        if name.lower() in text.lower() and name not in flat:
            problems.append(f"event {name!r} is not in the facts")
    for need in facts.answer if isinstance(facts.answer, list) else ():
        if need.lower() not in text.lower():
            problems.append(f"the answer {need!r} is missing")
    numbers = set(_NUMBER.findall(flat))
    problems += [f"number {n} is not in the facts" for n in _NUMBER.findall(text) if n not in numbers]
    said, meant = _fact_sequence(text, vocabulary), _fact_sequence(facts.sentence, vocabulary)
    if said != meant[: len(said)]:  # the facts in the template's order: no count moved to another event
        problems.append(f"facts out of order: {said[:6]} vs {meant[:6]}")
    elif len(said) < _answer_end(meant, facts.answer):  # and at least up to the answer itself
        problems.append("the answer is not stated")
    # the question's words may be reused, but not its first person: an answer speaks to the owner
    words = set(_norm(facts.sentence)) | (set(_norm(question)) - _FIRST_PERSON) | {_singular(w) for w in _FUNCTION}
    words |= {_singular(w) for w in re.findall(r"[a-z]+", flat.lower())}
    new = sorted({w for w in _norm(text) if w not in words and not w.isdigit()})
    if new:
        problems.append("words not in the facts: " + ", ".join(new[:8]))
    return problems


def _answer_end(meant: list[str], answer: Any) -> int:
    """How many of the template's facts a rephrasing must keep: up to the last one that is the answer."""
    if isinstance(answer, dict):
        need = {str(answer["count"])} if "count" in answer else set(answer.get("weekdays", []))
    else:
        need = set(answer or [])
    seen: set[str] = set()
    for i, value in enumerate(meant):
        seen |= {value} & need
        if seen >= need:
            return i + 1
    return len(meant)


def _fact_sequence(text: str, vocabulary: Vocabulary) -> list[str]:
    """Event names, numbers, clock times and weekdays in the order the text states them."""
    spans: list[tuple[int, str]] = []
    rest = text
    for name in sorted(vocabulary.counts, key=len, reverse=True):
        for m in re.finditer(r"(?<!\w)" + re.escape(name) + r"(?!\w)", rest, flags=re.I):
            spans.append((m.start(), name))
        rest = re.sub(r"(?<!\w)" + re.escape(name) + r"(?!\w)", lambda m: " " * len(m.group(0)), rest, flags=re.I)
    spans += [(m.start(), m.group(0)) for m in _NUMBER.finditer(rest)]
    spans += [(m.start(), m.group(1).capitalize()) for m in
              re.finditer(r"\b(" + "|".join(d.lower() for d in DAY_NAMES) + r")s?\b", rest, flags=re.I)]
    return [v for _, v in sorted(spans)]


def _facts_strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_facts_strings(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_facts_strings(v) for v in value)) if value else set()
    return {str(value)} if value is not None else set()


# ------------------------------------------------------------------------------------ the answer path
@dataclass
class Owner:
    """The owner's events prepared once for many questions (vocabulary built once)."""

    events: list
    vocabulary: Vocabulary = field(init=False)

    def __post_init__(self) -> None:
        self.events = sorted(self.events, key=F.local)
        self.vocabulary = Vocabulary(F.event_counts(self.events))


@dataclass
class Draft:
    """A question understood and its facts computed, before phrasing and labelling."""

    question: str
    query: Query
    facts: Facts
    convo: list[dict[str, str]] | None = None
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def kind(self) -> str:
        """habit | refusal | chitchat | empty | language | no_events."""
        return self.query.kind


@dataclass
class GroundedAnswer:
    """A labelled answer and how it was made (what the SDK's Reply and predict's Answer wrap)."""

    labelled: "LabelledText"
    kind: str
    habit_type: str | None
    phrasing: str  # template | model
    facts: dict[str, Any]
    answer: Any
    notes: tuple[str, ...]
    model: str
    used_adapter: bool
    prompt_tokens: int
    new_tokens: int
    seconds: float

    @property
    def text(self) -> str:
        """The answer with its visible label."""
        return self.labelled.text

    @property
    def content(self) -> str:
        """The answer without the label."""
        return self.labelled.content


def prepare(question: str, owner: Owner, *, now: datetime | None = None,
            suggestions: Callable[[], Any] | None = None, convo: list[dict[str, str]] | None = None) -> Draft:
    """Understand ``question`` and compute its facts (no model involved unless ``suggestions`` is called)."""
    t = time.perf_counter()
    query = understand(question, owner.vocabulary, now or datetime.now())
    if query.kind == "habit" and not owner.events:
        query = Query("no_events", query.habit_type)
    if query.kind == "habit":
        sug = None
        if query.habit_type == "next" and suggestions is not None:
            sug = suggestions()
        facts = compute_facts(query, owner.events, sug)
        if facts.answer is None:
            query = replace(query, kind="refusal", reason=facts.data["reason"])
    else:
        key = query.reason if query.kind == "refusal" else query.kind
        text, reason = _REPLIES[key] if key in _REPLIES else _REPLIES["not a habit question"]
        facts = Facts({"type": query.kind, "reason": reason}, text, None)
    facts = replace(facts, data=json.loads(json.dumps(facts.data)))  # plain JSON, as the manifest stores it
    notes = [_note(query, facts)]
    return Draft(question, query, facts, convo, notes, t)


def _note(query: Query, facts: Facts) -> str:
    if query.kind == "habit":
        return f"answered from your events ({query.habit_type}, from {facts.source})"
    if query.kind == "chitchat":
        return "not a habit question: chit-chat"
    return f"not answered from your events: {facts.data.get('reason', query.kind)}"


ModelLoader = Callable[[], "tuple[BaseModel, str | None]"]


def respond(drafts: Sequence[Draft], signer: Any, *, config: AnswerConfig = AnswerConfig(),
            load_model: ModelLoader | None = None, label: "LabelConfig | None" = None,
            vocabulary: Vocabulary | None = None) -> list[GroundedAnswer]:
    """Phrase, check and label each draft; chit-chat (and ``phrasing="model"``) use the model once per batch.

    ``load_model()`` returns the causal base (with the owner's adapter loaded, or cleared) and the
    adapter's SHA-256; it is called only when a draft needs the model. Without it chit-chat gets a
    fixed reply and model phrasing falls back to the template.
    """
    from personal.provenance import LabelConfig

    label = label or LabelConfig()
    wants = [d for d in drafts if d.kind == "chitchat" or (config.phrasing == "model" and d.kind == "habit")]
    generated: dict[int, tuple[Any, Any, int, int]] = {}
    model_name, adapter_sha = TEMPLATE_MODEL, None
    if wants and load_model is not None:
        base, adapter_sha = load_model()
        model_name = base.name
        generated = _generate(base, wants, signer, config, adapter_sha)
    elif wants:
        for d in wants:
            d.notes.append("no language model available: templated reply")
    return [_finish(d, generated.get(id(d)), signer, label, vocabulary, model_name, adapter_sha) for d in drafts]


def _finish(d: Draft, gen: Any, signer: Any, label: "LabelConfig", vocabulary: Vocabulary | None, model_name: str,
            adapter_sha: str | None) -> GroundedAnswer:
    """Check a generated phrasing against the facts (falling back to the template), then label and sign."""
    text, phrasing, spec, n_in, n_out, base_id = d.facts.sentence, "template", None, 0, 0, None
    if gen is not None:
        out, base_id, n_in, n_out = gen
        problems = _check_generated(d, out.content, vocabulary)
        if problems:
            d.notes.append("the model's phrasing failed the fact check (" + "; ".join(problems)[:200] + "): templated")
        else:
            text, phrasing, spec = out.content, "model", out.manifest.get("watermark")
            if d.kind == "chitchat":
                d.notes.append(CHITCHAT_NOTE)
    return _label(d, text, phrasing, spec, signer, label, base_id, adapter_sha, model_name, n_in, n_out)


def _check_generated(d: Draft, content: str, vocabulary: Vocabulary | None) -> list[str]:
    if not content.strip():
        return ["empty text"]
    if d.kind == "chitchat":  # no facts to keep: it must not state habits (events, days, times) at all
        bad = [n for n in (vocabulary.counts if vocabulary else {}) if n.lower() in content.lower()]
        bad += [w for w in _tokens(content) if w in _DAY_WORDS or re.fullmatch(r"\d{1,2}:\d{2}", w)]
        return [f"states {b!r}" for b in bad]
    return check_text(content, d.facts, d.question, vocabulary or Vocabulary({}))


def _label(d: Draft, text: str, phrasing: str, spec: Any, signer: Any, label: "LabelConfig", base_id: Any,
           adapter_sha: str | None, model_name: str, n_in: int, n_out: int) -> GroundedAnswer:
    from personal.provenance import Provenance, label_text
    from personal.provenance.generate import provenance_for
    from personal.provenance.watermark import derive_watermark_key, watermark_key_id

    kid = watermark_key_id(derive_watermark_key(signer))
    used_adapter = d.facts.source == "personal model" or (phrasing == "model" and adapter_sha is not None)
    if phrasing == "model":
        prov = replace(provenance_for(base_id, adapter_sha256=adapter_sha), watermark_key_id=kid)
        model = model_name
    else:
        prov = Provenance("homebody", _version(), TEMPLATE_MODEL, TEMPLATES_SHA256, d.facts.adapter_sha256, kid)
        spec = {"key_id": kid, "applied": False,
                "reason": "templated from the facts: no sampled tokens to carry a watermark"}
        model = TEMPLATE_MODEL
    record = {"question": d.question, "understood": d.query.to_dict(), "facts": d.facts.data,
              "source": d.facts.source if d.kind == "habit" else None, "phrasing": phrasing, "notes": list(d.notes)}
    lab = label_text(text, prov, signer, label, watermark=spec, answer=record)
    took = time.perf_counter() - d.started
    return GroundedAnswer(lab, d.kind, d.query.habit_type, phrasing, d.facts.data, d.facts.answer, tuple(d.notes),
                          model, used_adapter, n_in, n_out, took)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("homebody")
    except PackageNotFoundError:
        return "0+unknown"


REPHRASE = ("You reword an answer for the owner in one short sentence. Keep every name and number exactly as "
            "written. Add nothing.")
# Two worked examples (a 135M model follows examples far better than instructions); their names are
# not the owner's, and the check rejects any that leak into an answer.
REPHRASE_SHOTS = (
    ("How often do I go to the gym?", "Gym appears 12 times in your events, which cover about 6 weeks: about 2.0 a week.",
     "You went to Gym 12 times in about 6 weeks, about 2.0 a week."),
    ("Where do I go after work?", "After Office, your next event is Subway: 9 of 14 times. Then come Gym (3).",
     "After Office, you most often go to Subway: 9 of 14 times, then Gym (3)."),
)
CHITCHAT = ("You are a private assistant running on the owner's own device. Reply in one short, friendly sentence. "
            "Do not state anything about the owner's habits, places, days or times.")


def _generate(base: "BaseModel", drafts: Sequence[Draft], signer: Any, config: AnswerConfig,
              adapter_sha: str | None) -> dict[int, tuple[Any, Any, int, int]]:
    """One labelled generation batch per kind (chit-chat samples; rephrasing decodes greedily)."""
    from personal.provenance import generate_labelled_batch, provenance_for
    from personal.provenance.watermark import derive_watermark_key

    key = derive_watermark_key(signer)
    prov = provenance_for(base, adapter_sha256=adapter_sha)
    limit = int(getattr(base.model.config, "max_position_embeddings", 0) or 0) - config.max_new_tokens
    out: dict[int, tuple[Any, Any, int, int]] = {}
    for sample in (True, False):
        group = [d for d in drafts if (d.kind == "chitchat") == sample]
        if not group:
            continue
        prompts = [_fit(base.tokenizer, _prompt(d), limit) for d in group]
        texts = generate_labelled_batch(base.model, base.tokenizer, [p for p, _ in prompts], prov, signer,
                                        watermark_key=key, max_new_tokens=config.max_new_tokens, do_sample=sample)
        for d, (_, n_in), lab in zip(group, prompts, texts):
            n_out = min(len(base.tokenizer(lab.content, add_special_tokens=False)["input_ids"]), config.max_new_tokens)
            out[id(d)] = (lab, base, n_in, n_out)
    return out


def _prompt(d: Draft) -> list[dict[str, str]]:
    if d.kind == "chitchat":
        turns = [m for m in (d.convo or [{"role": "user", "content": d.question}]) if m["role"] in ("user", "assistant")]
        return [{"role": "system", "content": CHITCHAT}] + turns
    shots = [m for q, a, r in REPHRASE_SHOTS for m in ({"role": "user", "content": f"Question: {q}\nAnswer: {a}"},
                                                         {"role": "assistant", "content": r})]
    return [{"role": "system", "content": REPHRASE}, *shots,
            {"role": "user", "content": f"Question: {d.question}\nAnswer: {d.facts.sentence}"}]


def _fit(tokenizer: Any, chat: list[dict[str, str]], limit: int) -> tuple[Any, int]:
    """The prompt (chat, or a plain transcript for template-free tokenizers) within ``limit`` tokens.

    Older turns go first, then the last turn loses its beginning; a plain transcript still too
    long keeps its last ``limit`` tokens.
    """
    templated = bool(getattr(tokenizer, "chat_template", None))
    for _ in range(64):
        if templated:
            n = len(tokenizer(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)["input_ids"])
            prompt: Any = chat
        else:
            prompt = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in chat) + "\nAssistant:"
            n = len(tokenizer(prompt)["input_ids"])
        if limit <= 0 or n <= limit:
            return prompt, n
        words = chat[-1]["content"].split()
        if len(chat) > 2:
            chat = [chat[0]] + chat[2:]
        elif len(words) > 1:
            chat = chat[:-1] + [{"role": chat[-1]["role"], "content": " ".join(words[len(words) // 2:])}]
        else:
            break
    if templated:
        return prompt, n
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max(1, limit - 2):]
    return tokenizer.decode(ids), limit


def answer(question: str, events: Sequence["Event"], signer: Any, *, now: datetime | None = None,
           config: AnswerConfig = AnswerConfig(), load_model: ModelLoader | None = None,
           suggestions: Callable[[], Any] | None = None) -> GroundedAnswer:
    """One question about ``events`` answered, checked and labelled (see the module docstring)."""
    owner = Owner(list(events))
    draft = prepare(question, owner, now=now, suggestions=suggestions)
    return respond([draft], signer, config=config, load_model=load_model, vocabulary=owner.vocabulary)[0]
