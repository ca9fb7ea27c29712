"""HELD-OUT question phrasings for benchmarks/habit_qa.py.

Written and committed BEFORE personal/answers.py's question understanding existed, and never
used to build or tune it (the parser was developed against habit_qa_phrasings_dev.py only).
Its git history shows it: this file's first commit precedes the parser's. If a change to the
parser is ever made because a phrasing here failed, these phrasings stop being held out: move
them to the dev file and write new held-out ones.

Placeholders (filled by the benchmark from each owner's own events):
  {event}  an event name of the owner as they might type it (original, lower case, or without
           a parenthetical such as "(private)")
  {day}    a weekday ("Saturday"), {days} its plural ("Saturdays")
  {part}   a part of day ("morning"), {parts} its plural ("mornings")
  {hour}   a clock time with am/pm or 24 h ("7am", "7 pm", "19:00")
  {absent} a place or activity the owner has NO event of
"""

HELD_OUT: dict[str, list[str]] = {
    "overall": [
        "Which place do I visit the most?",
        "what's the thing I do most frequently",
        "Where do I end up most of the time?",
        "Tell me my most common habit.",
        "What place shows up most in my history?",
        "if you had to guess, where do I spend most of my visits?",
    ],
    "time_of_day": [
        "Where am I usually in the {parts}?",
        "what do i tend to do in the {part}?",
        "Any idea where I go around {hour}?",
        "What's my usual thing after {hour}?",
        "Typically, what do I do in the {part}",
        "what's my go-to spot in the {parts}?",
    ],
    "weekday": [
        "Where do I normally go on {days}?",
        "what's my usual {day}?",
        "What do I mostly do on {day} {parts}?",
        "On {days}, where am I most of the time?",
        "how do I usually spend {day} {parts}?",
        "What do I typically get up to on {days}?",
    ],
    "after_event": [
        "Where do I head after {event}?",
        "what usually comes after {event} for me?",
        "Once I'm done at {event}, where do I go?",
        "What do I tend to do following {event}?",
        "after {event}, what's next usually?",
        "Where do I go right after {event}?",
    ],
    "when_event": [
        "On which day do I usually go to {event}?",
        "what time do i normally hit {event}?",
        "When am I most likely at {event}?",
        "Which day of the week is {event} for me?",
        "when do i tend to visit {event}",
        "At what time of day do I usually go to {event}?",
    ],
    "how_often": [
        "How frequently do I visit {event}?",
        "how many visits to {event} have I made?",
        "How often am I at {event}?",
        "Count my trips to {event}.",
        "how regularly do i go to {event}?",
        "What's the number of times I went to {event}?",
    ],
    "next": [
        "What am I likely to do next?",
        "where will i go next?",
        "Guess my next stop.",
        "What comes next for me?",
        "what should I expect to do next?",
        "Predict where I'm going next.",
    ],
    "unanswerable": [
        "How often do I go to {absent}?",
        "When do I usually visit {absent}?",
        "What's my resting heart rate?",
        "How much money did I spend last month?",
        "What do I do after {absent}?",
        "Who did I have dinner with yesterday?",
    ],
}
