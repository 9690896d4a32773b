"""Answer metrics for generation tasks: each compares one greedy answer with its reference and gives
a score in [0, 1]; a split's figure is the mean. Chosen by name in `data.metrics` (logged as
`val/<name>` and `test/<name>`); `data.answer_regex` first extracts the answer from both texts.
Imports nothing heavy.

A metric of your own: a function `(answer: str, reference: str) -> float`, either registered here
with `register_metric` from a module your config imports, or named by its import path in
`data.metrics` (`data.metrics=[exact_match,mypkg.scores.contains]`)."""

from __future__ import annotations

import importlib
import re
import string
from collections import Counter
from collections.abc import Callable

from loralab.errors import ConfigError

Metric = Callable[[str, str], float]
METRICS: dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Register a metric under `name` (a decorator)."""

    def add(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return add


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


@register_metric("exact_match")
def exact_match(answer: str, reference: str) -> float:
    """The answer is the reference, character for character (both stripped)."""
    return float(answer.strip() == reference.strip())


@register_metric("normalized_exact_match")
def normalized_exact_match(answer: str, reference: str) -> float:
    """Equal after normalize(): case, whitespace, punctuation and articles do not count."""
    return float(normalize(answer) == normalize(reference))


@register_metric("token_f1")
def token_f1(answer: str, reference: str) -> float:
    """F1 of the normalised answer's tokens against the reference's (as a bag of words)."""
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def get_metric(name: str) -> Metric:
    """A registered metric, or a function named by its import path (`package.module.function`)."""
    if name in METRICS:
        return METRICS[name]
    module, _, attr = name.rpartition(".")
    if not module:
        raise ConfigError(
            f"unknown metric {name!r}: data.metrics takes {sorted(METRICS)} or a function's import path "
            "(package.module.function)"
        )
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # noqa: BLE001 (a user's module may fail in any way: one line)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"metric {name!r} cannot be imported ({type(exc).__name__}: {first}): check the path, or use one of "
            f"{sorted(METRICS)}"
        ) from None
    if not callable(fn):
        raise ConfigError(f"metric {name!r} is not a function: pass a function (answer, reference) -> float")
    return fn


def check_regex(pattern: str | None) -> re.Pattern | None:
    """The compiled answer pattern, or a one-line refusal."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"data.answer_regex {pattern!r} is not a regular expression ({exc}): fix it") from None
    if compiled.search("") is not None:
        raise ConfigError(
            f"data.answer_regex {pattern!r} matches an empty text, so every answer would match: make it require "
            "the answer (e.g. '#### (\\S+)' rather than '(\\d*)$')"
        )
    if compiled.groups > 1:
        raise ConfigError(
            f"data.answer_regex {pattern!r} has {compiled.groups} groups: use one group around the answer "
            "(or none: the whole match)"
        )
    return compiled


def extract(text: str, pattern: re.Pattern | None, fallback: str | None = None) -> str:
    """The answer the pattern finds in `text` (its group, else the whole match; the last match
    when there are several). No match: `fallback` (the text itself when None)."""
    if pattern is None:
        return text
    found = list(pattern.finditer(text))
    if not found:
        return text if fallback is None else fallback
    match = found[-1]
    return ((match.group(1) if pattern.groups else match.group(0)) or "").strip()


def score(answers: list[str], references: list[str], names: list[str], pattern: re.Pattern | None) -> dict:
    """Each metric's per-answer scores summed (the caller divides by the number of rows).
    With a pattern, the answer is what it extracts (an answer it finds nothing in is scored
    as empty) and the reference is what it extracts, or the whole reference."""
    got = [extract(a, pattern, fallback="") for a in answers]
    want = [extract(r, pattern) for r in references]
    return {name: sum(get_metric(name)(a, r) for a, r in zip(got, want, strict=True)) for name in names}
