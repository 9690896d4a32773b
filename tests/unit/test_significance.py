"""loralab.compare.stats against scipy's own tests and intervals."""

from __future__ import annotations

import random

import pytest
from scipy import stats

from loralab.compare.stats import difference, holm, interval, seeds_needed, verdicts


def _samples(rng: random.Random, n: int, mean: float, sd: float, seeds=None) -> dict:
    return {s: rng.gauss(mean, sd) for s in (seeds or range(n))}


@pytest.mark.parametrize("seed", range(10))
def test_interval_paired_and_welch_match_scipy(seed):
    rng = random.Random(seed)
    base = _samples(rng, 5, 0.5, 0.1)
    values = list(base.values())
    lo, hi = interval(values)
    want = stats.t.interval(0.95, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
    assert (lo, hi) == pytest.approx(want)

    other = {s: v + rng.gauss(0.05, 0.02) for s, v in base.items()}  # the same seeds: paired
    found = difference(base, other)
    ref = stats.ttest_rel(list(other.values()), list(base.values()))
    assert found["test"] == "paired t" and found["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (found["lo"], found["hi"]) == pytest.approx((ci.low, ci.high))

    apart = _samples(rng, 4, 0.6, 0.2, seeds=[10, 11, 12, 13])  # other seeds: Welch
    found = difference(base, apart)
    ref = stats.ttest_ind(list(apart.values()), list(base.values()), equal_var=False)
    assert found["test"] == "Welch t" and found["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (found["lo"], found["hi"]) == pytest.approx((ci.low, ci.high))


def test_holm_matches_the_step_down_procedure():
    rng = random.Random(0)
    for _ in range(50):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 8))]
        m = len(p)
        ranked = sorted(range(m), key=lambda i: p[i])
        want = {}
        for k, i in enumerate(ranked):  # max over the smaller p-values of (m - j) p_(j), capped at 1
            want[i] = min(1.0, max((m - j) * p[ranked[j]] for j in range(k + 1)))
        assert holm(p) == pytest.approx([want[i] for i in range(m)])


def test_no_call_under_two_seeds_and_an_identical_config_is_within_noise():
    rows = [
        {"samples": {1: 0.5, 2: 0.6, 3: 0.55}},
        {"samples": {1: 0.5, 2: 0.6, 3: 0.55}},  # the same figures, seed for seed
        {"samples": {1: 0.9, 2: 0.95, 3: 0.97}},  # far better
        {"samples": {1: 0.1}},
    ]
    verdicts(rows, 0, higher=True)
    assert [r["verdict"] for r in rows] == ["baseline", "within noise", "better", "n < 2: no call"]
    assert rows[1]["delta"] == 0 and rows[1]["seeds_needed"] is None
    verdicts(rows, 0, higher=False)  # a loss: higher is worse
    assert rows[2]["verdict"] == "worse"


def test_seeds_needed_grows_with_the_spread_and_shrinks_with_the_difference():
    assert seeds_needed(0.1, 0.01) < seeds_needed(0.1, 0.04) and seeds_needed(0.2, 0.01) < seeds_needed(0.1, 0.01)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert seeds_needed(0.1, 0.04) == int(-(-(z**2) * 0.04 // 0.01))
