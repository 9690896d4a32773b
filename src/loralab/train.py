"""The Hydra entry point: compose -> validate -> data -> model + variant -> Lightning fit.

loralab-train                      # the default experiment
loralab-train model=tiny variant.r=4
python -m loralab.train data=word_sort trainer.max_steps=200
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from loralab.cli import (
    HELP_FLAGS,
    close_wandb,
    interrupts_before_fit,
    precheck_composition,
    print_help,
    report_failure,
)
from loralab.rundir import METRICS_CSV, RESOLVED_CONFIG, SUMMARY_FILE
from loralab.validation import register_schemas, validate

# conf/ beside src/ (the package is installed editable from the repository)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one experiment; return (summary, objects)."""
    # 1. config checks, before anything loads: a bad config is refused without importing torch
    typed = validate(cfg)
    with interrupts_before_fit():  # Ctrl-C / SIGTERM while loading: one line, status interrupted
        trainer, module, datamodule, callbacks, loggers, ckpt = _setup(cfg, typed)

    import torch

    from loralab.distributed import end_distributed, env_rank, is_rank_zero

    if not is_rank_zero():
        # every process built the same adapter from the seed; from here each draws its own
        # dropout masks (rank 0 keeps the stream one process has)
        torch.manual_seed(cfg.seed + env_rank())
    failed = True
    try:
        try:
            if cfg.validate_before and ckpt is None:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            # the training state is read as data only: no pickled code from a checkpoint runs
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except SystemExit:
            if trainer.interrupted:  # Lightning ends a Ctrl-C it caught itself with exit(1)
                raise _stopped_at_once(trainer, callbacks) from None
            raise
        freeze = next((cb for cb in callbacks if hasattr(cb, "check_unchanged")), None)
        if freeze is not None:
            freeze.check_unchanged(module.adapter)
        reporter = next((cb for cb in callbacks if hasattr(cb, "collect")), None)
        summary = reporter.collect(trainer, module, "completed", None) if reporter else {"status": "completed"}
        failed = False
    finally:
        end_distributed(trainer, failed)
    return summary, {
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
        "callbacks": callbacks,
    }


def _stopped_at_once(trainer, callbacks: list) -> Exception:
    """Ctrl-C that Lightning handled (a second one during training, or one during the validation
    before it): what was kept, as one line with Ctrl-C's exit code."""
    import signal

    from loralab.errors import Interrupted

    saver = next((cb for cb in callbacks if hasattr(cb, "kept_message")), None)
    kept = saver.kept_message() if saver is not None else "this run saves no checkpoints"
    return Interrupted(
        f"stopped by SIGINT at step {trainer.global_step}, without a new checkpoint; {kept}", signal.SIGINT
    )


def _setup(cfg: DictConfig, typed) -> tuple:
    """Data, model + variant, module, callbacks, loggers and trainer, ready to fit."""
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    from loralab.callbacks import find_checkpoint
    from loralab.data.datamodule import LoraDataModule
    from loralab.distributed import env_rank, is_rank_zero
    from loralab.io import set_aside
    from loralab.launcher import adopt_launcher
    from loralab.models.checks import check_causal
    from loralab.module import LoraModule
    from loralab.reporting.run_meta import flat_config, write_run_meta
    from loralab.reporting.summary import reset_peak_memory
    from loralab.variants import get_variant
    from loralab.variants.registry import BuildContext

    # Lightning adds console handlers of its own when imported; Hydra's handlers already print
    # (and write train.log), so let its records go there once
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

    reset_peak_memory()
    run_dir = Path(cfg.paths.run_dir)
    # several processes (trainer=ddp_cpu, ddp, fsdp, ...): run-level files are rank 0's alone
    zero = is_rank_zero()
    # Lightning learns the global rank inside fit; loggers used before then must know it now
    # (a second node's launching process would otherwise count as rank 0)
    rank_zero_only.rank = env_rank()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    source = instantiate(cfg.model)  # cheap: checks the model's location
    spec = get_variant(typed.variant.name)
    spec.check_targets(source.skeleton(typed.data.task), typed.variant, typed.data.task)  # the module tree, no weights
    ckpt = find_checkpoint(cfg.ckpt_path, cfg.resume, run_dir / "checkpoints")
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if ckpt is not None and zero:
        # Lightning's CSV logger deletes an existing metrics.csv; keep the earlier part of the run
        set_aside(run_dir / METRICS_CSV)
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]

    tokenizer = source.load_tokenizer()  # 2. data, before the model: data errors come fast
    datamodule = LoraDataModule(typed.data, tokenizer, cache_dir=cfg.paths.cache_dir)
    datamodule.setup("fit")
    if zero:
        write_run_meta(run_dir, cfg, source.describe(), datamodule.describe())

    source.check_head(typed.data.task, datamodule.labels)
    base = source.load_model(typed.data.task, datamodule.labels)  # 3. model + variant
    if typed.data.task == "causal_lm":
        check_causal(base, source.name)
    gpu = cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    context = BuildContext(
        datamodule, run_dir if zero else None, Path(ckpt).parent if ckpt else None, cfg.seed, "cuda" if gpu else "cpu"
    )
    adapter = spec.build(base, typed.variant, typed.data.task, context)
    callbacks = [*adapter.callbacks, *callbacks]
    module = LoraModule(
        adapter,
        tokenizer,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        max_new_tokens=typed.data.max_new_tokens,
        generation_batch_size=typed.data.eval_batch_size,
    )

    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)  # 4. fit
    # workers train the config rank 0 saved, not a re-composed command line
    adopt_launcher(trainer, run_dir / RESOLVED_CONFIG, run_dir, cfg)
    data_facts = {f"data/{split}_{k}": v for split, st in datamodule.stats.items() for k, v in st.items()}
    for lg in loggers if zero else []:
        lg.log_hyperparams({**flat_config(cfg), **data_facts, "data/fingerprint": datamodule.fingerprint})
    return trainer, module, datamodule, callbacks, loggers, ckpt


