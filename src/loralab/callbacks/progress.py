"""The progress bar: Lightning's Rich bar, counting steps (runs stop by trainer.max_steps, so its
"Epoch 0/-2" meant nothing) without the logger's version, and only on a terminal (in a log file
or under SLURM the per-validation lines say how far the run is)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """RichProgressBar for step-counted runs, off when the output is not a terminal."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from rich.console import Console

        console = Console()
        if not (console.is_terminal or console.is_jupyter):
            self.disable()
        super().setup(trainer, pl_module, stage)

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's own says "Epoch N/<max_epochs - 1>", which is -2 without an epoch limit
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return "Training"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version string: nothing to read while training
        return items
