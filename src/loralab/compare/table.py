"""The comparison table: one row per run (read through `RunDir`), filters, aggregation over seeds,
and the table as cells, Markdown and CSV."""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path
from typing import Any

from loralab.errors import LoralabError
from loralab.reporting.run_meta import FORMAT_VERSION
from loralab.reporting.summary import forgetting_figures
from loralab.rundir import FINISHED, REPLACED, RunDir, RunFileError

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
    ("p99_mb", "p99 step MB"),
    ("train_s", "train s"),
    ("tokens_per_s", "tokens/s"),
    ("val_loss", "val loss"),
    ("metric", "metric"),
    ("merge_err", "merge rel err"),
)
CONFIG_COLUMNS = ("variant", "r", "alpha", "targets")
# overrides already shown by a column of their own
SHOWN = {"variant", "variant.name", "variant.r", "variant.alpha", "variant.target_modules", "seed"}
NUMERIC = (
    "trainable",
    "adapter_bytes",
    "peak_mb",
    "p99_mb",
    "train_s",
    "tokens_per_s",
    "val_loss",
    "metric",
    "test_metric",
    "forgetting",
    "merge_err",
)
# the chosen metric on the held-out test split (runs with one), beside the val column it mirrors
TEST_COLUMN = ("test_metric", "test_metric")
# cross-entropy on general text after training minus before (runs that measured it)
FORGETTING_COLUMN = ("forgetting", "forgetting (CE delta)")
PREFERRED_METRICS = ("val/exact_match", "val/normalized_exact_match", "val/token_f1", "val/accuracy", "val/loss")
# the statuses whose figures are compared (aggregated rows carry "n/m completed" and count only those)
COMPARED = FINISHED


class CompareError(LoralabError):
    """Runs that cannot be compared, or nothing to compare."""


def load_run(run: RunDir, label: str) -> dict[str, Any]:
    """One table row for a run directory (a skipped sweep job reads the run it matched)."""
    try:
        return _row(run, label)
    except RunFileError as exc:  # a damaged summary.json or run_meta.json
        raise CompareError(str(exc)) from exc


