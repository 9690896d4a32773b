"""The comparison's plots (PNG, matplotlib's Agg backend): the chosen metric against trainable
parameters, and the val loss curves of the runs."""

from __future__ import annotations

from pathlib import Path

from loralab.compare.table import COMPARED, fmt, lookup


def plot(
    rows: list[dict], runs: list[dict], metric: str, out: Path, extra: list[str] = (), cost: str = "params"
) -> list[Path]:
    """metric against trainable parameters (one series per variant, and per value of whatever
    else varies besides the rank: alpha, targets, other overrides; std bars when aggregated),
    metric against the chosen cost with its Pareto front as a step line, and val loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [k for k in ("alpha", "targets", *extra) if len({str(lookup(r, k)) for r in rows}) > 1]

    def series_of(row: dict) -> str:
        return " ".join([str(row.get("variant")), *(f"{k}={fmt(k, lookup(row, k))}" for k in varying)])

    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in sorted({series_of(r) for r in rows}):
        series = sorted(
            (
                r
                for r in rows
                if series_of(r) == name
                and r.get("metric") is not None
                and r.get("trainable")
                and (r["n"] > 0 if "n" in r else r.get("status") in COMPARED)
            ),
            key=lambda r: r["trainable"],
        )
        if series:
            ax.errorbar(
                [r["trainable"] for r in series],
                [r["metric"] for r in series],
                yerr=[r.get("metric_std") or 0.0 for r in series],
                marker="o",
                capsize=3,
                label=name,
            )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(title="variant" + (" and " + ", ".join(varying) if varying else ""), fontsize="small")
    fig.tight_layout()
    path = out / f"compare_{metric.replace('/', '_')}_vs_params.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    written.append(_front_plot(plt, rows, metric, out, cost, series_of))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        if run["curve"]:
            steps, values = zip(*run["curve"], strict=True)
            ax.plot(steps, values, marker=".", label=run["run"])
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.grid(alpha=0.3)
    if len(runs) <= 16:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / "compare_val_loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def _front_plot(plt, rows: list[dict], metric: str, out: Path, cost: str, series_of) -> Path:
    """One point per config (std bars when aggregated), the front drawn as a step line."""
    from loralab.compare.pareto import COSTS, points

    key, label = COSTS[cost]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown = points(rows, key)
    for name in sorted({series_of(rows[i]) for i, _, _ in shown}):
        mine = [(rows[i], c, q) for i, c, q in shown if series_of(rows[i]) == name]
        ax.errorbar(
            [c for _, c, _ in mine],
            [q for _, _, q in mine],
            yerr=[r.get("metric_std") or 0.0 for r, _, _ in mine],
            fmt="o",
            capsize=3,
            label=name,
        )
    best = sorted((c, q) for i, c, q in shown if rows[i].get("pareto"))
    if best:
        ax.step([c for c, _ in best], [q for _, q in best], where="post", color="black", alpha=0.6, label="front")
    if shown and min(c for _, c, _ in shown) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / f"compare_front_{metric.replace('/', '_')}_vs_{cost}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
