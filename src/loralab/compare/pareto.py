"""Pareto fronts: the configs no other config beats on quality and cost at once. Quality is the
compared metric (higher is better, but for a loss or perplexity); cost is one axis: trainable
parameters, the p99 of per-step peak memory, training time (steps only) or adapter bytes."""

from __future__ import annotations

from typing import Any

# --cost name -> (row key, axis label)
COSTS = {
    "params": ("trainable", "trainable parameters"),
    "memory": ("p99_mb", "p99 per-step peak memory (MB)"),
    "time": ("train_s", "training time, steps only (s)"),
    "bytes": ("adapter_bytes", "adapter bytes"),
}
LOWER_IS_BETTER = ("loss", "ppl")


def higher_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] not in LOWER_IS_BETTER


def points(rows: list[dict[str, Any]], cost_key: str) -> list[tuple[int, float, float]]:
    """(row index, cost, quality) of the rows that have both: completed runs, or aggregated rows
    with completed members."""
    out = []
    for i, row in enumerate(rows):
        counted = row["n"] > 0 if "n" in row else row.get("status") in ("completed", "skipped")
        cost, quality = row.get(cost_key), row.get("metric")
        if counted and isinstance(cost, (int, float)) and isinstance(quality, (int, float)):
            out.append((i, float(cost), float(quality)))
    return out


def front(rows: list[dict[str, Any]], cost_key: str, higher: bool = True) -> set[int]:
    """The indices of the rows on the front: no other row has a cost as low and a quality as good,
    one of them strictly. Identical points are both on it. One sweep over the rows by cost."""
    sign = 1.0 if higher else -1.0
    found: set[int] = set()
    best = float("-inf")  # the best quality at a lower cost so far (sign-adjusted)
    by_cost: dict[float, list[tuple[int, float]]] = {}
    for i, cost, quality in points(rows, cost_key):
        by_cost.setdefault(cost, []).append((i, sign * quality))
    for cost in sorted(by_cost):
        group = by_cost[cost]
        top = max(q for _, q in group)
        if top > best:
            found |= {i for i, q in group if q == top}
            best = top
    return found
