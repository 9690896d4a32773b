"""Writing summary.json and printing it as a table. A config refused before anything loads gets
its failed summary from here too: torch is imported only where CUDA's peak memory is asked."""

from __future__ import annotations

import io
import resource
import sys
from pathlib import Path

from loralab.console import to_log_files
from loralab.rundir import RunDir


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory() -> None:
    """Start a run's peak-memory count afresh: a sweep's jobs share one process under the basic
    launcher, and the process-wide high-water mark would carry from one job to the next.
    (Linux: VmHWM reset through /proc/self/clear_refs; CUDA: torch's peak statistics.)"""
    import torch

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak resident memory since the run started (Linux; elsewhere the process's), and peak GPU
    memory where CUDA is used."""
    import torch

    hwm_kb = _vm_hwm_kb()
    rss_kb = hwm_kb if hwm_kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """Write summary.json atomically."""
    return RunDir(run_dir).write_summary(summary)


def write_failed_summary(run_dir: str | Path, error: str, status: str = "failed") -> Path:
    """A failure (or an interruption) before training started: status and error only."""
    return write_summary(run_dir, {"status": status, "error": error, "run_dir": str(run_dir)})


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def forgetting_figures(summary: dict) -> dict[str, float]:
    """forgetting/ce_before, /ce_after and /delta from a summary (none where not measured)."""
    found = summary.get("forgetting") or {}
    return {k: v for k, v in found.items() if k.startswith("forgetting/") and isinstance(v, (int, float))}


def print_summary(summary: dict) -> None:
    """The end-of-run table: parameters, before/after metrics, merge result, where things are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loralab run: {summary.get('status')}", show_header=True)
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    before, after = summary.get("before") or {}, summary.get("after") or {}
    test = summary.get("test") or {}
    if test:  # the held-out split, on the checkpoint it was evaluated on: beside each val metric
        table.add_column(f"test (step {summary.get('test_step')})")
    for key in sorted(set(before) | set(after)):
        cells = [_fmt(before.get(key)), _fmt(after.get(key))]
        table.add_row(key, *cells, *([_fmt(test.get("test/" + key.split("/", 1)[-1]))] if test else []))
    forgetting = forgetting_figures(summary)
    if forgetting:  # cross-entropy on general text: the base, then the final weights
        table.add_row(
            "forgetting (general-text CE)",
            _fmt(forgetting["forgetting/ce_before"]),
            f"{_fmt(forgetting['forgetting/ce_after'])} ({forgetting['forgetting/delta']:+.4f})",
        )
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    if trainable is not None and total:
        table.add_row(
            "trainable / total params",
            f"{trainable:,} / {total:,}",
            f"{100 * trainable / total:.3f}%",
        )
    merge = summary.get("merge_passed")
    if merge is not None:
        table.add_row(
            "merge check",
            "passed" if merge else "FAILED",
            f"max abs err {_fmt(summary.get('merge_max_abs_err'))}"
            f" (reloaded {_fmt(summary.get('reload_max_abs_err'))})",
        )
    if summary.get("saved_adapter_max_rel_err") is not None:
        # adapter/ loaded with plain peft onto a fresh base, against merged/
        table.add_row("saved adapter vs merged", "", f"max rel err {_fmt(summary['saved_adapter_max_rel_err'])}")
    table.add_row("tokens/s (train)", _fmt(summary.get("tokens_per_s")), "")
    table.add_row("train time (s, steps only)", _fmt(summary.get("train_seconds")), "")
    steps = (summary.get("memory") or {}).get("rss_mb") or {}
    per_step = f"per step: max {_fmt(steps.get('max'))}, p99 {_fmt(steps.get('p99'))}" if steps else ""
    table.add_row("peak memory (RSS MB)", _fmt(summary.get("peak_rss_mb")), per_step)
    table.add_row("wall time (s)", _fmt(summary.get("wall_time_s")), "")
    if summary.get("error"):
        table.add_row("error", str(summary["error"]), "")
    # paths on lines of their own, whole: a table cell would cut them at the console's width
    # (80 columns whenever the output is a log file, not a terminal)
    paths = [
        f"{key.replace('_', ' ')}: {summary[key]}"
        for key in ("adapter_dir", "merged_dir", "run_dir")
        if summary.get(key)
    ]
    Console().print(table)
    if paths:
        print("\n".join(paths), flush=True)
    plain = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    plain.print(table)
    to_log_files("run summary\n" + plain.export_text() + "\n".join(paths))
