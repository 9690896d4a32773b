"""summary.json: status, metrics before and after training, sizes, speed, memory, wall time."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl

from loralab.callbacks.contributions import SummaryContributor
from loralab.reporting.summary import forgetting_figures, peak_memory, write_summary

log = logging.getLogger(__name__)

SCALARS = (
    "trainable_params",
    "adapter_bytes",
    "tokens_per_s",
    "peak_rss_mb",
    "peak_gpu_mb",
    "merge_max_rel_err",
    "final_train_loss",
    "train_seconds",
    "wall_time_s",
)


def publish_to_wandb(trainer: pl.Trainer, summary: dict) -> None:
    """The run's figures in the W&B run summary (`final/...`), where the runs table, parallel
    coordinates and scatter plots read them: metric against trainable parameters, per variant."""
    from lightning.pytorch.loggers import WandbLogger

    figures = {f"final/{k}": summary[k] for k in SCALARS if isinstance(summary.get(k), (int, float))}
    figures.update({f"final/{k}": v for k, v in (summary.get("after") or {}).items()})
    figures.update({f"final/{k}": v for k, v in (summary.get("test") or {}).items()})
    figures.update({f"final/{k}": v for k, v in forgetting_figures(summary).items()})
    figures.update({f"final/time/{k}": v for k, v in (summary.get("time") or {}).items()})
    for kind, stats in (summary.get("memory") or {}).items():  # final/memory/rss_mb/p99, ...
        if isinstance(stats, dict):
            figures.update({f"final/memory/{kind}/{k}": v for k, v in stats.items()})
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(figures)


class RunSummary(pl.Callback):
    """Collects what the run measured and writes summary.json at fit end or on failure.
    Other callbacks contribute through their `summary_fields()`."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)
        # what precision=auto chose on this machine, and why (set by loralab.train from the config)
        self.precision_choice: dict = {}
        self.started = time.time()
        self.before: dict = {}
        # figures before training read from loralab.before_cache: {"validate": the run that measured them}
        self.before_cached: dict = {}
        self.after: dict = {}
        self.after_step: int | None = None
        # every validation's figures with the optimizer steps done: the curves loralab-compare draws
        self.validations: list[dict] = []
        # the step of the latest validation of this fit (a checkpoint saved at another step, by a
        # guard or a signal, must not stamp the older figures with its step)
        self._validated_step: int | None = None
        self.written = False

    STATE_KEY = "loralab_run_summary"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before the checkpoint callbacks' on_validation_end, which save right after a validation
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validated_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if trainer.state.fn == "validate" and not self.after:
            self.record_before(trainer, metrics)
        elif trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.after = metrics
            self.after_step = trainer.global_step
            if not self.validations or self.validations[-1]["step"] != trainer.global_step:
                self.validations.append({"step": trainer.global_step, **metrics})
            where = f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")
            train_loss = trainer.callback_metrics.get("train/loss")
            self._report(
                trainer, where, {**({"train/loss": float(train_loss)} if train_loss is not None else {}), **metrics}
            )

    def record_before(self, trainer: pl.Trainer, metrics: dict, cached_from: str | None = None) -> None:
        """The figures before training (measured now, or kept from the run `cached_from`)."""
        self.before = metrics
        self.validations.append({"step": trainer.global_step, **metrics})
        if cached_from is not None:
            self.before_cached["validate"] = cached_from
        self._report(
            trainer, "before training" + (" (kept from an identical model)" if cached_from is not None else ""), metrics
        )

    @staticmethod
    def _report(trainer: pl.Trainer, where: str, metrics: dict) -> None:
        """One line per validation, on the console and in train.log: how far the run is."""
        if trainer.is_global_zero:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "val/ppl")
            log.info("%s: %s", where, shown)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # checkpoints are written right after a validation (before this callback's
        # on_validation_end): keep that validation's metrics, so that a run resumed from its
        # last checkpoint still reports them
        current = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self._validated_step != trainer.global_step:
            current = {}  # no validation at this step: callback_metrics holds an earlier one's
        validations = list(self.validations)
        if current and (not validations or validations[-1]["step"] != trainer.global_step):
            validations.append({"step": trainer.global_step, **current})
        checkpoint[self.STATE_KEY] = {
            "before": self.before,
            "before_cached": self.before_cached,
            "after": current or self.after,
            "after_step": trainer.global_step if current else self.after_step,
            "validations": validations,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(self.STATE_KEY) or {}
        self.before = state.get("before") or {}
        self.before_cached = dict(state.get("before_cached") or {})
        self.after = state.get("after") or {}
        self.after_step = state.get("after_step")
        self.validations = list(state.get("validations") or [])

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, status: str, error: str | None) -> dict:
        """The summary as a dict."""
        fields: dict = {}
        for cb in trainer.callbacks:
            if cb is not self and isinstance(cb, SummaryContributor):
                fields.update(cb.summary_fields())
        train_loss = trainer.callback_metrics.get("train/loss")
        wall = time.time() - self.started
        return {
            **peak_memory(),  # a callback that resets the peaks per step (MemoryProfile) gives the run's own
            "status": status,
            "error": error,
            "global_step": trainer.global_step,
            "before": self.before,
            # figures before training that were read, not measured: {"validate": the run that measured them}
            **({"before_cached": self.before_cached} if self.before_cached else {}),
            "after": self.after,
            "after_step": self.after_step,
            "validations": self.validations,
            "final_train_loss": None if train_loss is None else float(train_loss),
            **fields,
            "variant": pl_module.adapter.facts,
            "precision": {**self.precision_choice, "used": str(trainer.precision)},
            # the compute switches set to auto, what they came to and why
            **({"compute": dict(pl_module.compute_choices)} if getattr(pl_module, "compute_choices", None) else {}),
            "tokens_per_s": pl_module.tokens_seen / pl_module.train_seconds if pl_module.train_seconds else None,
            "train_tokens": pl_module.tokens_seen,
            "train_seconds": pl_module.train_seconds,
            "wall_time_s": wall,
            # where the wall time went: the steps, validation, test split, forgetting, merge check, saves
            "time": pl_module.clock.summary(train=pl_module.train_seconds, total=wall)
            if hasattr(pl_module, "clock")
            else {},
            "run_dir": str(self.run_dir),
        }

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            summary = self.collect(trainer, pl_module, "completed", None)
            write_summary(self.run_dir, summary)
            self.written = True
            publish_to_wandb(trainer, summary)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero:
            from loralab.errors import Interrupted

            # a second Ctrl-C stops at once (Lightning exits after this hook): still an interruption
            status = "interrupted" if isinstance(exception, (Interrupted, KeyboardInterrupt)) else "failed"
            message = f"{type(exception).__name__}: {exception}"
            if isinstance(exception, KeyboardInterrupt):
                message = f"KeyboardInterrupt: stopped at once by SIGINT (Ctrl-C) at step {trainer.global_step}"
            write_summary(self.run_dir, self.collect(trainer, pl_module, status, message))
            self.written = True
