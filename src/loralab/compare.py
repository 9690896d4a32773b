"""`loralab-compare`: one table of runs (a sweep, or any run directories), printed and written as
Markdown, CSV and PNG plots, with aggregation over seeds.

loralab-compare outputs/rank_alpha_sweep/multirun_2026-11-25_10-00-00
loralab-compare outputs/a/run1 outputs/b/run2 --metric val/loss --out report/
loralab-compare SWEEP --group-by variant,r --filter variant=lora --filter r=8
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from loralab.errors import LoralabError
from loralab.reporting.run_meta import FORMAT_VERSION
from loralab.rundir import HYDRA_DIR, RESOLVED_CONFIG, RUN_META, SUMMARY_FILE, adapter_problem, check_writable

# (column, header) in table order; `metric` is the chosen metric's column
COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("variant", "variant"),
    ("r", "r"),
    ("alpha", "alpha"),
    ("targets", "target modules"),
    ("seed", "seed"),
    ("trainable", "trainable"),
    ("adapter_bytes", "adapter bytes"),
    ("peak_mb", "peak MB"),
    ("tokens_per_s", "tokens/s"),
    ("val_loss", "val loss"),
    ("metric", "metric"),
    ("merge_err", "merge rel err"),
)
CONFIG_COLUMNS = ("variant", "r", "alpha", "targets")
# overrides already shown by a column of their own
SHOWN = {"variant", "variant.name", "variant.r", "variant.alpha", "variant.target_modules", "seed"}
NUMERIC = ("trainable", "adapter_bytes", "peak_mb", "tokens_per_s", "val_loss", "metric", "merge_err")
PREFERRED_METRICS = ("val/exact_match", "val/accuracy", "val/loss")
# the statuses whose figures are compared (aggregated rows carry "n/m completed" and count only those)
COMPARED = ("completed", "skipped")


class CompareError(LoralabError):
    """Runs that cannot be compared, or nothing to compare."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise CompareError(f"{path} is not valid JSON ({exc}): the run directory is damaged") from exc


def _config(run_dir: Path) -> dict:
    """The run's resolved config (config.yaml), or Hydra's saved one for runs that lack it."""
    from omegaconf import OmegaConf

    for name in (RESOLVED_CONFIG, f"{HYDRA_DIR}/config.yaml"):
        path = run_dir / name
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {}


def is_run_dir(path: Path) -> bool:
    """A run directory, or a sweep's job directory that died before writing anything of its own."""
    return any((path / name).exists() for name in (SUMMARY_FILE, RUN_META, HYDRA_DIR))


SUPERSEDED = "replaced"  # a sweep's earlier runs moved out of job directories that now hold others


def _runs_below(path: Path) -> list[Path]:
    """Run directories at any depth below `path` (not inside a run, not hidden, not superseded)."""
    found: list[Path] = []
    for child in sorted((p for p in path.iterdir() if p.is_dir()), key=_order):
        if child.name.startswith(".") or child.name == SUPERSEDED:
            continue
        found += [child] if is_run_dir(child) else _runs_below(child)
    return found


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories: each path itself when it is one, else every run below it (a sweep's jobs,
    or all of outputs/)."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise CompareError(f"{raw} is not a directory: pass run directories or sweep directories")
        if is_run_dir(path):
            runs.append(path)
            continue
        inside = _runs_below(path)
        if not inside:
            raise CompareError(
                f"no runs in {raw}: a run directory holds summary.json and run_meta.json; pass one, or a directory "
                "above runs (a sweep, outputs/)"
            )
        runs += inside
    return list(dict.fromkeys(runs))


