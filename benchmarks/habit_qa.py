"""Issue 15, acceptance 1: grounded habit answers — exact-answer accuracy, hallucinations, refusals, latency.

Questions are generated from phrasing templates (benchmarks/habit_qa_phrasings_dev.py, which the
question understanding was built on, and benchmarks/habit_qa_phrasings_heldout.py, written and
committed before it and never used to tune it) filled with each owner's own events: foursquare-nyc
owners (real check-ins) and synthetic owners (simulations/populations.py). The known answer of every
question is computed HERE, by code independent of personal/answers.py (plain loops over the events,
with the documented windows: morning 05-12, afternoon 12-18, evening 18-22, night 22-05, "around H"
within an hour of H:00, "after H" H:00-24:00, "before H" 00:00-H:00).

Metrics, per habit type and for dev vs held-out phrasings:
- exact-answer accuracy: the answer names exactly the reference's winners (every tie), the right
  weekdays and part of day for "when", the right count for "how often" — and the text says them;
- hallucination rate: the text names an event the owner never had, or a number/time/day that is not
  among the reference's facts for that question (checked against the reference, not the answer's facts);
- correct refusals on unanswerable questions (an event the owner never had, a slot without events,
  things events do not record): the reply says "I don't have enough about that yet" and names nothing;
- latency per question (understand + facts + phrasing + label + sign), p50/p95.

``--model-phrasing N`` also runs N questions (spread over the types) with the language model
rephrasing (``--model``, default smollm2-135m), reporting its latency, how often its text passed the
fact check, accuracy/hallucinations of what was returned, and the watermark detector's verdict on the
returned texts (model-phrased ones carry the watermark; templated ones do not and must not be flagged).

    .venv/bin/python -m benchmarks.habit_qa [--fsq-owners 8] [--syn-owners 6] [--seed 0]
        [--model-phrasing 0] [--model smollm2-135m] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from benchmarks.habit_qa_phrasings_dev import DEV
from benchmarks.habit_qa_phrasings_heldout import HELD_OUT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PARTS = {"morning": (300, 720), "afternoon": (720, 1080), "evening": (1080, 1320), "night": (1320, 1740)}
ABSENT = ["Aquarium", "Casino", "Ski Resort", "Planetarium", "Lighthouse", "Volcano", "Zoo", "Opera House",
          "Racetrack", "Bowling Alley", "Observatory", "Vineyard", "Submarine", "Rodeo", "Glacier"]
DONT_KNOW = "I don't have enough about that yet."
TYPES = ("overall", "time_of_day", "weekday", "after_event", "when_event", "how_often", "next", "unanswerable")


# ------------------------------------------------------------------------------------ the reference
def wall(e) -> datetime:
    return e.timestamp.replace(tzinfo=None)


def minute(t: datetime) -> int:
    return t.hour * 60 + t.minute


def in_window(m: int, win: tuple[int, int]) -> bool:
    a, b = win
    return (m >= a or m < b - 1440) if b > 1440 else a <= m < b


def day_part(h: int) -> str:
    """personal.examples.part_of_day's documented bands, re-stated."""
    for limit, name in ((5, "night"), (9, "early morning"), (12, "morning"), (14, "midday"), (18, "afternoon"),
                        (22, "evening")):
        if h < limit:
            return name
    return "night"


def best(counter: Counter) -> list:
    if not counter:
        return []
    top = max(counter.values())
    return sorted(k for k, v in counter.items() if v == top)


def after_counts(events: list, x: str) -> Counter:
    ordered = sorted(events, key=wall)
    return Counter(ordered[i + 1].event for i in range(len(ordered) - 1) if ordered[i].event == x)


def weeks_of(events: list) -> int:
    ts = sorted(wall(e) for e in events)
    return max(1, round((ts[-1] - ts[0]).total_seconds() / (7 * 86400)))


