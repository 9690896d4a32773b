"""A Lightning callback for the throughput benchmark (added with `+callbacks.step_timer=...`):
when each training step starts and the tokens of its batch, written to `out` when training ends."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class StepTimer(pl.Callback):
    """Records step start times (perf_counter and wall clock) and real tokens per batch."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.starts: list[float] = []
        self.wall: list[float] = []
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: dict, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.wall.append(time.time())
        self.tokens.append(int(batch["attention_mask"].sum()))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        Path(self.out).write_text(json.dumps({"starts": self.starts, "wall": self.wall, "tokens": self.tokens}))
