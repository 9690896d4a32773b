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

from loralab.compare.plots import plot
from loralab.compare.table import (
    CompareError,
    aggregate,
    apply_filters,
    choose_metric,
    group_key,
    labels,
    load_run,
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
) -> dict:
    """Build the comparison; print it; write compare.md, compare.csv and the plots into `out`."""
    out_dir = _out_dir(out, paths)
    run_dirs = find_runs(paths)
    runs = [load_run(d, label) for d, label in zip(run_dirs, labels(run_dirs), strict=True)]
    runs = apply_filters(runs, filters or [])
    metric = choose_metric(runs, metric)
    for run in runs:
        run["metric"] = run["after"].get(metric)
        # the same metric on the held-out test split, where the run has one (never used to choose)
        run["test_metric"] = run["test"].get(test_metric(metric))
    extra = varied_overrides(runs)
    seeds_per_group: dict[tuple, set] = {}
    for run in runs:
        seeds_per_group.setdefault(group_key(run, group_by), set()).add(run["seed"])
    if aggregate_seeds not in ("auto", "seed", "none"):
        raise CompareError(f"--aggregate {aggregate_seeds!r}: choose auto, seed or none")
    do_aggregate = aggregate_seeds == "seed" or (
        aggregate_seeds == "auto" and any(len(s) > 1 for s in seeds_per_group.values())
    )
    rows = aggregate(runs, group_by) if do_aggregate else runs
    headers, body = table_rows(rows, metric, extra)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md", out_dir / "compare.csv"]
    write_markdown(written[0], headers, body, title)
    write_csv(written[1], rows, metric, extra)
    if plots:
        written += plot(rows, runs, metric, out_dir, extra)
    if echo:
        print("written: " + ", ".join(str(p) for p in written))
    return {"metric": metric, "rows": rows, "runs": runs, "files": written, "aggregated": do_aggregate}


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
        )
    except LoralabError as exc:
        print(f"loralab-compare: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a file that cannot be read or written, where it happened
        if not exc.filename:
            raise
        print(f"loralab-compare: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
