"""The held-out test split, evaluated once after training: on the best checkpoint by the monitored
metric (`checkpoint: best`, the default) or on the final weights (`last`), with the task's metrics,
as `test/...` in summary.json, the loggers and the W&B run summary. Sweeps keep selecting on val.

It runs first at fit end, while every process still takes part (the sums are reduced across them),
before the final adapter is saved and the merge check runs, and puts the final weights back
afterwards: adapter/, merged/ and the model train() returns are the last step's. A variant that
changes the base weights (Delta-LoRA) evaluates the final weights: a checkpoint holds the adapter's
tensors only. Under a sharded strategy (FSDP, DeepSpeed ZeRO-3) the test split is not evaluated:
outside Lightning's loops the model's shards are not gathered; summary.json says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

from loralab.callbacks.adapter_checkpoint import AdapterCheckpoint, load_state, trainable_state
from loralab.callbacks.contributions import SummaryContributor
from loralab.distributed import clean_name, sharded_strategy
from loralab.errors import CheckpointError, ConfigError
from loralab.rundir import STATE_FILE
from loralab.timing import timed

log = logging.getLogger(__name__)
CHOICES = ("best", "last")


class TestEvaluation(SummaryContributor, pl.Callback):
    """Evaluates the datamodule's test split (if it has one) at fit end."""

    def __init__(self, checkpoint: str = "best") -> None:
        if checkpoint not in CHOICES:
            raise ConfigError(f"callbacks.test_split.checkpoint must be one of {list(CHOICES)}, got {checkpoint!r}")
        self.checkpoint = checkpoint
        self.result: dict = {}

    def _best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str | None, str | None]:
        """(the checkpoint directory to evaluate, or None for the final weights; why not the best)."""
        if self.checkpoint == "last":
            return None, "asked for the last step (callbacks.test_split.checkpoint=last)"
        saver = next((cb for cb in trainer.callbacks if isinstance(cb, AdapterCheckpoint)), None)
        best = saver.best() if saver is not None else None
        if best is None:
            return None, "no scored checkpoint"
        if pl_module.adapter.spec.updates_base_weights:
            return None, "the variant changes the base weights, which a checkpoint does not hold"
        if not (Path(best) / STATE_FILE).is_file():
            return None, "the checkpoint's training state is a directory of shards (DeepSpeed)"
        return best, None

    @timed("test")
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or getattr(dm, "test_set", None) is None:
            return
        if sharded_strategy(trainer):
            strategy = type(trainer.strategy).__name__
            why = f"not evaluated under {strategy}: its shards are gathered only in Lightning's loops"
            self.result = {"test_skipped": why}
            log.warning("the test split was %s; evaluate the saved adapter with trainer=gpu", why)
            return
        best, why_not = self._best(trainer, pl_module)
        final = None
        if best is not None:
            saved = load_state(Path(best) / STATE_FILE)["state_dict"]
            final = trainable_state(pl_module)
            if set(saved) != set(final):
                raise CheckpointError(
                    f"{best} does not hold the run's trainable tensors ({len(saved)} vs {len(final)}): "
                    "the test split cannot be evaluated on it; set callbacks.test_split.checkpoint=last"
                )
            self._load(pl_module, saved)
        try:
            metrics = pl_module.evaluate(dm.test_dataloader(), dm.test_generation_set, "test")
        finally:
            if final is not None:
                self._load(pl_module, final)
        step = int(Path(best).name.split("-")[-1]) if best is not None else trainer.global_step
        self.result = {
            "test": metrics,
            "test_checkpoint": best or "last",
            "test_step": step,
            **({"test_checkpoint_why": why_not} if why_not and self.checkpoint == "best" else {}),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not k.endswith("/ppl"))
            log.info("test split (step %d%s): %s", step, ", the best checkpoint" if best else "", shown)

    @staticmethod
    def _load(pl_module: pl.LightningModule, tensors: dict) -> None:
        """Copy tensors (clean names) into the module's trainable parameters, in place."""
        params = {clean_name(n): p for n, p in pl_module.named_parameters() if p.requires_grad}
        for name, value in tensors.items():
            params[name].data.copy_(value.to(params[name].device, params[name].dtype))

    def summary_fields(self) -> dict:
        return self.result
