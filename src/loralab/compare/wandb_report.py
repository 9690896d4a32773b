"""A sweep's comparison in W&B: one run in the sweep's group (job type `compare`) holding the
table as a W&B Table (compare.csv's columns and values) and the plots as images, so the dashboard
has the report beside the jobs' runs. The run's id follows from the sweep directory: a relaunched
sweep updates the same run online (offline, each report is its own run file to sync)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("loralab")


def report_run_id(sweep_dir: Path) -> str:
    return "compare-" + hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def publish(report: dict, sweep_dir: Path, settings: dict, group: str, tags: list[str]) -> Path | None:
    """Log `report` (what loralab.compare.compare returned) to W&B with the jobs' project, entity
    and group; returns the run's local directory (None when W&B is disabled)."""
    import wandb

    from loralab.compare.table import csv_table
    from loralab.loggers import check_wandb_env, wandb_offline

    check_wandb_env()
    if os.environ.get("WANDB_MODE") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    header, body = csv_table(report["rows"], report["metric"], report["extra"])
    table = wandb.Table(columns=header, data=[[_cell(v) for v in values] for values in body], allow_mixed_types=True)
    images = {f"compare/{p.stem}": wandb.Image(str(p)) for p in report["files"] if Path(p).suffix == ".png"}
    run = wandb.init(
        project=settings.get("project"),
        entity=settings.get("entity"),
        group=group,
        job_type="compare",
        name=f"{group} comparison",
        id=report_run_id(sweep_dir),
        resume="allow",
        dir=str(sweep_dir),
        tags=list(dict.fromkeys([*tags, "compare"])),
        config={
            "metric": report["metric"],
            "runs": len(report["runs"]),
            "rows": len(report["rows"]),
            "aggregated": report["aggregated"],
            "sweep_dir": str(sweep_dir),
        },
        mode="offline" if wandb_offline() else None,
    )
    try:
        run.log({"compare/table": table, **images})
        run.summary.update({"compare/title": report["title"], "compare/notes": "\n".join(report["notes"])})
        where = Path(run.dir).parent
    finally:
        run.finish()
    log.info("the comparison is in W&B: group %s, job type compare (%s)", group, where)
    return where


def _cell(value: Any) -> Any:
    """A W&B Table cell: numbers and text as they are, anything else as its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
