"""Multirun bookkeeping: resuming a sweep (skip finished jobs, continue interrupted ones) and a
Hydra callback that collects every job's status, and the comparison report, when it ends."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from loralab.rundir import FINISHED, RunDir, SweepDir, quote_override

log = logging.getLogger("loralab")


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

    run = RunDir(cfg.paths.run_dir)
    sweep = SweepDir(run.path.parent)
    wanted = config_hash(cfg)
    own_hash, own_status = run.state()
    if own_hash == wanted and own_status == "completed":
        log.info("sweep resume: %s already completed this config (hash %s), skipped", run, wanted)
        return run.summary(lenient=True)
    if own_hash is not None and own_hash != wanted and not write:
        own_hash = None  # rank 0 moves it away; this rank trains like rank 0
    if own_hash is not None and own_hash != wanted:
        keep = sweep.set_aside(run, own_hash)
        log.info("sweep resume: %s held another config (hash %s), moved to %s", run, own_hash, keep)
        own_hash = None
    other = sweep.completed(wanted, besides=run)
    if other is not None:
        log.info("sweep resume: %s already completed this config (hash %s), skipped", other, wanted)
        summary = {
            "status": "skipped",
            "error": None,
            "same_as": str(other),
            "config_hash": wanted,
            "run_dir": str(run),
        }
        if write:
            run.write_summary(summary)
        return summary
    if own_hash == wanted and cfg.get("resume") is None and cfg.get("ckpt_path") is None:
        if own_status == "damaged":
            log.warning(
                "sweep resume: %s completed but its adapter is damaged: rebuilding it from its newest checkpoint",
                run,
            )
        else:
            log.info("sweep resume: %s was interrupted, continuing from its newest checkpoint", run)
        with open_dict(cfg):
            cfg.resume = "auto"
    return None


def collect_jobs(sweep_dir: str | Path) -> list[dict]:
    """One entry per job directory (those Hydra created, with .hydra/): its status and error from
    summary.json, or `failed` with "no summary.json" when the job died before writing one."""
    return SweepDir(sweep_dir).jobs()


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
NAMES_SHOWN = 3  # a sweep over more experiment names is named by its first and a count


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides as Hydra's grid sweeper will launch them (its `params` from the config,
    then the command line's); None for sweepers that choose their trials as they go (Optuna)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def sweep_name(names: list[str]) -> str:
    """The name of a sweep whose jobs have these experiment names: the one name they share, else
    the distinct names joined by `+` (the first and a count when there are many)."""
    distinct = list(dict.fromkeys(names))
    if len(distinct) <= NAMES_SHOWN:
        return "+".join(distinct)
    return f"{distinct[0]}+{len(distinct) - 1}_more"


def check_jobs(config: DictConfig, jobs: list[list[str]]) -> list[str]:
    """Compose and check every job of a sweep as a single run would be checked (values, the
    model's location, targets against its module tree) before the first one starts: a typo in one
    value of a grid is refused in seconds, not after the jobs before it have trained. Returns the
    jobs' experiment names."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    loader = GlobalHydra.instance().config_loader()
    names, skeletons = [], {}
    hydra_config = HydraConfig.instance().cfg
    try:
        for num, job in enumerate(jobs):
            job_cfg = loader.load_sweep_config(config, list(job))
            HydraConfig.instance().set_config(job_cfg)  # for ${hydra:...}, as when the job runs
            with read_write(job_cfg), open_dict(job_cfg):
                del job_cfg["hydra"]
            names.append(_check_job(job_cfg, num, job, skeletons))
    finally:
        HydraConfig.instance().cfg = hydra_config
    return names


def _check_job(job_cfg: DictConfig, num: int, job: list[str], skeletons: dict) -> str:
    """One job's checks (those of a single run: loralab.validation.check_config); its experiment name."""
    from loralab.errors import LoralabError
    from loralab.validation import check_config

    try:
        check_config(job_cfg, skeletons)
    except LoralabError as error:
        raise type(error)(f"sweep job {num} ({' '.join(job)}): {error}; nothing was run") from error
    return str(job_cfg.experiment_name)


def pin_sweep_dir(config: DictConfig, names: list[str] | None) -> Path:
    """Resolve the sweep directory once, for the whole sweep, and hand it to every job (Hydra
    resolves `hydra.sweep.dir` again in each job's own config, where a default such as
    `outputs/${experiment_name}` would follow the job's variant and split the sweep). When the jobs'
    experiment names differ, the directory is named by all of them (`dates_lora+dates_vera`)."""
    from omegaconf import read_write

    with read_write(config), open_dict(config):
        if names and len(set(names)) > 1:
            kept = config._get_node("experiment_name")._value()
            config.experiment_name = sweep_name(names)
            sweep_dir = str(config.hydra.sweep.dir)
            config.experiment_name = kept
        else:
            sweep_dir = str(config.hydra.sweep.dir)
        config.hydra.sweep.dir = sweep_dir
        hydra_overrides = [o for o in config.hydra.overrides.hydra if not o.startswith("hydra.sweep.dir=")]
        config.hydra.overrides.hydra = [*hydra_overrides, f"hydra.sweep.dir={quote_override(sweep_dir)}"]
    return Path(sweep_dir)


class SweepReport(Callback):
    """Checks every job of a sweep before the first one runs and gives the sweep one directory
    (on_multirun_start). At the end of a multirun, writes sweep_summary.json (every job's status,
    error and overrides) into the sweep directory and exits non-zero with a count when any job
    failed. Jobs themselves do not stop the sweep when they fail (see loralab.train)."""

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from loralab.errors import LoralabError
        from loralab.rundir import check_writable

        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        try:
            jobs = sweep_jobs(config)
            names = check_jobs(config, jobs) if jobs else None
            sweep_dir = pin_sweep_dir(config, names)
            check_writable(sweep_dir, "hydra.sweep.dir")
            check_writable(config.paths.cache_dir, "paths.cache_dir (LORALAB_CACHE)")
        except LoralabError as exc:
            if full_error:
                raise
            print(f"loralab: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except Exception as exc:  # Hydra turns a callback's exception into a warning and goes on
            import traceback

            if full_error:
                traceback.print_exc()
            print(
                f"loralab: error: preparing the sweep failed ({type(exc).__name__}: {exc}): nothing was run",
                file=sys.stderr,
            )
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = SweepDir(config.hydra.sweep.dir)
        sweep_dir = sweep.path
        jobs = sweep.jobs()
        failed = [j for j in jobs if j["status"] not in FINISHED]
        sweep.write_summary({"jobs": len(jobs), "failed": len(failed), "runs": jobs})
        if len(failed) < len(jobs):
            from loralab.compare import compare
            from loralab.errors import LoralabError

            report = None
            try:  # the comparison table and plots of the sweep's jobs, beside sweep_summary.json
                report = compare([j["run_dir"] for j in jobs], out=sweep_dir, metric=self.metric)
            except LoralabError as exc:
                log.warning("no comparison report for %s: %s", sweep_dir, exc)
            except Exception:  # the report must not hide the sweep's own result
                log.exception("the comparison report for %s failed", sweep_dir)
            if report is not None and OmegaConf.select(config, "logger.wandb") is not None:
                publish_report(config, report, sweep_dir)
        if failed:
            detail = "; ".join(f"job {j['job']}: {j['error']}" for j in failed[:3])
            print(
                f"loralab: {len(failed)} of {len(jobs)} sweep jobs failed ({detail}); see {sweep.summary_path}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def publish_report(config: DictConfig, report: dict, sweep_dir: Path) -> None:
    """The sweep's comparison as a W&B run of its group (loralab.compare.wandb_report), when the
    jobs log to W&B; a failure to log is a warning, never the sweep's failure."""
    from loralab.compare.wandb_report import publish
    from loralab.loggers import group_of_sweep

    settings = {k: OmegaConf.select(config, f"logger.wandb.{k}") for k in ("project", "entity", "group")}
    group = settings["group"] or group_of_sweep(sweep_dir, OmegaConf.select(config, "paths.output_dir"))
    tags = [str(t) for t in (OmegaConf.select(config, "tags") or [])]
    try:
        publish(report, sweep_dir, settings, group, tags)
    except Exception as exc:  # noqa: BLE001 - W&B down, a bad key: the report is on disk anyway
        log.warning("the comparison was not logged to W&B (%s: %s); it is in %s", type(exc).__name__, exc, sweep_dir)
