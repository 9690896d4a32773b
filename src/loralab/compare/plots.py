"""The comparison's plots (PNG, matplotlib's Agg backend): the chosen metric against trainable
parameters, and the val loss curves of the runs."""

from __future__ import annotations

from pathlib import Path

from loralab.compare.table import COMPARED, fmt, lookup


def plot(rows: list[dict], runs: list[dict], metric: str, out: Path, extra: list[str] = ()) -> list[Path]:
    """metric against trainable parameters (one series per variant, and per value of whatever
    else varies besides the rank: alpha, targets, other overrides; std bars when aggregated)
    and val loss curves per run."""
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