# ------------------------------------------------------------------------------------ questions
def surface(name: str, rng: random.Random) -> str:
    """How an owner might type one of their event names."""
    forms = [name, name.lower(), re.sub(r"\s*\([^)]*\)", "", name).strip().lower(), name.replace("_", " ")]
    if "/" in name:
        forms.append(name.split("/")[0].strip().lower())
    return rng.choice([f for f in forms if f])


def hour_text(h: int, rng: random.Random) -> str:
    """A clock time with am/pm or 24 h (no bare hours: the benchmark does not test that convention)."""
    h12 = h % 12 or 12
    return rng.choice([f"{h12}am" if h < 12 else f"{h12}pm", f"{h12} {'am' if h < 12 else 'pm'}", f"{h:02d}:00"])


def make_question(kind: str, template: str, events: list, rng: random.Random, all_names: set[str]) -> dict | None:
    """One question with its reference facts (winners, allowed numbers, allowed days) or None if it cannot apply."""
    counts = Counter(e.event for e in events)
    vocab = sorted(counts)
    e0 = rng.choice(events)
    t0 = wall(e0)
    fill: dict[str, str] = {}
    ref: dict[str, Any] = {"answerable": True, "days": set(), "numbers": set()}
    if kind == "overall":
        chosen = events
    elif kind in ("time_of_day", "weekday"):
        win, days = None, None
        if "{hour}" in template:
            prep = template.split("{hour}")[0].split()[-1].lower()
            h = t0.hour if prep in ("around", "at", "after") else (t0.hour + 1) % 24
            if prep == "before" and h == 0:
                return None
            if prep in ("around", "at"):
                if t0.minute >= 60:  # pragma: no cover - minutes are < 60
                    return None
                win = (h * 60 - 60, h * 60 + 60)
                win = (win[0] + 1440, win[1] + 1440) if win[0] < 0 else win
            else:
                win = (h * 60, 1440) if prep == "after" else (0, h * 60)
            fill["hour"] = hour_text(h, rng)
            ref["numbers"] |= {f"{win[0] // 60 % 24:02d}:00", f"{win[1] // 60 % 24:02d}:00", f"{h % 24:02d}:00"}
        if "{part" in template:
            part = next(p for p, w in PARTS.items() if in_window(minute(t0), w))
            fill["part"], fill["parts"] = part, part + "s"
            win = PARTS[part]
        if "{day" in template:
            days = {t0.weekday()}
            fill["day"], fill["days"] = DAYS[t0.weekday()], DAYS[t0.weekday()] + "s"
            ref["days"] |= {DAYS[t0.weekday()]}
        chosen = [e for e in events if (days is None or wall(e).weekday() in days)
                  and (win is None or in_window(minute(wall(e)), win))]
    elif kind == "after_event":
        with_next = sorted({e.event for e in events if after_counts(events, e.event)})
        if not with_next:
            return None
        x = rng.choice(with_next)
        fill["event"] = surface(x, rng)
        c = after_counts(events, x)
        ref.update(winners=best(c), numbers=ref["numbers"] | {str(v) for v in c.values()} | {str(sum(c.values()))})
    elif kind == "when_event":
        x = rng.choice(vocab)
        fill["event"] = surface(x, rng)
        times = [wall(e) for e in events if e.event == x]
        wd, parts, hours = Counter(t.weekday() for t in times), Counter(day_part(t.hour) for t in times), \
            Counter(t.hour for t in times)
        ref.update(when=({DAYS[d] for d in best(wd)}, set(best(parts))), days={DAYS[d] for d in best(wd)})
        ref["numbers"] |= {str(v) for c in (wd, parts, hours) for v in c.values()} | {str(len(times))}
        ref["numbers"] |= {f"{h:02d}:00" for h in best(hours)}
    elif kind == "how_often":
        x = rng.choice(vocab)
        fill["event"] = surface(x, rng)
        w = weeks_of(events)
        ref.update(count=counts[x])
        ref["numbers"] |= {str(counts[x]), str(w), f"{counts[x] / w:.1f}"}
    elif kind == "next":
        last = max(events, key=wall).event
        c = after_counts(events, last) or counts
        ref.update(winners=best(c))
        ref["numbers"] |= {str(v) for v in c.values()} | {str(sum(c.values())), str(len(events))}
        ref["numbers"] |= {str(v) for v in counts.values()}
    elif kind == "unanswerable":
        if "{absent}" in template:
            words = {w for n in vocab for w in re.findall(r"[a-z]+", n.lower())}
            options = [a for a in ABSENT if not set(re.findall(r"[a-z]+", a.lower())) & words]
            fill["absent"] = rng.choice(options).lower()
        ref["answerable"] = False
    if kind in ("overall", "time_of_day", "weekday"):
        if not chosen:
            ref["answerable"] = False
        else:
            c = Counter(e.event for e in chosen)
            ref.update(winners=best(c))
            ref["numbers"] |= {str(v) for v in c.values()} | {str(len(chosen))}
    question = template.format(**{k: fill.get(k, "") for k in re.findall(r"{(\w+)}", template)})
    ref["numbers"] |= set(re.findall(r"\d+(?::\d+)?", question))
    ref["days"] |= {d for d in DAYS if d.lower() in question.lower()}
    return {"type": kind, "question": question, "template": template, "ref": ref}