def _row(run: RunDir, label: str) -> dict[str, Any]:
    summary = run.summary() or {}
    problem = run.adapter_problem(summary)
    if problem:  # the recorded adapter is not what is on disk: its figures describe something lost
        summary = {
            **summary,
            "status": "damaged",
            "error": f"the saved adapter is damaged: {problem}",
            "after": {},
            "test": {},
            "forgetting": {},
        }
    source = run
    if summary.get("status") == "skipped" and summary.get("same_as"):
        found = run.resolve_same_as(summary)
        if found is None:
            summary = {"status": "failed", "error": f"skipped as a repeat of {summary['same_as']}, which is gone"}
        else:
            source = found
            summary = {**(source.summary() or {}), "status": "skipped"}
            where = found.path.parent.name + "/" if found.path.parent.name == REPLACED else ""
            label = f"{label} (= {where}{found.name})"
    cfg = source.saved_config() or run.saved_config()
    meta = source.meta() or run.meta() or {}
    if (meta.get("format_version") or 0) > FORMAT_VERSION:
        raise CompareError(
            f"{run} was written by a newer loralab (format {meta['format_version']}, this one reads "
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
    memory = summary.get("memory") or {}
    p99 = (memory.get("gpu_allocated_mb") or memory.get("rss_mb") or {}).get("p99")
    return {
        "run": label,
        "run_dir": str(run),
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
        "p99_mb": p99,
        "train_s": summary.get("train_seconds"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "after": summary.get("after") or {},
        "test": summary.get("test") or {},
        "forgetting": forgetting_figures(summary).get("forgetting/delta"),
        "val_loss": (summary.get("after") or {}).get("val/loss"),
        "merge_err": summary.get("merge_max_rel_err"),
        "config": cfg,
        # what the run computed, apart from its seed: runs with the same setup are seeds of one config
        "setup": _setup_key(cfg),
        "overrides": overrides,
        # the directory its figures come from (a skipped job's: the run it repeated), for curves
        "source_dir": str(source),
        "curves": _curves(summary, source),
    }


def _curves(summary: dict, source: RunDir) -> dict[str, list[tuple[int, float]]]:
    """(optimizer steps done, value) per validation metric, from summary.json's `validations`; a
    run written before they were recorded: val loss from metrics.csv (the step of its last batch)."""
    validations = summary.get("validations")
    if not validations:
        return {"val/loss": source.metric_curve("val/loss")}
    keys = dict.fromkeys(k for v in validations for k in v if k != "step")
    return {k: [(int(v["step"]), float(v[k])) for v in validations if isinstance(v.get(k), (int, float))] for k in keys}


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


def labels(runs: list[RunDir]) -> list[str]:
    """Short names: the path below the runs' common parent."""
    if len(runs) == 1:
        return [runs[0].name]
    common = Path(os.path.commonpath([str(r.path) for r in runs]))
    return [str(r.path.relative_to(common)) for r in runs]


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


def lookup(row: dict, key: str) -> Any:
    """A row's value for `key`: a column, an override, or a dotted config key (None: none)."""
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


def group_key(row: dict, group_by: list[str] | None) -> tuple:
    """The group a run belongs to: its values of `group_by`, or its setup (all but the seed)."""
    return tuple(str(lookup(row, k)) for k in group_by) if group_by else (row["setup"] or row["run"],)


def apply_filters(rows: list[dict], filters: list[str]) -> list[dict]:
    """Keep rows where each `key=value` holds (a column name or a dotted config key)."""
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(
                f"--filter {item!r}: write key=value, e.g. --filter variant=lora or --filter variant.r=8"
            )
        if all(lookup(r, key) is None for r in rows):
            raise CompareError(f"--filter {item!r}: no run has {key!r}; columns: {', '.join(c for c, _ in COLUMNS)}")
        rows = [r for r in rows if same_value(lookup(r, key), value)]
    if not rows:
        raise CompareError(f"no run is left after the filters {' '.join(filters)}")
    return rows


def same_value(actual: Any, wanted: str) -> bool:
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
        groups.setdefault(group_key(row, group_by), []).append(row)
    group_by = group_by or list(CONFIG_COLUMNS)
    out = []
    for members in groups.values():
        done = [m for m in members if m["status"] in COMPARED]
        agg: dict[str, Any] = {k: lookup(members[0], k) for k in group_by}
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
        # each seed's metric, for the interval and the tests against a baseline (loralab.compare.stats)
        agg["samples"] = {m["seed"]: float(m["metric"]) for m in done if isinstance(m.get("metric"), (int, float))}
        for key in CONFIG_COLUMNS:
            agg.setdefault(key, lookup(members[0], key))
        agg["overrides"] = members[0]["overrides"]
        out.append(agg)
    return out


def fmt(key: str, value: Any, std: Any = None) -> str:
    """A cell's text: thousands separators for counts, the merge error in e-notation, 4
    significant digits for other numbers, `± std` when aggregated, `-` for nothing."""
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
    elif isinstance(value, float) and key in ("peak_mb", "p99_mb", "tokens_per_s"):
        text = f"{value:,.0f}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    if std is not None and isinstance(std, float):
        text += f" ± {std:.2g}" if key != "merge_err" else f" ± {std:.1e}"
    return text


def test_metric(metric: str) -> str:
    """The test split's name for a val metric (val/exact_match -> test/exact_match)."""
    return "test/" + metric.split("/", 1)[-1]


def columns(extra: list[str], test: bool = False, forgetting: bool = False) -> list[tuple[str, str]]:
    """The table's (key, header) pairs: the fixed ones with `extra` keys after seed, and the test
    split's figure and forgetting after the metric when a run has them."""
    cols = list(COLUMNS)
    at = [k for k, _ in cols].index("metric") + 1
    cols = cols[:at] + [TEST_COLUMN] * test + [FORGETTING_COLUMN] * forgetting + cols[at:]
    at = [k for k, _ in cols].index("seed") + 1
    return cols[:at] + [(k, k) for k in extra] + cols[at:]


def has_test(rows: list[dict]) -> bool:
    return any(r.get("test_metric") is not None for r in rows)


def optional_columns(rows: list[dict]) -> dict[str, bool]:
    """The columns shown only when a run has them."""
    return {"test": has_test(rows), "forgetting": any(r.get("forgetting") is not None for r in rows)}


def table_rows(
    rows: list[dict],
    metric: str,
    extra: list[str] = (),
    front_cost: str | None = None,
    baseline: str | None = None,
    intervals: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """The table's headers and its rows' cells (with the Pareto column, against `front_cost`,
    when there are points to compare; the 95% interval when aggregated; the difference and the
    verdict against a baseline)."""
    cols = columns(list(extra), **optional_columns(rows))
    at = [k for k, _ in cols].index("metric") + 1
    added = [("ci", "95% CI")] if intervals else []
    if baseline is not None:
        added += [("delta_text", f"Δ vs {baseline} [95% CI]"), ("verdict_text", "verdict")]
    if front_cost is not None:
        added.append(("pareto", f"front ({front_cost})"))
    cols = cols[:at] + added + cols[at:]
    names = {"metric": metric, "test_metric": f"{test_metric(metric)} (test split)"}
    headers = [names.get(key, header) for key, header in cols]
    aggregated = any("n" in r for r in rows)
    if aggregated:
        headers.insert(2, "n")
    body = []
    for row in rows:
        cells = [fmt(key, lookup(row, key), row.get(f"{key}_std") if aggregated else None) for key, _ in cols]
        if aggregated:
            cells.insert(2, str(row["n"]))
        body.append(cells)
    return headers, body


def write_markdown(path: Path, headers: list[str], body: list[list[str]], title: str, notes: list[str] = ()) -> None:
    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
    lines += ["", *notes] if notes else []
    path.write_text("\n".join(lines) + "\n")


def csv_table(rows: list[dict], metric: str, extra: list[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """compare.csv's header and rows (raw values, None for nothing): the table's columns, the
    statistics' fields, and every `_std` and `n`. Also the W&B Table of a sweep's report."""
    keys = [k for k, _ in columns(list(extra), **optional_columns(rows))]
    at = keys.index("metric") + 1
    found = ("ci", "delta", "delta_lo", "delta_hi", "test", "p", "p_holm", "verdict", "seeds_needed", "pareto")
    keys[at:at] = [k for k in found if any(k in r for r in rows)]
    stats = sorted({k for r in rows for k in r if k.endswith("_std") or k == "n"})
    names = {"metric": metric, "test_metric": test_metric(metric)}
    header = [names.get(k, k) for k in keys] + stats
    return header, [[lookup(row, k) for k in keys + stats] for row in rows]


def write_csv(path: Path, rows: list[dict], metric: str, extra: list[str] = ()) -> None:
    header, body = csv_table(rows, metric, extra)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in values] for values in body])
