"""Multirun bookkeeping: a Hydra callback that collects every job's status at the end of a sweep."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from loralab.io import write_json

SWEEP_SUMMARY = "sweep_summary.json"


def _job_order(path: Path) -> tuple:
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def collect_jobs(sweep_dir: str | Path) -> list[dict]:
    """One entry per job directory (those Hydra created, with .hydra/): its status and error from
    summary.json, or `failed` with "no summary.json" when the job died before writing one."""
    jobs = []
    for job_dir in sorted(Path(sweep_dir).glob("*/.hydra"), key=_job_order):
        job_dir = job_dir.parent
        summary = job_dir / "summary.json"
        entry: dict[str, Any] = {"job": job_dir.name, "run_dir": str(job_dir)}
        if summary.is_file():
            data = json.loads(summary.read_text())
            entry.update(status=data.get("status", "unknown"), error=data.get("error"))
        else:
            entry.update(status="failed", error="no summary.json: the job stopped before training")
        overrides = job_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            entry["overrides"] = list(OmegaConf.load(overrides))
        jobs.append(entry)
    return jobs


class SweepReport(Callback):
    """At the end of a multirun, writes sweep_summary.json (every job's status, error and
    overrides) into the sweep directory and exits non-zero with a count when any job failed.
    Jobs themselves do not stop the sweep when they fail (see loralab.train)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] != "completed"]
        write_json(sweep_dir / SWEEP_SUMMARY, {"jobs": len(jobs), "failed": len(failed), "runs": jobs})
        if failed:
            detail = "; ".join(f"job {j['job']}: {j['error']}" for j in failed[:3])
            print(
                f"loralab: {len(failed)} of {len(jobs)} sweep jobs failed ({detail}); see {sweep_dir / SWEEP_SUMMARY}",
                file=sys.stderr,
            )
            raise SystemExit(1)
