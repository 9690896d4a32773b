"""Forgetting, measured by default: the model's cross-entropy on a general-text probe at fit start
(the base, with the adapter as it starts) and at fit end (the final weights, those in adapter/ and
merged/). See loralab.forgetting for the probe and the measure.

It runs on every process (each takes its share of the blocks; the sums are reduced). A resumed run
keeps the measure from its first start (it is in every checkpoint). Under a sharded strategy
(FSDP, DeepSpeed ZeRO-3) the model runs outside Lightning's loops on a shard only: not measured,
and summary.json says so.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl

from loralab.callbacks.contributions import SummaryContributor
from loralab.distributed import sharded_strategy
from loralab.errors import ConfigError
from loralab.forgetting import block_length, cross_entropy_sums, load_probe, probe_blocks
from loralab.timing import timed

log = logging.getLogger(__name__)


class Forgetting(SummaryContributor, pl.Callback):
    """`forgetting = ce_after - ce_before` on the probe, in summary.json, the loggers and W&B."""

    def __init__(self, probe: str = "general_text", block_tokens: int = 256, batch_size: int = 8) -> None:
        for key, value in (("block_tokens", block_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "block_tokens" else 1):
                least = 2 if key == "block_tokens" else 1
                raise ConfigError(f"callbacks.forgetting.{key} must be an integer >= {least}, got {value!r}")
        self.probe = str(probe)
        self.text, self.sha256 = load_probe(self.probe)
        self.block_tokens = block_tokens
        self.batch_size = batch_size
        self.before: float | None = None
        # the run whose measure of the same weights was kept (loralab.before_cache), if read
        self.cached_from: str | None = None
        self.tokens = 0
        self.result: dict = {}

    @property
    def state_key(self) -> str:
        return "loralab_forgetting"

    def state_dict(self) -> dict:
        return {
            "ce_before": self.before,
            "tokens": self.tokens,
            "probe_sha256": self.sha256,
            "ce_before_cached_from": self.cached_from,
        }

    def load_state_dict(self, state: dict) -> None:
        # the base's measure from the run's first start, on the same probe
        if state.get("probe_sha256") == self.sha256 and state.get("ce_before") is not None:
            self.before, self.tokens = float(state["ce_before"]), int(state["tokens"])
            self.cached_from = state.get("ce_before_cached_from")

    def _why_not(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        if not pl_module.task.models_text:
            return f"the {pl_module.task.name} task's model has no language-model head"
        if sharded_strategy(trainer):
            strategy = type(trainer.strategy).__name__
            return f"not measured under {strategy}: its shards are gathered only in Lightning's loops"
        return None

    def _blocks(self, pl_module: pl.LightningModule) -> list[list[int]]:
        return probe_blocks(pl_module.tokenizer, self.text, block_length(pl_module.model, self.block_tokens))

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, blocks: list[list[int]] | None = None
    ) -> tuple[float, int]:
        """(mean cross-entropy per predicted token, predicted tokens), over every process's share."""
        model = pl_module.model
        blocks = self._blocks(pl_module) if blocks is None else blocks
        if not blocks:
            raise ConfigError(
                f"callbacks.forgetting.probe={self.probe!r} is shorter than one block of "
                f"{self.block_tokens} tokens: give a longer text or lower callbacks.forgetting.block_tokens"
            )
        world, rank = trainer.world_size, trainer.global_rank
        sums = cross_entropy_sums(model, pl_module.task, blocks[rank::world], self.batch_size, pl_module.device)
        if world > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return float(sums[0] / sums[1].clamp_min(1)), int(sums[1])

    @timed("forgetting")
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        why = self._why_not(trainer, pl_module)
        if why is not None or self.before is not None:  # not measured, or restored from a checkpoint
            return
        if trainer.ckpt_path is not None:
            log.warning(
                "forgetting is not measured: the checkpoint resumed from was written without the base's measure"
            )
            return
        cache = getattr(pl_module, "before_cache", None)
        blocks = None
        if cache is not None:
            from loralab.before_cache import inputs_digest

            blocks = self._blocks(pl_module)  # tokenized once: the key, and the measure on a miss
            inputs = inputs_digest(pl_module.task.name, blocks, self.batch_size)
            kept = cache.get("forgetting", inputs)
            if kept is not None:
                self.before, self.tokens = float(kept["figures"]["ce"]), int(kept["figures"]["tokens"])
                self.cached_from = kept.get("measured_by") or ""
                return
        self.before, self.tokens = self._measure(trainer, pl_module, blocks)
        if cache is not None:
            cache.put("forgetting", inputs, {"ce": self.before, "tokens": self.tokens})

    @timed("forgetting")
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        why = self._why_not(trainer, pl_module)
        if why is None and self.before is None:
            why = "the checkpoint resumed from holds no measure of the base"
        if why is not None:
            self.result = {"forgetting_skipped": why}
            return
        after, _ = self._measure(trainer, pl_module)
        figures = {
            "forgetting/ce_before": self.before,
            "forgetting/ce_after": after,
            "forgetting/delta": after - self.before,
        }
        self.result = {
            "forgetting": {
                **figures,
                "probe": self.probe,
                "probe_sha256": self.sha256,
                "tokens": self.tokens,
                "block_tokens": block_length(pl_module.model, self.block_tokens),
                **({"ce_before_cached_from": self.cached_from} if self.cached_from is not None else {}),
            }
        }
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=trainer.global_step)
        if trainer.is_global_zero:
            log.info(
                "forgetting on %s (%d tokens): cross-entropy %.4f before, %.4f after (%+.4f)",
                self.probe,
                self.tokens,
                self.before,
                after,
                after - self.before,
            )

    def summary_fields(self) -> dict:
        return self.result
