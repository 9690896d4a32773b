"""PhaseClock: exclusive seconds per phase, with a clock the test drives (no timing of real work)."""

from __future__ import annotations

import pytest

from loralab import timing
from loralab.timing import PhaseClock


@pytest.fixture
def now(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: t[0])
    return t


def test_a_phase_inside_another_counts_for_itself_only(now):
    clock = PhaseClock()
    clock.start("validate")
    now[0] = 10.0
    with clock.phase("save"):  # the checkpoint written at the end of a validation
        now[0] = 13.0
    now[0] = 15.0
    clock.stop("validate")
    with clock.phase("validate"):  # phases accumulate
        now[0] = 16.0
    assert clock.seconds == {"validate": 13.0, "save": 3.0}
    figures = clock.summary(train=20.0, total=40.0)
    assert figures == {
        "train": 20.0,
        "validate": 13.0,
        "test": 0.0,
        "forgetting": 0.0,
        "merge_check": 0.0,
        "save": 3.0,
        "other": 4.0,
        "total": 40.0,
    }


def test_an_unbalanced_stop_is_dropped_not_misattributed(now):
    clock = PhaseClock()
    clock.start("validate")  # a validation that failed before its end hook
    now[0] = 5.0
    clock.stop("test")
    clock.stop("validate")
    assert clock.seconds == {"validate": 5.0}
    clock.stop("validate")  # nothing open: nothing happens
    assert clock.seconds == {"validate": 5.0}
