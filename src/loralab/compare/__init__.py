"""`loralab-compare`: one table of runs (a sweep, or any run directories), printed and written as
Markdown, CSV and PNG plots, with aggregation over seeds.

loralab-compare outputs/rank_alpha_sweep/multirun_2026-11-25_10-00-00
loralab-compare outputs/a/run1 outputs/b/run2 --metric val/loss --out report/
loralab-compare SWEEP --group-by variant,r --filter variant=lora --filter r=8

Runs are found and read through `loralab.rundir`; the table, its filters, aggregation, Markdown
and CSV are in `table`; the plots in `plots`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loralab.compare.html import write_html
from loralab.compare.pareto import COSTS, front, higher_is_better, points
from loralab.compare.plots import plot
from loralab.compare.table import (
    COLUMNS,
    CompareError,
    aggregate,
    apply_filters,
    choose_metric,
    group_key,
    labels,
    load_run,
    lookup,
    same_value,
    table_rows,
    test_metric,
    varied_overrides,
    write_csv,
    write_markdown,
)
from loralab.errors import LoralabError
from loralab.rundir import RunDir, check_writable
from loralab.rundir import find_runs as runs_at

__all__ = ["CompareError", "compare", "find_runs", "main"]


def find_runs(paths: list[str]) -> list[RunDir]:
    """Run directories: each path itself when it is one, else every run below it (a sweep's jobs,
    or all of outputs/)."""
    runs: list[RunDir] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise CompareError(f"{raw} is not a directory: pass run directories or sweep directories")
        found = runs_at(path)
        if not found:
            raise CompareError(
                f"no runs in {raw}: a run directory holds summary.json and run_meta.json; pass one, or a directory "
                "above runs (a sweep, outputs/)"
            )
        runs += found
    return list(dict.fromkeys(runs))


def compare(
    paths: list[str],
    metric: str | None = None,
    group_by: list[str] | None = None,
    aggregate_seeds: str = "auto",
    filters: list[str] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    echo: bool = True,
    cost: str = "params",
    baseline: str | None = None,
) -> dict:
    """Build the comparison; print it; write compare.md, compare.csv, compare.html and the plots
    into `out`."""
    if cost not in COSTS:
        raise CompareError(f"--cost {cost!r}: choose one of {list(COSTS)}")
    out_dir = _out_dir(out, paths)
    run_dirs = find_runs(paths)
    runs = [load_run(d, label) for d, label in zip(run_dirs, labels(run_dirs), strict=True)]
    runs = apply_filters(runs, filters or [])
    metric = choose_metric(runs, metric)
    for run in runs:
        run["metric"] = run["after"].get(metric)
        # the same metric on the held-out test split, where the run has one (never used to choose)
        run["test_metric"] = run["test"].get(test_metric(metric))
        if metric not in run["curves"]:
            run["curves"][metric] = RunDir(run["source_dir"]).metric_curve(metric)
    extra = varied_overrides(runs)
    shown = {k for k, _ in COLUMNS}
    extra += [k for k in group_by or [] if k not in shown and k not in extra]  # what a group is, as columns
    seeds_per_group: dict[tuple, set] = {}
    for run in runs:
        seeds_per_group.setdefault(group_key(run, group_by), set()).add(run["seed"])
    if aggregate_seeds not in ("auto", "seed", "none"):
        raise CompareError(f"--aggregate {aggregate_seeds!r}: choose auto, seed or none")
    do_aggregate = aggregate_seeds == "seed" or (
        aggregate_seeds == "auto" and any(len(s) > 1 for s in seeds_per_group.values())
    )
    rows = aggregate(runs, group_by) if do_aggregate else runs
    cost_key = COSTS[cost][0]
    on_front = front(rows, cost_key, higher_is_better(metric))
    for i, row in enumerate(rows):  # one point per config: the aggregated row where seeds were
        row["pareto"] = "✓" if i in on_front else ""
    notes = add_statistics(rows, metric, baseline, do_aggregate)
    headers, body = table_rows(
        rows,
        metric,
        extra,
        front_cost=cost if len(points(rows, cost_key)) > 1 else None,
        baseline=baseline,
        intervals=do_aggregate,
    )
    by = ", ".join(group_by) if group_by else "config (all but the seed)"
    title = f"loralab comparison: {len(runs)} runs" + (f", mean ± std over seeds by {by}" if do_aggregate else "")
    if echo:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for header in headers:
            table.add_column(header, overflow="fold")
        for cells in body:
            table.add_row(*cells)
        Console(width=200).print(table)
        for note in notes:
            print(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md", out_dir / "compare.csv"]
    write_markdown(written[0], headers, body, title, notes)
    write_csv(written[1], rows, metric, extra)
    if plots:
        written += plot(rows, runs, metric, out_dir, extra, cost=cost, group_by=group_by, aggregated=do_aggregate)
    images = [p for p in written if p.suffix == ".png"]
    html_path = write_html(out_dir / "compare.html", title, headers, body, notes, images, runs, metric, paths)
    written.insert(2, html_path)
    if echo:
        print("written: " + ", ".join(str(p) for p in written))
    return {
        "metric": metric,
        "rows": rows,
        "runs": runs,
        "files": written,
        "aggregated": do_aggregate,
        "title": title,
        "headers": headers,
        "body": body,
        "notes": notes,
        "extra": extra,
        "out": out_dir,
    }


def find_baseline(rows: list[dict], baseline: str) -> int:
    """The index of the one row `baseline` names: a variant, or key=value pairs (comma-separated)."""
    pairs = [p.partition("=") for p in baseline.split(",")] if "=" in baseline else [("variant", "=", baseline)]
    if any(not key or not sep for key, sep, _ in pairs):
        raise CompareError(f"--baseline {baseline!r}: name a variant (lora) or key=value pairs (variant=lora,r=8)")
    found = [i for i, row in enumerate(rows) if all(same_value(lookup(row, k), v) for k, _, v in pairs)]
    if len(found) != 1:
        shown = "; ".join(str(rows[i]["run"]) for i in found[:3])
        what = f"{len(found)} rows ({shown})" if found else "no row"
        raise CompareError(
            f"--baseline {baseline!r} matches {what}: name one config, e.g. "
            f"--baseline variant={lookup(rows[0], 'variant')},r={lookup(rows[0], 'r')}"
        )
    return found[0]


def add_statistics(rows: list[dict], metric: str, baseline: str | None, aggregated: bool) -> list[str]:
    """The 95% interval of each config's metric and, with a baseline, each row's difference and
    verdict (loralab.compare.stats); returns the notes printed under the table."""
    from loralab.compare.stats import interval, verdicts

    notes = []
    for row in rows:
        ci = interval(list((row.get("samples") or {}).values())) if aggregated else None
        row["ci"] = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-"
    if baseline is None:
        return notes
    base = find_baseline(rows, baseline)
    verdicts(rows, base, higher_is_better(metric))
    for row in rows:
        if "delta" in row:
            row["delta_text"] = f"{row['delta']:+.4g} [{row['delta_lo']:+.4g}, {row['delta_hi']:+.4g}]"
        text = row.get("verdict", "")
        if row.get("seeds_needed"):
            text += f" (~{row['seeds_needed']} seeds to tell)"
        if "p_holm" in row:
            text += f", p={row['p_holm']:.2g} ({row['test']}, Holm)"
        row["verdict_text"] = text
    if not aggregated or all((r.get("n") or 0) < 2 for r in rows):
        notes.append("one seed per config: no difference can be called (run more seeds: seed=1,2,3)")
    return notes


def _out_dir(out: str | Path | None, paths: list[str]) -> Path:
    """Where the report goes (default: the one path given), refused before any run is read when it
    is a file or cannot be written."""
    out_dir = (
        Path(out).expanduser() if out is not None else (Path(paths[0]) if len(paths) == 1 else Path("loralab-compare"))
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir} is a file: pass a directory for compare.md, compare.csv and the plots")
    try:
        check_writable(out_dir, "--out")
    except LoralabError as exc:
        raise CompareError(str(exc)) from None
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loralab-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--metric", help="final validation metric to compare (default: exact match, accuracy or loss)")
    parser.add_argument(
        "--group-by",
        help="comma-separated columns or config keys that define a group for aggregation "
        "(default: runs whose whole config but the seed is the same)",
    )
    parser.add_argument("--aggregate", default="auto", help="auto (over seeds when a group has several), seed, or none")
    parser.add_argument("--filter", action="append", default=[], help="key=value; repeat to combine")
    parser.add_argument("--out", help="where compare.md, compare.csv and the PNGs go (default: the one path given)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--baseline",
        help="the config the others are tested against: a variant (lora) or key=value[,key=value] "
        "(variant=lora,r=8); each row gets the difference, its 95%% interval and better / worse / within noise",
    )
    parser.add_argument(
        "--cost",
        default="params",
        help="the cost axis of the Pareto front: params (default), memory (p99 per-step peak), time (training "
        "steps), bytes (adapter)",
    )
    args = parser.parse_args(argv)
    try:
        compare(
            args.paths,
            metric=args.metric,
            group_by=args.group_by.split(",") if args.group_by else None,
            aggregate_seeds=args.aggregate,
            filters=args.filter,
            out=args.out,
            plots=not args.no_plots,
            cost=args.cost,
            baseline=args.baseline,
        )
    except LoralabError as exc:
        print(f"loralab-compare: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a file that cannot be read or written, where it happened
        if not exc.filename:
            raise
        print(f"loralab-compare: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
