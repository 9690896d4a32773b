"""Multirun bookkeeping: resuming a sweep (skip finished jobs, continue interrupted ones) and a
Hydra callback that collects every job's status, and the comparison report, when it ends."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from loralab.io import write_json

SWEEP_SUMMARY = "sweep_summary.json"
REPLACED = "replaced"  # earlier jobs moved out of a job directory that now runs another config
log = logging.getLogger("loralab")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def job_state(run_dir: Path) -> tuple[str | None, str | None]:
    """(config hash, status) of what a run directory holds; (None, None) when it holds no run."""
    meta, summary = _read(run_dir / "run_meta.json"), _read(run_dir / "summary.json")
    return meta.get("config_hash"), summary.get("status")


def resolve_same_as(summary: dict, run_dir: str | Path) -> Path | None:
    """The run a skipped job stands for. Its `same_as` path, or, when a later relaunch moved
    that run into replaced/, wherever in the sweep the completed run with its hash now is."""
    target, wanted = summary.get("same_as"), summary.get("config_hash")
    if not target:
        return None
    if job_state(Path(target)) == (wanted, "completed"):
        return Path(target)
    sweep_dir = Path(run_dir).parent
    for meta in sorted({*sweep_dir.glob("*/run_meta.json"), *sweep_dir.glob(f"{REPLACED}/*/run_meta.json")}):
        if job_state(meta.parent) == (wanted, "completed"):
            return meta.parent
    return None


def plan_job(cfg: DictConfig, write: bool = True) -> dict | None:
    """Before a multirun job trains, in a sweep directory that may hold an earlier launch:
    - its config hash already completed (in its own job directory or another): skip it;
    - its own directory holds the same config, interrupted: continue it (resume=auto);
    - its own directory holds a different config (the grid changed): move that run to
      `<sweep>/replaced/<job>-<hash>/` so nothing saved is lost, then train.
    Returns the summary to keep for a skipped job, None when the job trains.
    `write=False` (a job's other ranks, when a cluster starts them): decide the same without
    moving or writing anything; every case decides alike whether or not rank 0 has moved
    things yet."""
    from loralab.reporting.run_meta import config_hash

    run_dir = Path(cfg.paths.run_dir)
    sweep_dir = run_dir.parent
    wanted = config_hash(cfg)
    own_hash, own_status = job_state(run_dir)
    if own_hash == wanted and own_status == "completed":
        log.info("sweep resume: %s already completed this config (hash %s), skipped", run_dir, wanted)
        return _read(run_dir / "summary.json")
    if own_hash is not None and own_hash != wanted and not write:
        own_hash = None  # rank 0 moves it away; this rank trains like rank 0
    if own_hash is not None and own_hash != wanted:
        keep = sweep_dir / REPLACED / f"{run_dir.name}-{own_hash}"
        n = 1
        while keep.exists():  # the same config moved out before: keep both
            n += 1
            keep = sweep_dir / REPLACED / f"{run_dir.name}-{own_hash}-{n}"
        keep.mkdir(parents=True)
        for item in run_dir.iterdir():
            if item.name not in (".hydra", "train.log"):
                shutil.move(str(item), keep / item.name)
        log.info("sweep resume: %s held another config (hash %s), moved to %s", run_dir, own_hash, keep)
        own_hash = None
    for other in sorted({*sweep_dir.glob("*/run_meta.json"), *sweep_dir.glob(f"{REPLACED}/*/run_meta.json")}):
        other = other.parent
        if other != run_dir and job_state(other) == (wanted, "completed"):
            log.info("sweep resume: %s already completed this config (hash %s), skipped", other, wanted)
            summary = {
                "status": "skipped",
                "error": None,
                "same_as": str(other),
                "config_hash": wanted,
                "run_dir": str(run_dir),
            }
            if write:
                write_json(run_dir / "summary.json", summary)
            return summary
    if own_hash == wanted and cfg.get("resume") is None and cfg.get("ckpt_path") is None:
        log.info("sweep resume: %s was interrupted, continuing from its newest checkpoint", run_dir)
        with open_dict(cfg):
            cfg.resume = "auto"
    return None


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
            data = _read(summary)
            entry.update(status=data.get("status", "unknown"), error=data.get("error"))
            if data.get("same_as"):
                found = resolve_same_as(data, job_dir)
                entry["same_as"] = str(found) if found else None
                if found is None:
                    entry.update(status="failed", error=f"skipped as a repeat of {data['same_as']}, which is gone")
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

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] not in ("completed", "skipped")]
        write_json(sweep_dir / SWEEP_SUMMARY, {"jobs": len(jobs), "failed": len(failed), "runs": jobs})
        if len(failed) < len(jobs):
            from loralab.compare import compare
            from loralab.errors import LoralabError

            try:  # the comparison table and plots, beside sweep_summary.json
                compare([str(sweep_dir)], out=sweep_dir, metric=self.metric)
            except LoralabError as exc:
                log.warning("no comparison report for %s: %s", sweep_dir, exc)
            except Exception:  # the report must not hide the sweep's own result
                log.exception("the comparison report for %s failed", sweep_dir)
        if failed:
            detail = "; ".join(f"job {j['job']}: {j['error']}" for j in failed[:3])
            print(
                f"loralab: {len(failed)} of {len(jobs)} sweep jobs failed ({detail}); see {sweep_dir / SWEEP_SUMMARY}",
                file=sys.stderr,
            )
            raise SystemExit(1)
