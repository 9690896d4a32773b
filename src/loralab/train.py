"""The training recipe: validate -> data -> model + adapter -> module -> callbacks, loggers and
trainer -> fit -> report. `train(cfg)` runs one experiment from a composed config; `run(cfg)` adds
the run-level guarantees (a failed summary on early errors, a sweep job's planning, W&B closed).

The command line (`loralab-train`, `python -m loralab`) lives in loralab.cli, which checks a config
before this module, and torch with it, is imported.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from loralab.callbacks import AdapterCheckpoint, Freeze, RunSummary, find_checkpoint
from loralab.config.paths import CONF_DIR
from loralab.data.datamodule import LoraDataModule
from loralab.distributed import end_distributed, env_rank, is_rank_zero, resolve_precision
from loralab.errors import Interrupted
from loralab.io import set_aside
from loralab.launcher import adopt_launcher
from loralab.loggers import close_wandb
from loralab.module import LoraModule
from loralab.process import interrupts_before_fit
from loralab.reporting.run_meta import flat_config, write_run_meta
from loralab.reporting.summary import print_summary, reset_peak_memory, write_failed_summary
from loralab.rundir import METRICS_CSV, RESOLVED_CONFIG, SUMMARY_FILE
from loralab.sweep import plan_job
from loralab.validation import validate
from loralab.variants import get_variant
from loralab.variants.registry import BuildContext

__all__ = ["CONF_DIR", "run", "train"]


def _switch_or_auto(value: object) -> bool | str:
    """A compute switch that also takes `auto` (resolved where the device is known)."""
    return "auto" if value == "auto" else bool(value)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one experiment; return (summary, objects)."""
    # 1. config checks, before anything loads: a bad config is refused without importing torch
    resolve_precision(cfg)
    typed = validate(cfg)
    with interrupts_before_fit():  # Ctrl-C / SIGTERM while loading: one line, status interrupted
        trainer, module, datamodule, callbacks, loggers, ckpt = _setup(cfg, typed)

    if not is_rank_zero():
        # every process built the same adapter from the seed; from here each draws its own
        # dropout masks (rank 0 keeps the stream one process has)
        torch.manual_seed(cfg.seed + env_rank())
    failed = True
    try:
        try:
            if cfg.validate_before and ckpt is None:
                # iterating a DataLoader draws its base seed from torch's generator: the validation
                # before training (measured or read from the cache) leaves the training's random
                # stream as it found it, so all three train the same adapter
                with torch.random.fork_rng(devices=[]):
                    _validate_before(cfg, trainer, module, datamodule, callbacks)
            # the training state is read as data only: no pickled code from a checkpoint runs
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except SystemExit:
            if trainer.interrupted:  # Lightning ends a Ctrl-C it caught itself with exit(1)
                raise _stopped_at_once(trainer, callbacks) from None
            raise
        freeze = next((cb for cb in callbacks if isinstance(cb, Freeze)), None)
        if freeze is not None:
            freeze.check_unchanged(module.adapter)
        reporter = next((cb for cb in callbacks if isinstance(cb, RunSummary)), None)
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


def _validate_before(cfg: DictConfig, trainer, module, datamodule, callbacks: list) -> None:
    """The validation before training, or its figures kept from a run that measured the same
    weights on the same data and machine (loralab.before_cache)."""
    from loralab.before_cache import inputs_digest

    reporter = next((cb for cb in callbacks if isinstance(cb, RunSummary)), None)
    cache = module.before_cache if reporter is not None else None
    if cache is not None:
        val_batches = list(datamodule.val_dataloader())
        rows = [(r["prompt_ids"], r["reference"]) for r in getattr(datamodule, "generation_set", None) or []]
        inputs = inputs_digest(
            module.task.name,
            val_batches,
            rows,
            module.max_new_tokens,
            module.generation_batch_size,
            module.metrics,
            getattr(module.answer_pattern, "pattern", None),
            module._labelled(),
            # generation's and (since the loss's too) the loss's shared prefix
            ("shared_prefix", module.shared_prefix, "loss"),
            # the loss and the answers from one pass per prompt (when on: another rounding)
            *((("prompt_once", True),) if module.prompt_once else ()),
        )
        kept = cache.get("validate", inputs)
        if kept is not None:
            metrics = {k: float(v) for k, v in kept["figures"].items()}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
            reporter.record_before(trainer, metrics, cached_from=kept.get("measured_by") or "")
            return
    trainer.validate(module, datamodule=datamodule, verbose=False)
    if cache is not None and reporter.before:
        cache.put("validate", inputs, reporter.before)


def _stopped_at_once(trainer, callbacks: list) -> Exception:
    """Ctrl-C that Lightning handled (a second one during training, or one during the validation
    before it): what was kept, as one line with Ctrl-C's exit code."""

    saver = next((cb for cb in callbacks if isinstance(cb, AdapterCheckpoint)), None)
    kept = saver.kept_message() if saver is not None else "this run saves no checkpoints"
    return Interrupted(
        f"stopped by SIGINT at step {trainer.global_step}, without a new checkpoint; {kept}", signal.SIGINT
    )


