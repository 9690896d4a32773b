"""The variant comparison table from the run directories' summary.json files (Markdown on stdout
and in <out>/table.md). usage: python experiments/variant_comparison/table.py outputs/variant_comparison"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    "variant",
    "trainable params",
    "adapter size",
    "final val loss",
    "exact match",
    "tokens/s",
    "peak RSS",
    "merge max abs err",
    "wall time",
    "status",
)


def row(run_dir: Path) -> list[str]:
    """One table row; a run without summary.json is reported as missing."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return [run_dir.name, *["-"] * (len(COLUMNS) - 2), "missing"]
    s = json.loads(path.read_text())
    after = s.get("after") or {}

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [
        run_dir.name,
        num(s.get("trainable_params"), ","),
        num(s["adapter_bytes"] / 1e6 if s.get("adapter_bytes") else None, ".2f") + " MB",
        num(after.get("val/loss"), ".4f"),
        num(100 * after["val/exact_match"] if "val/exact_match" in after else None, ".1f") + " %",
        num(s.get("tokens_per_s"), ".0f"),
        num(s["peak_rss_mb"] / 1024 if s.get("peak_rss_mb") else None, ".2f") + " GB",
        num(s.get("merge_max_abs_err"), ".2e"),
        num(s["wall_time_s"] / 60 if s.get("wall_time_s") else None, ".1f") + " min",
        s.get("status", "-"),
    ]


def main(out: Path) -> str:
    """Build the table for every run directory under `out`."""
    runs = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/variant_comparison")))
