"""The comparison's plots (PNG, matplotlib's Agg backend): the chosen metric against trainable
parameters, and the val loss curves of the runs."""

from __future__ import annotations

from pathlib import Path

from loralab.compare.table import COMPARED, fmt, group_key, lookup

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot(
    rows: list[dict],
    runs: list[dict],
    metric: str,
    out: Path,
    extra: list[str] = (),
    cost: str = "params",
    group_by: list[str] | None = None,
    aggregated: bool = False,
) -> list[Path]:
    """metric against trainable parameters (one series per variant, and per value of whatever
    else varies besides the rank: alpha, targets, other overrides; std bars when aggregated),
    metric against the chosen cost with its Pareto front as a step line, and the curves of val
    loss and of the metric against steps (per config, mean over seeds with a 95% band, when
    aggregated; else per run), one colour per variant."""
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

    written += _curve_plots(plt, runs, metric, out, group_by, aggregated, extra)
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


def curve_series(runs: list[dict], key: str, group_by: list[str] | None, aggregated: bool, extra=()) -> list[dict]:
    """The curves of `key` (a run's `curves`) to draw: per config when aggregated, else per run.
    Each: label, variant, and per step the mean, the 95% interval of the mean (None under two
    seeds at that step) and n."""
    from loralab.compare.stats import interval

    done = [r for r in runs if r["status"] in COMPARED and r["curves"].get(key)]
    varying = [k for k in ("r", "alpha", "targets", *extra) if len({str(lookup(r, k)) for r in done}) > 1]
    groups: dict[tuple, list[dict]] = {}
    for run in done:
        groups.setdefault(group_key(run, group_by) if aggregated else (run["run"],), []).append(run)
    series = []
    for members in groups.values():
        first = members[0]
        if aggregated:
            label = " ".join([str(first["variant"]), *(f"{k}={fmt(k, lookup(first, k))}" for k in varying)])
        else:
            label = first["run"]
        by_step: dict[int, list[float]] = {}
        for run in members:
            for step, value in run["curves"][key]:
                by_step.setdefault(step, []).append(value)
        points = []
        for step in sorted(by_step):
            values = by_step[step]
            points.append((step, sum(values) / len(values), interval(values), len(values)))
        series.append({"label": label, "variant": str(first["variant"]), "points": points, "n": len(members)})
    return sorted(series, key=lambda s: (s["variant"], s["label"]))


def _curve_plots(plt, runs, metric, out: Path, group_by, aggregated: bool, extra) -> list[Path]:
    """compare_val_loss.png, and compare_<metric>_vs_step.png when the metric is not the loss."""
    written = []
    for key in dict.fromkeys(["val/loss", metric]):
        series = curve_series(runs, key, group_by, aggregated, extra)
        variants = sorted({s["variant"] for s in series})
        colours = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
        seen: dict[str, int] = {}
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in series:
            colour = colours(variants.index(s["variant"]) % colours.N)
            k = seen[s["variant"]] = seen.get(s["variant"], -1) + 1
            steps = [p[0] for p in s["points"]]
            ax.plot(
                steps,
                [p[1] for p in s["points"]],
                color=colour,
                linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                marker=MARKERS[k % len(MARKERS)],
                markersize=4,
                label=s["label"] + (f" (n={s['n']})" if aggregated else ""),
            )
            banded = [p for p in s["points"] if p[2] is not None]
            if banded:
                lows, highs = [p[2][0] for p in banded], [p[2][1] for p in banded]
                ax.fill_between([p[0] for p in banded], lows, highs, color=colour, alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if aggregated:
            ax.set_title("mean over seeds, band: 95% CI of the mean", fontsize="small")
        ax.grid(alpha=0.3)
        if 0 < len(series) <= 20:
            ax.legend(fontsize="x-small")
        fig.tight_layout()
        path = out / ("compare_val_loss.png" if key == "val/loss" else f"compare_{key.replace('/', '_')}_vs_step.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
