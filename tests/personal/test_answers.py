"""Grounded answers (personal/answers.py): understanding, facts, phrasing, the check, refusals, provenance.

Real events, real Ed25519 keys, real vaults and the tiny random models; the expected answers are
worked out by hand from the known event set below.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from personal.answers import DONT_KNOW, AnswerConfig, Facts, Owner, Vocabulary, answer, check_text, understand
from personal.provenance import DEFAULT_WORDING, verify_labelled
from personal.vault import Event

START = datetime(2026, 1, 5)  # a Monday
NOW = datetime(2026, 2, 2, 12, 0)  # the Monday after the four weeks


def known_events(user: str = "ana") -> list[Event]:
    """Four weeks of one owner (25 events), counted by hand.

    Home (private) 8: Mon-Thu 20:00 of weeks 1-2 · Park 2: Saturdays 15:00 of weeks 1-2 · Church 6: Sundays
    10:00, and Wednesdays 19:00 of weeks 3-4 · Burger Joint 3: Fridays 13:00 of weeks 2-4 · Food & Drink Shop 5:
    Saturdays 09:30, and Friday 18:00 of week 1 · Coffee Shop 1: Saturday 11:00 of week 4.
    """
    rows: list[tuple[datetime, str]] = []
    for week in range(4):
        monday = START + timedelta(weeks=week)
        if week < 2:
            rows += [(monday + timedelta(days=d, hours=20), "Home (private)") for d in range(4)]
            rows.append((monday + timedelta(days=5, hours=15), "Park"))
        else:
            rows.append((monday + timedelta(days=2, hours=19), "Church"))
        if week > 0:
            rows.append((monday + timedelta(days=4, hours=13), "Burger Joint"))
        rows.append((monday + timedelta(days=6, hours=10), "Church"))
        rows.append((monday + timedelta(days=5, hours=9, minutes=30), "Food & Drink Shop"))
    rows.append((START + timedelta(days=4, hours=18), "Food & Drink Shop"))
    rows.append((START + timedelta(weeks=3, days=5, hours=11), "Coffee Shop"))
    return [Event(user, t, e) for t, e in sorted(rows)]


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return known_events()


@pytest.fixture(scope="module")
def signer():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def vocab(events) -> Vocabulary:
    return Owner(events).vocabulary


def test_known_owner_is_what_the_docstring_says(events):
    from collections import Counter

    assert Counter(e.event for e in events) == {"Home (private)": 8, "Church": 6, "Food & Drink Shop": 5,
                                                "Burger Joint": 3, "Park": 2, "Coffee Shop": 1}


# ------------------------------------------------------------------------------------ understanding
@pytest.mark.parametrize("question, habit, event", [
    ("Where do I go most often?", "overall", None),
    ("what's my favourite place", "overall", None),
    ("What do I usually do on Saturday mornings?", "weekday", None),
    ("Where do I go on weekends?", "weekday", None),
    ("What do I do around 7pm?", "time_of_day", None),
    ("What do I usually do in the evenings?", "time_of_day", None),
    ("What do I usually do after church?", "after_event", "Church"),
    ("Where do I go after the burger joint?", "after_event", "Burger Joint"),
    ("When do I usually go to church?", "when_event", "Church"),
    ("What time do I go to the park?", "when_event", "Park"),
    ("How often do I go to CHURCHES?", "how_often", "Church"),
    ("How many times did I go to food and drink shops?", "how_often", "Food & Drink Shop"),
    ("how often do i go to the chruch", "how_often", "Church"),  # a typo still resolves
    ("How often am I home?", "how_often", "Home (private)"),  # "(private)" is not needed
    ("What will I do next?", "next", None),
])
def test_habit_questions_are_understood(question, habit, event, vocab):
    q = understand(question, vocab, NOW)
    assert (q.kind, q.habit_type, q.event) == ("habit", habit, event)


@pytest.mark.parametrize("question, days, window", [
    ("What do I usually do on Saturday mornings?", (5,), (5 * 60, 12 * 60)),
    ("Where do I go on weekends?", (5, 6), None),
    ("What do I do on weekdays?", (0, 1, 2, 3, 4), None),
    ("What do I do around 7?", None, (6 * 60, 8 * 60)),  # a bare 7 is morning
    ("What do I do around 6?", None, (17 * 60, 19 * 60)),  # a bare 6 is evening
    ("What do I do after 6pm?", None, (18 * 60, 24 * 60)),
    ("What do I do before 9am?", None, (0, 9 * 60)),
    ("What do I do between 7 and 9?", None, (7 * 60, 9 * 60)),
    ("What do I do at 19:30?", None, (18 * 60 + 30, 20 * 60 + 30)),
    ("What do I do at 06:00?", None, (5 * 60, 7 * 60)),  # a clock time with minutes is read as written
    ("What do I do on Sunday nights?", (6,), (22 * 60, 29 * 60)),
    ("What do I usually do tomorrow morning?", (1,), (5 * 60, 12 * 60)),  # NOW is a Monday
    ("What do I do tonight?", (0,), (22 * 60, 29 * 60)),
])
def test_days_and_times_are_resolved(question, days, window, vocab):
    q = understand(question, vocab, NOW)
    assert q.scope is not None and q.scope.days == days
    assert (None if q.scope.start is None else (q.scope.start, q.scope.end)) == window


@pytest.mark.parametrize("question, kind", [
    ("", "empty"), ("   ", "empty"), ("?!?", "empty"), ("12345", "empty"),
    ("¿Adónde voy más a menudo?", "language"), ("Onde eu vou com mais frequência?", "language"),
    ("Wo gehe ich am häufigsten hin?", "language"), ("我最常去哪里？", "language"),
    ("hello", "chitchat"), ("What's the capital of France?", "chitchat"),
    ("What is my blood pressure?", "refusal"), ("Who did I meet yesterday?", "refusal"),
    ("How often do I go to the casino?", "refusal"), ("When do I go skiing?", "refusal"),
    ("What do I do after the opera?", "refusal"),
])
def test_other_questions_are_classified(question, kind, vocab):
    assert understand(question, vocab, NOW).kind == kind


# ------------------------------------------------------------------------------------ answers
def _ok(out, signer):
    assert out.text.startswith(DEFAULT_WORDING["en"] + " ")
    assert verify_labelled(out.text, out.labelled.manifest, public_key=signer.public_key()).ok
    return out.labelled.manifest["answer"]


def test_the_two_questions_of_the_issue(events, signer):
    out = answer("Where do I go most often?", events, signer, now=NOW)
    record = _ok(out, signer)
    assert out.content == ("Your most frequent event is Home (private): 8 of your 25 events. "
                           "Then come Church (6) and Food & Drink Shop (5).")
    assert out.answer == ["Home (private)"] and record["facts"]["top"][0] == ["Home (private)", 8]
    assert record["phrasing"] == "template" and out.labelled.manifest["watermark"]["applied"] is False

    out = answer("What do I usually do on Saturday mornings?", events, signer, now=NOW)
    record = _ok(out, signer)
    assert out.content == ("On Saturday mornings, your most frequent event is Food & Drink Shop: 4 of the 5 events "
                           "there. Then come Coffee Shop (1).")
    assert record["understood"]["scope"]["days"] == ["Saturday"] and record["understood"]["habit_type"] == "weekday"


@pytest.mark.parametrize("question, content", [
    ("When do I usually go to church?",
     "Church happens most often on Sundays (4 of its 6 times), in the morning (4 of 6), most often at 10:00 (4)."),
    ("How often do I go to church?",
     "Church appears 6 times in your events, which cover about 4 weeks: about 1.5 a week."),
    ("How often do I go to church on Wednesdays?",
     "Church appears 2 times on Wednesdays in your events, which cover about 4 weeks: about 0.5 a week."),
    ("What do I do after the park?",
     "After Park, your next event is Church: 2 of 2 times."),
    ("What do I do after 6pm?",
     "After 18:00, your most frequent event is Home (private): 8 of the 11 events there. "
     "Then come Church (2) and Food & Drink Shop (1)."),
    ("What will I do next?",
     "Your last event was Church. After Church, your next events are Burger Joint and Church, tied at 2 each of "
     "5 times. Then come Home (private) (1)."),
])
def test_templated_answers_carry_exactly_the_facts(question, content, events, signer):
    out = answer(question, events, signer, now=NOW)
    _ok(out, signer)
    assert out.content == content, out.content


def test_refusals_are_honest_and_name_nothing_invented(events, signer):
    names = {e.event for e in events}
    for q in ("How often do I go to the casino?", "What do I do on Tuesday mornings?", "What's my heart rate?",
              "When do I go skiing?"):
        out = answer(q, events, signer, now=NOW)
        _ok(out, signer)
        assert out.kind == "refusal" and out.content.startswith(DONT_KNOW), out.content
        assert not any(n in out.content for n in names) and out.answer is None


def test_empty_foreign_and_eventless_get_a_labelled_reply(events, signer):
    for q, kind in (("", "empty"), ("  \n", "empty"), ("¿Adónde voy más a menudo?", "language")):
        out = answer(q, events, signer)
        _ok(out, signer)
        assert out.kind == kind and out.answer is None
    out = answer("Where do I go most often?", [], signer)
    _ok(out, signer)
    assert out.kind == "no_events" and "no events recorded" in out.content


def test_the_manifest_signs_the_facts(events, signer):
    out = answer("Where do I go most often?", events, signer, now=NOW)
    forged = {**out.labelled.manifest, "answer": {**out.labelled.manifest["answer"], "facts": {"top": [["Bar", 99]]}}}
    assert verify_labelled(out.text, forged, public_key=signer.public_key()).status == "tampered"


# ------------------------------------------------------------------------------------ the check
def test_names_with_ampersands_and_generic_words_resolve():
    vocab = Vocabulary({"Food": 3, "Food & Drink Shop": 2, "Building": 5, "Coffee Shop": 1})
    for question, event in (("How often do I go to food & drink shop?", "Food & Drink Shop"),
                            ("How often do I go to food and drink shops?", "Food & Drink Shop"),
                            ("How often do I go to the food place?", "Food"),
                            ("How many times did I go to building?", "Building")):
        assert understand(question, vocab, NOW).event == event, question


def test_check_rejects_inventions_and_keeps_faithful_rephrasings(vocab):
    facts = Facts({"type": "overall", "total": 25, "top": [["Home (private)", 8], ["Church", 6]]},
                  "Your most frequent event is Home (private): 8 of your 25 events. Then come Church (6).",
                  ["Home (private)"])
    q = "Where do I go most often?"
    assert check_text("You go to Home (private) most often: 8 of your 25 events, then Church (6).", facts, q, vocab) == []
    for bad in ("You go to Burger Joint most often: 8 of your 25 events.",  # an event not in the facts
                "You go to Home (private) most often: 9 of your 25 events.",  # a number not in the facts
                "You go to Home (private) most often, every Monday at breakfast.",  # a day and a new habit
                "You go to Church most often.",  # the answer itself is missing
                "You go to Home (private) most often: 6 of your 25 events, then Church (8).",  # counts swapped
                "I go to Home (private) most often: 8 of my 25 events."):  # the owner's voice, not an answer to them
        assert check_text(bad, facts, q, vocab), bad
    often = Facts({"type": "how_often", "event": "Church", "count": 6, "weeks": 4, "per_week": "1.5"},
                  "Church appears 6 times in your events, which cover about 4 weeks: about 1.5 a week.", {"count": 6})
    q = "How often do I go to church?"
    assert check_text("You went to Church 6 times in about 4 weeks.", often, q, vocab) == []
    assert check_text("How often do you go to church?", often, q, vocab)  # an echo of the question answers nothing


# ------------------------------------------------------------------------------------ the model paths
@pytest.fixture(scope="module")
def tiny_causal():
    from personal.models import load_base

    return load_base("tiny-causal")


def test_model_phrasing_is_checked_and_falls_back_to_the_template(events, signer, tiny_causal):
    import torch

    torch.manual_seed(0)
    out = answer("Where do I go most often?", events, signer, now=NOW, config=AnswerConfig("model", 12),
                 load_model=lambda: (tiny_causal, None))
    record = _ok(out, signer)
    assert out.new_tokens > 0 and out.prompt_tokens > 0  # the random tiny model did write something...
    assert out.phrasing == "template" and record["phrasing"] == "template"  # ...which fails the check
    assert any("failed the fact check" in n for n in out.notes)
    assert out.content.startswith("Your most frequent event is Home (private): 8 of your 25 events.")


def test_chitchat_goes_to_the_model_marked_and_watermarked(events, signer, tiny_causal):
    import torch

    from personal.provenance.watermark import derive_watermark_key, watermark_key_id

    torch.manual_seed(0)
    out = answer("hello there", events, signer, config=AnswerConfig(max_new_tokens=6),
                 load_model=lambda: (tiny_causal, None))
    record = _ok(out, signer)
    assert out.kind == "chitchat" and record["understood"]["kind"] == "chitchat"
    if out.phrasing == "model":  # the random model's words rarely state a habit; when they do, the fixed reply
        assert any("chit-chat" in n for n in out.notes) and out.model == "tiny-causal"
        mark = out.labelled.manifest["watermark"]
        assert mark["key_id"] == watermark_key_id(derive_watermark_key(signer)) and mark["method"]
    else:
        assert any("failed the fact check" in n for n in out.notes)
    no_model = answer("hello there", events, signer)
    assert no_model.phrasing == "template" and "no language model" in " ".join(no_model.notes)


def test_predict_ask_on_a_vault_without_loading_a_model(tmp_path, events):
    from personal.predict import ask
    from personal.vault import Vault, VaultConfig

    with Vault.create(tmp_path / "v.db", "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(events)
        # a model name that does not exist: a habit question never loads the model
        out = ask(v, "ana", "How often do I go to church?", "no-such-model", now=NOW)
        assert out.labelled.content.startswith("Church appears 6 times") and out.new_tokens == 0
        assert verify_labelled(str(out.labelled), out.labelled.manifest, v.public_key()).ok
        nobody = ask(v, "nobody", "Where do I go most often?", "no-such-model")
        assert nobody.grounded.kind == "no_events" and str(nobody.labelled).startswith(DEFAULT_WORDING["en"])
