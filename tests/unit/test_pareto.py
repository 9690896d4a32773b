"""The Pareto front of a comparison against a brute-force front (every pair compared)."""

from __future__ import annotations

import random

import pytest

from loralab.compare.pareto import front, higher_is_better


def brute_force(rows: list[dict], key: str, higher: bool) -> set[int]:
    sign = 1 if higher else -1
    pts = {
        i: (r[key], sign * r["metric"])
        for i, r in enumerate(rows)
        if r.get("status") == "completed" and r.get(key) is not None and r.get("metric") is not None
    }

    def dominates(a, b):  # a at most b's cost and at least its quality, one strictly
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return {i for i, p in pts.items() if not any(dominates(q, p) for j, q in pts.items() if j != i)}


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("higher", [True, False])
def test_the_front_is_the_brute_force_front(seed, higher):
    rng = random.Random(seed)
    rows = []
    for _ in range(rng.randint(1, 25)):
        rows.append(
            {
                # few distinct values: ties in cost, in quality and in both
                "trainable": rng.choice([1000, 2000, 4000, 8000, None]),
                "metric": rng.choice([0.1, 0.5, 0.5, 0.75, 0.9, None]),
                "status": rng.choice(["completed"] * 5 + ["failed"]),
            }
        )
    assert front(rows, "trainable", higher) == brute_force(rows, "trainable", higher)


def test_aggregated_rows_count_when_a_member_completed():
    rows = [{"n": 0, "trainable": 1, "metric": 1.0}, {"n": 2, "trainable": 2, "metric": 0.5}]
    assert front(rows, "trainable") == {1}


def test_loss_and_perplexity_are_lower_is_better():
    assert higher_is_better("val/exact_match") and higher_is_better("val/accuracy")
    assert not higher_is_better("val/loss") and not higher_is_better("val/ppl")