def questions_for(events: list, rng: random.Random, all_names: set[str]) -> list[dict]:
    """Every phrasing of every type once for this owner (plus empty-slot variants as unanswerable)."""
    out = []
    for split, book in (("dev", DEV), ("held-out", HELD_OUT)):
        for kind in TYPES:
            for template in book[kind]:
                q = make_question(kind, template, events, rng, all_names)
                if q is not None:
                    q["split"] = split
                    if not q["ref"]["answerable"] and kind != "unanswerable":
                        q["type"] = "unanswerable"  # a slot the owner has no events in
                    out.append(q)
    return out


# ------------------------------------------------------------------------------------ scoring
_NUM = re.compile(r"\d+(?::\d{2}|\.\d+)?")


def mentioned(text: str, names: list[str]) -> set[str]:
    """Event names in text (longest first, whole words), from any owner's vocabulary."""
    found = set()
    for n in names:
        pat = re.compile(r"(?<![\w])" + re.escape(n) + r"(?![\w])")
        if pat.search(text):
            found.add(n)
            text = pat.sub(" ", text)
    return found


def score(q: dict, got: Any, owner_names: set[str], global_names: list[str]) -> dict:
    """exact / hallucinated / refused for one answer."""
    ref, text = q["ref"], got.content
    names = mentioned(text, global_names)
    bad_names = names - owner_names
    numbers = set(_NUM.findall(text))
    bad_numbers = numbers - ref["numbers"]
    days = {d for d in DAYS if re.search(rf"\b{d}s?\b", text)}
    bad_days = days - ref["days"]
    refused = got.kind in ("refusal", "no_events") and text.startswith(DONT_KNOW)
    halluc = bool(bad_names or bad_numbers or bad_days)
    if not ref["answerable"]:
        return {"exact": refused and not names, "hallucinated": halluc or bool(names), "refused": refused,
                "why": sorted(bad_names | names) + sorted(bad_numbers) + sorted(bad_days)}
    ok = got.kind == "habit"
    if "winners" in ref:
        ok = ok and isinstance(got.answer, list) and set(got.answer) == set(ref["winners"]) \
            and all(w in text for w in ref["winners"])
    elif "when" in ref:
        ok = ok and isinstance(got.answer, dict) and (set(got.answer.get("weekdays", [])), set(got.answer.get("parts", []))) \
            == ref["when"]
    elif "count" in ref:
        ok = ok and isinstance(got.answer, dict) and got.answer.get("count") == ref["count"] and str(ref["count"]) in numbers
    return {"exact": ok, "hallucinated": halluc, "refused": refused,
            "why": sorted(bad_names) + sorted(bad_numbers) + sorted(bad_days)}