def _order(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _metrics_curve(run_dir: Path, key: str = "val/loss") -> list[tuple[int, float]]:
    """(step, value) of `key` from metrics.csv (and earlier parts set aside on resume)."""
    points: dict[int, float] = {}
    for path in sorted(run_dir.glob("metrics*.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                    points[int(float(row["step"]))] = float(row[key])
    return sorted(points.items())


def load_run(run_dir: Path, label: str) -> dict[str, Any]:
    """One table row for a run directory (a skipped sweep job reads the run it matched)."""
    summary = _read_json(run_dir / SUMMARY_FILE)
    problem = adapter_problem(run_dir, summary)
    if problem:  # the recorded adapter is not what is on disk: its figures describe something lost
        summary = {**summary, "status": "damaged", "error": f"the saved adapter is damaged: {problem}", "after": {}}
    source = run_dir
    if summary.get("status") == "skipped" and summary.get("same_as"):
        from loralab.rundir import resolve_same_as

        found = resolve_same_as(summary, run_dir)
        if found is None:
            summary = {"status": "failed", "error": f"skipped as a repeat of {summary['same_as']}, which is gone"}
        else:
            source = found
            summary = {**_read_json(source / SUMMARY_FILE), "status": "skipped"}
            label = f"{label} (= {found.parent.name + '/' if found.parent.name == 'replaced' else ''}{found.name})"
    cfg = _config(source) or _config(run_dir)
    meta = _read_json(source / RUN_META) or _read_json(run_dir / RUN_META)
    if (meta.get("format_version") or 0) > FORMAT_VERSION:
        raise CompareError(
            f"{run_dir} was written by a newer loralab (format {meta['format_version']}, this one reads "
            f"{FORMAT_VERSION}): upgrade loralab to compare it"
        )
    overrides = {}
    for item in meta.get("overrides") or []:
        key, sep, value = item.partition("=")
        if sep and not key.lstrip("+~").startswith("hydra."):
            overrides[key.lstrip("+~")] = value
    variant = cfg.get("variant") or {}
    targets = variant.get("target_modules")
    peak = summary.get("peak_gpu_mb") or summary.get("peak_rss_mb")
    return {
        "run": label,
        "run_dir": str(run_dir),
        "status": summary.get("status") or "no summary",
        "error": summary.get("error"),
        "variant": variant.get("name"),
        "r": variant.get("r"),
        "alpha": variant.get("alpha"),
        "targets": ",".join(targets) if isinstance(targets, list) else targets,
        "seed": cfg.get("seed"),
        "trainable": summary.get("trainable_params"),
        "adapter_bytes": summary.get("adapter_bytes"),
        "peak_mb": peak,
        "tokens_per_s": summary.get("tokens_per_s"),
        "after": summary.get("after") or {},
        "val_loss": (summary.get("after") or {}).get("val/loss"),
        "merge_err": summary.get("merge_max_rel_err"),
        "config": cfg,
        # what the run computed, apart from its seed: runs with the same setup are seeds of one config
        "setup": _setup_key(cfg),
        "overrides": overrides,
        "curve": _metrics_curve(source),
    }


def _setup_key(cfg: dict) -> str | None:
    from loralab.reporting.run_meta import config_hash

    if not cfg:
        return None
    try:
        return config_hash({k: v for k, v in cfg.items() if k != "seed"})
    except Exception:  # a config that does not resolve (an old run's .hydra/config.yaml)
        return None


def varied_overrides(runs: list[dict]) -> list[str]:
    """Command-line keys whose values differ between the runs and that no column shows already
    (optimizer.lr in an Optuna search, data=... in a grid over tasks)."""
    keys = list(dict.fromkeys(k for r in runs for k in r["overrides"]))
    return [k for k in keys if k not in SHOWN and len({r["overrides"].get(k) for r in runs}) > 1]


def _labels(runs: list[Path]) -> list[str]:
    """Short names: the path below the runs' common parent."""
    if len(runs) == 1:
        return [runs[0].name]
    common = Path(os.path.commonpath([str(p) for p in runs]))
    return [str(p.relative_to(common)) for p in runs]


def choose_metric(rows: list[dict], metric: str | None) -> str:
    """The metric to compare; every completed run must have measured it."""
    done = [r for r in rows if r["status"] in COMPARED]
    if not done:
        statuses = "; ".join(f"{r['run']}: {r['status']}" for r in rows[:3]) + ("; ..." if len(rows) > 3 else "")
        raise CompareError(
            f"no completed run to compare: every run failed, was stopped, or has a damaged adapter ({statuses})"
        )
    if metric is None:
        # each run's headline metric (exact match for generation, accuracy for classification)
        primary = {next((m for m in PREFERRED_METRICS if m in r["after"]), None) for r in done}
        metric = primary.pop() if len(primary) == 1 else None
        if metric is None:
            raise CompareError(
                "the runs measured different metrics ("
                + "; ".join(f"{r['run']}: {', '.join(sorted(r['after'])) or 'none'}" for r in done[:3])
                + "): pass --metric with one they all have"
            )
        return metric
    lacking = [r["run"] for r in done if metric not in r["after"]]
    if lacking:
        have = sorted(set().union(*(r["after"] for r in done)))
        raise CompareError(
            f"--metric {metric} was not measured by {len(lacking)} run(s) ({', '.join(lacking[:3])}); "
            f"measured metrics: {', '.join(have)}"
        )
    return metric


def _get(row: dict, key: str) -> Any:
    if key in row:
        return row[key]
    if key in row.get("overrides", {}):
        return row["overrides"][key]
    node: Any = row["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_filters(rows: list[dict], filters: list[str]) -> list[dict]:
    """Keep rows where each `key=value` holds (a column name or a dotted config key)."""
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(
                f"--filter {item!r}: write key=value, e.g. --filter variant=lora or --filter variant.r=8"
            )
        if all(_get(r, key) is None for r in rows):
            raise CompareError(f"--filter {item!r}: no run has {key!r}; columns: {', '.join(c for c, _ in COLUMNS)}")
        rows = [r for r in rows if _same(_get(r, key), value)]
    if not rows:
        raise CompareError(f"no run is left after the filters {' '.join(filters)}")
    return rows


def _same(actual: Any, wanted: str) -> bool:
    """A filter's value against a run's: as numbers when both are numbers (alpha=16 matches 16.0)."""
    try:
        return float(actual) == float(wanted)
    except (TypeError, ValueError):
        return str(actual) == wanted


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict], group_by: list[str] | None) -> list[dict]:
    """One row per group of runs: numeric columns as mean and std over the completed ones, `n`
    their number. Without `group_by`, a group is the runs whose whole config is the same but
    for the seed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(str(_get(row, k)) for k in group_by) if group_by else (row["setup"] or row["run"],)
        groups.setdefault(key, []).append(row)
    group_by = group_by or list(CONFIG_COLUMNS)
    out = []
    for members in groups.values():
        done = [m for m in members if m["status"] in COMPARED]
        agg: dict[str, Any] = {k: _get(members[0], k) for k in group_by}
        agg.update(
            run=", ".join(m["run"] for m in members),
            status=f"{len(done)}/{len(members)} completed",
            seed=",".join(str(m["seed"]) for m in members),
            n=len(done),
            config=members[0]["config"],
        )
        for key in NUMERIC:
            values = [float(m[key]) for m in done if isinstance(m.get(key), (int, float))]
            if values:
                agg[key], agg[f"{key}_std"] = _mean_std(values)
        for key in CONFIG_COLUMNS:
            agg.setdefault(key, _get(members[0], key))
        agg["overrides"] = members[0]["overrides"]
        out.append(agg)
    return out


def _fmt(key: str, value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        try:  # an override's value: 0.0013846905247421062 -> 0.001385
            value = float(value) if any(c in value for c in ".e") else value
        except ValueError:
            pass
    if key in ("trainable", "adapter_bytes") and isinstance(value, (int, float)):
        text = f"{value:,.0f}"
    elif key == "merge_err" and isinstance(value, float):
        text = f"{value:.1e}"
    elif isinstance(value, float) and key in ("peak_mb", "tokens_per_s"):
        text = f"{value:,.0f}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    if std is not None and isinstance(std, float):
        text += f" ± {std:.2g}" if key != "merge_err" else f" ± {std:.1e}"
    return text


def columns(extra: list[str]) -> list[tuple[str, str]]:
    """The table's (key, header) pairs: the fixed ones with `extra` keys after seed."""
    cols = list(COLUMNS)
    at = [k for k, _ in cols].index("seed") + 1
    return cols[:at] + [(k, k) for k in extra] + cols[at:]


def table_rows(rows: list[dict], metric: str, extra: list[str] = ()) -> tuple[list[str], list[list[str]]]:
    cols = columns(list(extra))
    headers = [metric if key == "metric" else header for key, header in cols]
    aggregated = any("n" in r for r in rows)
    if aggregated:
        headers.insert(2, "n")
    body = []
    for row in rows:
        cells = [_fmt(key, _get(row, key), row.get(f"{key}_std") if aggregated else None) for key, _ in cols]
        if aggregated:
            cells.insert(2, str(row["n"]))
        body.append(cells)
    return headers, body


def write_markdown(path: Path, headers: list[str], body: list[list[str]], title: str) -> None:
    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[dict], metric: str, extra: list[str] = ()) -> None:
    keys = [k for k, _ in columns(list(extra))]
    stats = sorted({k for r in rows for k in r if k.endswith("_std") or k == "n"})
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([metric if k == "metric" else k for k in keys] + stats)
        for row in rows:
            writer.writerow(["" if _get(row, k) is None else _get(row, k) for k in keys + stats])


def plot(rows: list[dict], runs: list[dict], metric: str, out: Path, extra: list[str] = ()) -> list[Path]:
    """metric against trainable parameters (one series per variant, and per value of whatever
    else varies besides the rank: alpha, targets, other overrides; std bars when aggregated)
    and val loss curves per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = [k for k in ("alpha", "targets", *extra) if len({str(_get(r, k)) for r in rows}) > 1]

    def series_of(row: dict) -> str:
        return " ".join([str(row.get("variant")), *(f"{k}={_fmt(k, _get(row, k))}" for k in varying)])

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
    runs = [load_run(d, label) for d, label in zip(run_dirs, _labels(run_dirs), strict=True)]
    runs = apply_filters(runs, filters or [])
    metric = choose_metric(runs, metric)
    for run in runs:
        run["metric"] = run["after"].get(metric)
    extra = varied_overrides(runs)
    seeds_per_group: dict[tuple, set] = {}
    for run in runs:
        key = tuple(str(_get(run, k)) for k in group_by) if group_by else (run["setup"] or run["run"],)
        seeds_per_group.setdefault(key, set()).add(run["seed"])
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


if __name__ == "__main__":
    main()
