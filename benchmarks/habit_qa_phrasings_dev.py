"""DEVELOPMENT question phrasings for benchmarks/habit_qa.py: the ones personal/answers.py's
question understanding was built and tuned against (the held-out ones are in
habit_qa_phrasings_heldout.py). Same placeholders as there.
"""

DEV: dict[str, list[str]] = {
    "overall": [
        "Where do I go most often?",
        "What do I do most often?",
        "What is my most frequent activity?",
        "What do I usually do?",
        "Where do I go the most?",
        "What's my favourite place?",
    ],
    "time_of_day": [
        "What do I usually do in the {parts}?",
        "Where do I go in the {part}?",
        "What do I do around {hour}?",
        "What do I usually do after {hour}?",
        "What do I do before {hour}?",
        "Where do I usually go at {hour}?",
    ],
    "weekday": [
        "What do I usually do on {day} {parts}?",
        "Where do I go on {days}?",
        "What do I usually do on {days}?",
        "What do I do on {day}?",
        "Where do I usually go on {day} {parts}?",
        "What's my routine on {days}?",
    ],
    "after_event": [
        "What do I usually do after {event}?",
        "Where do I go after {event}?",
        "What do I do after going to {event}?",
        "What comes after {event}?",
        "After {event}, where do I usually go?",
        "What follows {event}?",
    ],
    "when_event": [
        "When do I usually go to {event}?",
        "When do I go to {event}?",
        "What time do I usually go to {event}?",
        "What day do I usually go to {event}?",
        "When am I usually at {event}?",
        "At what time do I visit {event}?",
    ],
    "how_often": [
        "How often do I go to {event}?",
        "How many times did I go to {event}?",
        "How many times have I been to {event}?",
        "How often do I visit {event}?",
        "How frequently do I go to {event}?",
        "How many {event} visits do I have?",
    ],
    "next": [
        "What will I do next?",
        "What's my next move?",
        "Where am I going next?",
        "What's next?",
        "What should I do next?",
        "What do I usually do next?",
    ],
    "unanswerable": [
        "How many times did I go to {absent}?",
        "When do I go to {absent}?",
        "What is my blood pressure?",
        "What did I eat for breakfast?",
        "Where do I go after {absent}?",
        "How much do I sleep?",
    ],
}