def run(cfg: DictConfig) -> dict:
    """train() with the run-level guarantees: a failed summary on early errors, W&B closed."""
    from loralab.distributed import is_rank_zero
    from loralab.errors import Interrupted
    from loralab.reporting.summary import print_summary, write_failed_summary

    run_dir = Path(cfg.paths.run_dir)
    failed = True
    try:
        if _in_multirun():
            from loralab.sweep import plan_job

            # a relaunched sweep: finished configs are skipped (rank 0 moves and writes; a job's
            # other ranks, when a cluster starts them, decide alike without touching anything)
            kept = plan_job(cfg, write=is_rank_zero())
            if kept is not None:
                failed = False
                return kept
        summary, _ = train(cfg)
        failed = False
    except BaseException as exc:
        # the RunSummary callback writes failures during fit; earlier ones are recorded here, unless
        # the directory holds an earlier run's summary (a resume that failed to start): that is kept
        if not (run_dir / SUMMARY_FILE).exists() and is_rank_zero():
            status = "interrupted" if isinstance(exc, Interrupted) else "failed"
            write_failed_summary(run_dir, f"{type(exc).__name__}: {exc}", status)
        raise
    finally:
        close_wandb(failed)
    if is_rank_zero():
        print_summary(summary)
    return summary


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def objective_value(summary: dict, metric: str | None) -> float | None:
    """The value a sweeper (Optuna) optimises: `metric` from the final validation, None when the
    run failed or did not measure it (the sweeper records the trial as failed)."""
    if not metric:
        return None
    after = summary.get("after") or {}
    value = after.get(metric)
    if value is None and after:
        logging.getLogger("loralab").error(
            "objective %r was not measured by this run (it measured %s): set objective= one of them",
            metric,
            ", ".join(sorted(after)),
        )
    if value is None and summary.get("same_as"):  # a skipped job: the earlier run's value
        from loralab.rundir import read_json, resolve_same_as

        found = resolve_same_as(summary, summary.get("run_dir", "."))
        value = (read_json(found / SUMMARY_FILE).get("after") or {}).get(metric) if found else None
    return float(value) if isinstance(value, (int, float)) else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        return objective_value(run(cfg), cfg.get("objective"))
    except Exception as exc:
        report_failure(exc)
        return None


def main() -> None:
    """Console script `loralab-train`."""
    from loralab.console import quiet_libraries, take_verbose_flag
    from loralab.secrets import check_command_line

    sys.argv = [sys.argv[0], *take_verbose_flag(sys.argv[1:])]
    quiet_libraries()  # before the libraries load: their bars and start-up lines off (--verbose: on)
    refused = check_command_line(sys.argv[1:])  # before Hydra saves the command line
    if refused:
        print(f"loralab: error: {refused}", file=sys.stderr)
        sys.exit(2)
    register_schemas()
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print_help(sys.argv[1:], CONF_DIR)
        return
    run_dir = precheck_composition(sys.argv[1:], CONF_DIR)
    if run_dir is not None:  # the time-stamped directory is taken: this run gets its own
        sys.argv.append(run_dir)
    _hydra_main()


if __name__ == "__main__":
    main()
