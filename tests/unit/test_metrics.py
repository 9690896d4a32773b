"""Answer metrics: registered by name or named by import path, an answer pattern applied first,
each logged as val/<name> and test/<name> from one generation pass."""

from __future__ import annotations

import pytest

from loralab.data.schema import DataConfig
from loralab.errors import ConfigError
from loralab.metrics import check_regex, extract, get_metric, normalize, score


def first_word(answer: str, reference: str) -> float:
    """A user's metric, named by its import path in the tests below."""
    return float(answer.split()[:1] == reference.split()[:1])


def test_the_built_in_metrics():
    assert get_metric("exact_match")(" 1984-03-07 ", "1984-03-07") == 1.0
    assert get_metric("exact_match")("the answer", "answer") == 0.0
    assert normalize("  The ANSWER,  is: an apple! ") == "answer is apple"
    assert get_metric("normalized_exact_match")("The Answer!", "answer") == 1.0
    # tokens cat, sat against cat, sat, on, mat: precision 1, recall 1/2
    assert get_metric("token_f1")("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    assert get_metric("token_f1")("dog", "cat") == 0.0
    assert get_metric("token_f1")("", "") == 1.0


def test_an_answer_pattern_extracts_before_scoring():
    pattern = check_regex(r"#### (\S+)")
    assert extract("6 * 7 = 42\n#### 42", pattern) == "42"
    assert extract("#### 1 then #### 2", pattern) == "2"  # the last match
    answers = ["so 6 * 7 = 42 #### 42", "I think 41", "#### 40"]
    references = ["#### 42", "#### 41", "40"]  # a reference without the pattern counts whole
    # an answer with nothing to extract scores as empty: the second is wrong
    assert score(answers, references, ["exact_match"], pattern) == {"exact_match": 2.0}
    whole = check_regex(r"\d{4}-\d{2}-\d{2}")
    assert score(["It is 1984-03-07."], ["1984-03-07"], ["exact_match"], whole) == {"exact_match": 1.0}


def test_a_metric_named_by_its_import_path():
    fn = get_metric("tests.unit.test_metrics.first_word")
    assert fn("yes indeed", "yes") == 1.0
    cfg = DataConfig(metrics=["exact_match", "tests.unit.test_metrics.first_word"])
    assert list(cfg.metrics) == ["exact_match", "tests.unit.test_metrics.first_word"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics": ["exact_macth"]}, "unknown metric 'exact_macth': data.metrics takes"),
        ({"metrics": ["nowhere.module.fn"]}, "metric 'nowhere.module.fn' cannot be imported"),
        ({"metrics": []}, "data.metrics is empty"),
        ({"answer_regex": "#### ("}, "data.answer_regex '#### (' is not a regular expression"),
        ({"answer_regex": "(a)(b)"}, "has 2 groups: use one group around the answer"),
        (
            {"format": "classification", "builtin_task": "topics", "metrics": ["token_f1"]},
            "classification reports val/accuracy",
        ),
    ],
)
def test_bad_metric_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        DataConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_an_optional_group_that_matched_nothing_scores_as_empty():
    pattern = check_regex(r"answer: (\d+)?!")
    assert extract("answer: !", pattern) == ""


def test_a_pattern_that_matches_an_empty_text_is_refused():
    with pytest.raises(ConfigError, match="matches an empty text, so every answer would match"):
        check_regex(r"(\d*)$")