def _setup(cfg: DictConfig, typed) -> tuple:
    """Data, model + variant, module, callbacks, loggers and trainer, ready to fit."""

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
    task = source.task_for(typed.data)  # from the data format and the model's config
    if typed.data.packing and task.name != "causal_lm":
        from loralab.errors import ConfigError

        raise ConfigError(
            f"data.packing packs causal LM examples; this run's task is {task.name}: set data.packing=false"
        )
    spec = get_variant(typed.variant.name)
    spec.check_targets(source.skeleton(task.name), typed.variant, task.name)  # the module tree, no weights
    ckpt = find_checkpoint(cfg.ckpt_path, cfg.resume, run_dir / "checkpoints")
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    for cb in callbacks:
        if isinstance(cb, RunSummary) and cfg.get("precision_choice"):
            cb.precision_choice = dict(cfg.precision_choice)
    if ckpt is not None and zero:
        # Lightning's CSV logger deletes an existing metrics.csv; keep the earlier part of the run
        set_aside(run_dir / METRICS_CSV)
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]

    tokenizer = source.load_tokenizer()  # 2. data, before the model: data errors come fast
    datamodule = LoraDataModule(typed.data, tokenizer, cache_dir=cfg.paths.cache_dir, task=task)
    datamodule.setup("fit")
    if zero:
        write_run_meta(run_dir, cfg, source.describe(), datamodule.describe())

    source.check_head(task.name, datamodule.labels)
    base = source.load_model(task.name, datamodule.labels)  # 3. model + variant
    task.check_model(base, source.name)
    if typed.data.packing:
        from loralab.tasks.packing import check_packing

        check_packing(base, source.name)
    gpu = cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    context = BuildContext(
        datamodule=datamodule,
        run_dir=run_dir if zero else None,
        resume_dir=Path(ckpt).parent if ckpt else None,
        seed=cfg.seed,
        device="cuda" if gpu else "cpu",
    )
    adapter = spec.build(base, typed.variant, task.name, context)
    share = bool(OmegaConf.select(cfg, "compute.shared_dropout", default=False))
    fast = bool(OmegaConf.select(cfg, "compute.fast_dropout", default=False))
    if share or fast:
        from loralab.lora_dropout import install_dropout

        shared, fast_masks = install_dropout(adapter.model, share=share, fast=fast)
        if shared or fast_masks:
            logging.getLogger("loralab").info(
                "LoRA dropout: %d adapted layers share one mask per input with their siblings; %d draw "
                "16-bit masks on CPU",
                shared,
                fast_masks,
            )
    callbacks = [*adapter.callbacks, *callbacks]
    module = LoraModule(
        adapter,
        tokenizer,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        max_new_tokens=typed.data.max_new_tokens,
        generation_batch_size=typed.data.eval_batch_size,
        metrics=typed.data.metrics,
        answer_regex=typed.data.answer_regex,
        labelled_head=bool(OmegaConf.select(cfg, "compute.labelled_head", default=False)),
        compile_blocks=bool(OmegaConf.select(cfg, "compute.compile", default=False)),
        shared_prefix=bool(OmegaConf.select(cfg, "compute.shared_prefix", default=False)),
        shared_prefix_train=_switch_or_auto(OmegaConf.select(cfg, "compute.shared_prefix_train", default=False)),
        prompt_once=bool(OmegaConf.select(cfg, "compute.prompt_once", default=False)),
    )

    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)  # 4. fit
    if cfg.get("cache_before", False) and trainer.world_size == 1:
        from loralab.before_cache import BeforeCache

        module.before_cache = BeforeCache.for_model(
            module.model,
            cfg.paths.cache_dir,
            str(trainer.precision),
            trainer.strategy.root_device.type,
            str(run_dir),
        )
    # workers train the config rank 0 saved, not a re-composed command line
    adopt_launcher(trainer, run_dir / RESOLVED_CONFIG, run_dir, cfg)
    data_facts = {f"data/{split}_{k}": v for split, st in datamodule.stats.items() for k, v in st.items()}
    for lg in loggers if zero else []:
        lg.log_hyperparams({**flat_config(cfg), **data_facts, "data/fingerprint": datamodule.fingerprint})
    return trainer, module, datamodule, callbacks, loggers, ckpt


def run(cfg: DictConfig) -> dict:
    """train() with the run-level guarantees: a failed summary on early errors, W&B closed."""

    run_dir = Path(cfg.paths.run_dir)
    failed = True
    try:
        resolve_precision(cfg)  # before the config is hashed: the job's hash is of what it computes
        if _in_multirun():
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

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":  # the command used to live here: say where it is now
    print(
        "loralab: error: python -m loralab.train is the training recipe, not the command: run loralab-train "
        "(or python -m loralab) with the same overrides",
        file=sys.stderr,
    )
    sys.exit(2)