def pct(xs: list[bool]) -> float:
    return 100.0 * sum(xs) / len(xs) if xs else float("nan")


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ------------------------------------------------------------------------------------ running
def owners(n_fsq: int, n_syn: int, seed: int) -> tuple[list[tuple[str, list]], list[str]]:
    """(name, events) of sampled foursquare-nyc owners (>= 20 check-ins) and synthetic owners; global vocabulary."""
    from simulations.populations import SyntheticConfig, foursquare_nyc, synthetic

    rng = random.Random(seed)
    fsq = foursquare_nyc()
    pool = [d for d in fsq.devices if len(d.events) >= 20]
    chosen = [("fsq:" + d.user, d.events) for d in rng.sample(pool, n_fsq)]
    syn = synthetic(SyntheticConfig(devices=max(n_syn * 2, 4), seed=seed))
    chosen += [("syn:" + d.user, d.events) for d in [d for d in syn.devices if not d.cold_start][:n_syn]]
    names = sorted(set(fsq.labels()) | set(syn.labels()) | set(ABSENT), key=len, reverse=True)
    return chosen, names


def run(args: argparse.Namespace) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from personal.answers import Owner, prepare, respond

    signer = Ed25519PrivateKey.generate()
    rng = random.Random(args.seed)
    people, global_names = owners(args.fsq_owners, args.syn_owners, args.seed)
    all_names = set(global_names)
    rows = []
    for who, events in people:
        owner = Owner(list(events))
        now = max(wall(e) for e in events)
        for q in questions_for(list(events), rng, all_names):
            t = time.perf_counter()
            d = prepare(q["question"], owner, now=now)
            got = respond([d], signer, vocabulary=owner.vocabulary)[0]
            took = time.perf_counter() - t
            rows.append({**q, "owner": who, "seconds": took, "kind": got.kind, "content": got.content,
                         **score(q, got, set(owner.vocabulary.counts), global_names)})
    result = {"config": vars(args), "questions": len(rows), "owners": [w for w, _ in people],
              "template": summarise(rows)}
    if args.failures:
        result["failures"] = [{k: r[k] for k in ("type", "split", "owner", "question", "content", "why")}
                              for r in rows if not r["exact"] or r["hallucinated"]][: args.failures]
    if args.model_phrasing:
        result["model"] = run_model(args, people, rows, signer, global_names)
    return result


