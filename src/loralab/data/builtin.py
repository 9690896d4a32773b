"""Built-in tasks generated deterministically from a seed: no download, same data everywhere.

- `dates`: written dates to ISO form; the default task (SmolLM2-135M fails it zero-shot).
- `word_sort`: sort 4-7 words alphabetically; harder, so ranks and variants separate.
- `topics`: text -> topic label, for sequence classification.
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Callable

MONTHS = list(calendar.month_name)[1:]
MONTH_ABBR = list(calendar.month_abbr)[1:]

WORDS = (
    "apple anchor banana bridge candle cactus dragon desert eagle engine falcon forest garden "
    "glacier harbor helmet island ivory jacket jungle kettle kernel lantern lemon marble meadow "
    "needle nickel orange oyster pepper planet quartz quiver rabbit river saddle silver tiger "
    "tunnel umbrella uniform velvet violin walnut window yellow yogurt zebra zipper basket "
    "copper dolphin feather ginger hammer insect jigsaw ladder magnet pencil rocket spider "
    "timber turtle vessel wizard"
).split()

TOPICS = {
    "sports": (
        ["The striker", "Our goalkeeper", "The coach", "The team captain", "A young sprinter"],
        [
            "scored twice in the final",
            "trained hard before the match",
            "won the championship",
            "broke the league record",
            "missed the penalty kick",
            "signed a new contract with the club",
        ],
    ),
    "weather": (
        ["The forecast", "This morning", "The storm", "A cold front", "The afternoon"],
        [
            "brought heavy rain to the coast",
            "says snow is expected tonight",
            "was sunny and warm",
            "will bring strong winds",
            "turned foggy near the hills",
            "stayed humid and cloudy",
        ],
    ),
    "food": (
        ["The chef", "My grandmother", "The bakery", "This restaurant", "Our neighbour"],
        [
            "baked fresh bread with garlic",
            "serves a spicy noodle soup",
            "made a chocolate cake",
            "roasted vegetables with olive oil",
            "cooked rice with beans",
            "grilled fish with lemon",
        ],
    ),
    "technology": (
        ["The new phone", "This laptop", "The software update", "Our server", "The startup"],
        [
            "ships with a faster processor",
            "fixed a security bug",
            "runs the app on the cloud",
            "added support for wireless charging",
            "crashed after the upgrade",
            "released an open source library",
        ],
    ),
}


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date_example(rng: random.Random) -> dict:
    year = rng.randint(1900, 2099)
    month = rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    name, abbr = MONTHS[month - 1], MONTH_ABBR[month - 1]
    written = rng.choice(
        [
            f"{name} {day}, {year}",
            f"{day} {name} {year}",
            f"{abbr} {day}, {year}",
            f"the {_ordinal(day)} of {name}, {year}",
        ]
    )
    return {
        "prompt": f"Convert the date to ISO format (YYYY-MM-DD): {written}",
        "completion": f"{year:04d}-{month:02d}-{day:02d}",
    }


def _word_sort_example(rng: random.Random) -> dict:
    words = rng.sample(WORDS, rng.randint(4, 7))
    return {
        "prompt": "Sort these words alphabetically, separated by commas: " + ", ".join(words),
        "completion": ", ".join(sorted(words)),
    }


def _topics_example(rng: random.Random) -> dict:
    label = rng.choice(sorted(TOPICS))
    subjects, predicates = TOPICS[label]
    return {"text": f"{rng.choice(subjects)} {rng.choice(predicates)}.", "label": label}


BUILTIN_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "dates": _date_example,
    "word_sort": _word_sort_example,
    "topics": _topics_example,
}


def generate(task: str, num_train: int, num_val: int, seed: int, num_test: int = 0) -> tuple[list[dict], ...]:
    """Train, validation and test examples for a built-in task, drawn in that order from one seeded
    stream (a test split leaves train and validation as they were without it). For the generative
    tasks no validation or test prompt occurs in an earlier split (the classification task's
    sentence space is small on purpose). Returns (train, val), or (train, val, test) with num_test."""
    make = BUILTIN_TASKS[task]
    rng = random.Random(seed)
    train = [make(rng) for _ in range(num_train)]
    key = "prompt" if "prompt" in train[0] else None
    seen = {ex[key] for ex in train} if key else set()

    def fresh(n: int) -> list[dict]:
        out: list[dict] = []
        attempts = 0
        while len(out) < n:
            ex = make(rng)
            attempts += 1
            if key is None or ex[key] not in seen or attempts > 100 * n:
                out.append(ex)
                if key:
                    seen.add(ex[key])
        return out

    val = fresh(num_val)
    return (train, val, fresh(num_test)) if num_test else (train, val)
