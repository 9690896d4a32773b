"""What a comparison over seeds can call real.

Per config: mean, standard deviation, n and a 95% confidence interval (Student's t). Against a
baseline (`--baseline`): the difference in the metric with its 95% interval, from a paired t-test
when both configs ran the same seeds (same data order and initialisation: the seed's own effect
cancels) or Welch's t-test otherwise; the p-values of all the rows compared are corrected together
(Holm). A row is `better` or `worse` when its corrected p-value is under 0.05, else `within
noise`, with roughly the seeds per config that would resolve the observed difference at the
observed spread (80% power, normal approximation). With fewer than two seeds a side nothing can
be called, and the row says so.
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05
POWER = 0.80


def interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% confidence interval of the mean (None under two values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def difference(base: dict[Any, float], other: dict[Any, float]) -> dict | None:
    """`other - base` over seeds: the mean difference, its 95% interval, the test and its p-value,
    and the variance one more seed pair would add (for the seeds needed). None when either side
    has fewer than two seeds."""
    from scipy import stats

    if len(base) < 2 or len(other) < 2:
        return None
    if set(base) == set(other):  # the same seeds: paired
        d = [other[s] - base[s] for s in sorted(base, key=str)]
        n = len(d)
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / (n - 1)
        se, df, test, spread = math.sqrt(var / n), n - 1, "paired t", var
    else:
        a, b = list(base.values()), list(other.values())
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
        vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
        mean = mb - ma
        se = math.sqrt(va / len(a) + vb / len(b))
        if se > 0:
            df = se**4 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
        else:
            df = len(a) + len(b) - 2
        test, spread = "Welch t", va + vb
    if se == 0:  # every seed gave the same difference: exactly it, or none
        p, half = (0.0 if mean != 0 else 1.0), 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / se), df))
        half = float(stats.t.ppf(1 - ALPHA / 2, df) * se)
    return {"delta": mean, "lo": mean - half, "hi": mean + half, "test": test, "p": p, "spread": spread}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def seeds_needed(delta: float, spread: float) -> int | None:
    """Seeds per config for a two-sided test at ALPHA to find `delta` with POWER, at the observed
    spread (the variance of one seed's difference); None when no difference was seen."""
    from scipy import stats

    if delta == 0:
        return None
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    return max(2, math.ceil(z**2 * spread / delta**2))


def verdicts(rows: list[dict], base: int, higher: bool) -> None:
    """Against rows[base], fill each other row's `delta`, `delta_lo`, `delta_hi`, `test`, `p`,
    `p_holm`, `verdict` and `seeds_needed` (rows carry `samples`: seed -> metric)."""
    compared = []
    for i, row in enumerate(rows):
        if i == base:
            row["verdict"] = "baseline"
            continue
        found = difference(rows[base].get("samples") or {}, row.get("samples") or {})
        if found is None:
            row["verdict"] = "n < 2: no call"
            continue
        row.update(delta=found["delta"], delta_lo=found["lo"], delta_hi=found["hi"], test=found["test"], p=found["p"])
        row["_spread"] = found["spread"]
        compared.append(i)
    for i, p in zip(compared, holm([rows[i]["p"] for i in compared]), strict=True):
        row = rows[i]
        row["p_holm"] = p
        if p < ALPHA:
            row["verdict"] = "better" if (row["delta"] > 0) == higher else "worse"
        else:
            row["verdict"] = "within noise"
            row["seeds_needed"] = seeds_needed(row["delta"], row.pop("_spread"))
        row.pop("_spread", None)