def run_model(args, people, rows, signer, global_names) -> dict:
    """The same path with the language model rephrasing, on a few questions per type."""
    import torch

    from personal.answers import AnswerConfig, Owner, prepare, respond
    from personal.models import load_base

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    base = load_base(args.model)
    load_s = time.perf_counter() - t
    from personal.provenance import derive_watermark_key, detect_watermark

    key, vocab = derive_watermark_key(signer), base.model.config.get_text_config().vocab_size
    by_owner = {w: Owner(list(ev)) for w, ev in people}
    rng = random.Random(args.seed + 1)
    per_type = max(1, args.model_phrasing // len(TYPES))
    sample = [r for kind in TYPES for r in rng.sample([r for r in rows if r["type"] == kind],
                                                        min(per_type, sum(r["type"] == kind for r in rows)))]
    out = []
    for r in sample:
        owner = by_owner[r["owner"]]
        now = max(wall(e) for e in owner.events)
        t = time.perf_counter()
        d = prepare(r["question"], owner, now=now)
        got = respond([d], signer, config=AnswerConfig("model", args.max_new_tokens), vocabulary=owner.vocabulary,
                      load_model=lambda: (base, None))[0]
        took = time.perf_counter() - t
        mark = detect_watermark(got.content, base.tokenizer, key, vocab_size=vocab).verdict
        out.append({**r, "seconds": took, "kind": got.kind, "content": got.content, "phrasing": got.phrasing,
                    "new_tokens": got.new_tokens, "watermark": mark,
                    **score(r, got, set(owner.vocabulary.counts), global_names)})
    summary = summarise(out)
    for phrasing in ("model", "template"):  # detection on model text; false positives on templated text
        summary[f"watermark_{phrasing}"] = dict(Counter(r["watermark"] for r in out if r["phrasing"] == phrasing))
    habit = [r for r in out if r["kind"] == "habit"]
    summary["model_text_passed_check_pct"] = pct([r["phrasing"] == "model" for r in habit])
    summary["mean_new_tokens"] = statistics.mean(r["new_tokens"] for r in habit) if habit else 0
    summary["load_seconds"] = load_s
    summary["model"] = args.model
    summary["examples"] = [{k: r[k] for k in ("question", "content", "phrasing")} for r in habit[:6]]
    return summary


def summarise(rows: list[dict]) -> dict:
    """Per type and overall: n, exact %, hallucination %, refusal %, p50/p95 latency (ms); dev vs held-out."""
    def block(rs: list[dict]) -> dict:
        ans = [r for r in rs if r["ref"]["answerable"]]
        una = [r for r in rs if not r["ref"]["answerable"]]
        secs = [r["seconds"] * 1000 for r in rs]
        return {"n": len(rs), "exact_pct": pct([r["exact"] for r in ans]),
                "hallucination_pct": pct([r["hallucinated"] for r in rs]),
                "correct_refusal_pct": pct([r["refused"] for r in una]), "refusal_n": len(una),
                "p50_ms": quantile(secs, 0.5), "p95_ms": quantile(secs, 0.95)}
    out: dict[str, Any] = {"all": block(rows)}
    for split in ("dev", "held-out"):
        out[split] = block([r for r in rows if r["split"] == split])
    by = defaultdict(list)
    for r in rows:
        by[r["type"]].append(r)
    out["by_type"] = {k: {"all": block(v), "held-out": block([r for r in v if r["split"] == "held-out"])}
                      for k, v in by.items()}
    return out


def _p(x: float) -> str:
    return "—" if x != x else f"{x:.1f}%"


def table(summary: dict) -> str:
    lines = ["| habit type | questions | exact answer | held-out exact | hallucination | correct refusal | p50 | p95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in TYPES:
        if kind not in summary["by_type"]:
            continue
        a, h = summary["by_type"][kind]["all"], summary["by_type"][kind]["held-out"]
        lines.append(f"| {kind} | {a['n']} | {_p(a['exact_pct'])} | {_p(h['exact_pct'])} | {_p(a['hallucination_pct'])} "
                     f"| {_p(a['correct_refusal_pct'])} | {a['p50_ms']:.1f} ms | {a['p95_ms']:.1f} ms |")
    a, d, h = summary["all"], summary["dev"], summary["held-out"]
    lines.append(f"| **all** | {a['n']} | {_p(a['exact_pct'])} (dev {_p(d['exact_pct'])}) | {_p(h['exact_pct'])} "
                 f"| {_p(a['hallucination_pct'])} | {_p(a['correct_refusal_pct'])} (held-out {_p(h['correct_refusal_pct'])}) "
                 f"| {a['p50_ms']:.1f} ms | {a['p95_ms']:.1f} ms |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fsq-owners", type=int, default=8)
    p.add_argument("--syn-owners", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-phrasing", type=int, default=0, help="questions to also answer with model phrasing")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--failures", type=int, default=30, help="list up to this many failures in the JSON")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = run(args)
    print(f"{result['questions']} questions over {len(result['owners'])} owners")
    print(table(result["template"]))
    if "model" in result:
        m = result["model"]
        print(f"\nmodel phrasing ({m['model']}, loaded in {m['load_seconds']:.1f} s): text passed the check "
              f"{m['model_text_passed_check_pct']:.0f}% of habit answers, mean {m['mean_new_tokens']:.1f} new tokens")
        print(table(m))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, default=lambda o: sorted(o) if isinstance(o, set) else str(o))


if __name__ == "__main__":
    main()
