"""Memory per training step, for the cost side of a comparison: each step's peak (on Linux the
process's resident high-water mark, reset when the step starts; on CUDA the allocator's allocated
and reserved peaks, reset likewise), summarised over the steps as max, 99th percentile (nearest
rank) and mean. It also keeps the run's overall peak (loading, every step, and what follows
training: the merge check), which the resets would otherwise hide from summary.json's
`peak_rss_mb` and `peak_gpu_mb`."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch

from loralab.callbacks.contributions import SummaryContributor
from loralab.reporting.summary import peak_memory

MB = 2**20


def _reset_rss_peak() -> bool:
    """Reset the resident high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def spread(values: list[float]) -> dict[str, float] | None:
    """max, p99 (nearest rank) and mean of per-step figures; None for none."""
    if not values:
        return None
    ranked = sorted(values)
    return {
        "max": ranked[-1],
        "p99": ranked[max(math.ceil(0.99 * len(ranked)) - 1, 0)],
        "mean": sum(ranked) / len(ranked),
    }


class MemoryProfile(SummaryContributor, pl.Callback):
    """`memory` in summary.json: per-step peaks (rss_mb; gpu_allocated_mb and gpu_reserved_mb on
    CUDA) as max / p99 / mean over this process's training steps."""

    def __init__(self) -> None:
        self.rss: list[float] = []
        self.allocated: list[float] = []
        self.reserved: list[float] = []
        self.overall: dict[str, float] = {}
        self.per_step_rss = True

    def _keep_overall(self) -> None:
        """Fold the peaks since the last reset into the run's overall peaks."""
        for key, value in peak_memory().items():
            self.overall[key] = max(self.overall.get(key, 0.0), value)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._keep_overall()  # loading, the previous step, validation and checkpointing
        self.per_step_rss = _reset_rss_peak()
        if _cuda():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        figures = peak_memory()
        if self.per_step_rss:
            self.rss.append(figures["peak_rss_mb"])
        if _cuda():
            self.allocated.append(torch.cuda.max_memory_allocated() / MB)
            self.reserved.append(torch.cuda.max_memory_reserved() / MB)
        self._keep_overall()

    def summary_fields(self) -> dict:
        self._keep_overall()
        per_step = {
            "rss_mb": spread(self.rss),
            "gpu_allocated_mb": spread(self.allocated),
            "gpu_reserved_mb": spread(self.reserved),
        }
        return {
            "memory": {"steps": max(len(self.rss), len(self.allocated)), **{k: v for k, v in per_step.items() if v}},
            **self.overall,
        }
