"""The cost side of a run: training time (steps only) and each step's peak memory, summarised as
max, p99 and mean, beside the run's overall peak."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from loralab.callbacks.memory import spread
from loralab.train import train

HOG_MB = 400


class Hog(pl.Callback):
    """Holds HOG_MB of touched memory during one training step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.buffer = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.buffer = torch.ones(HOG_MB * 2**20 // 4)  # float32: every page written

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.buffer = None


def test_spread_is_max_nearest_rank_p99_and_mean():
    assert spread([]) is None
    values = [float(v) for v in range(1, 201)]  # 200 steps: the 198th value is the 99th percentile
    assert spread(values) == {"max": 200.0, "p99": 198.0, "mean": 100.5}
    assert spread([5.0]) == {"max": 5.0, "p99": 5.0, "mean": 5.0}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-step RSS peaks need Linux's clear_refs")
def test_each_steps_peak_is_its_own_and_the_runs_peak_is_kept(make_cfg):
    """A step that holds 400 MB more shows it in its own peak, not in the others'; the run's
    overall peak still covers it (the per-step resets do not hide it)."""
    cfg = make_cfg(
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "+callbacks.hog._target_=tests.integration.test_costs.Hog",
        "+callbacks.hog.step=3",
    )
    summary, _objects = train(cfg)
    memory = json.loads((Path(cfg.paths.run_dir) / "summary.json").read_text())["memory"]
    assert memory["steps"] == 6 == summary["global_step"]
    rss = memory["rss_mb"]
    assert rss["max"] >= rss["p99"] >= rss["mean"] > 0
    assert summary["peak_rss_mb"] >= rss["max"]
    assert summary["train_seconds"] > 0 and summary["wall_time_s"] > summary["train_seconds"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-step RSS peaks need Linux's clear_refs")
def test_the_step_that_holds_more_memory_is_the_one_that_shows_it(make_cfg):
    from loralab.callbacks import MemoryProfile

    cfg = make_cfg(
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        "+callbacks.hog._target_=tests.integration.test_costs.Hog",
        "+callbacks.hog.step=3",
    )
    _, objects = train(cfg)
    profile = next(cb for cb in objects["callbacks"] if isinstance(cb, MemoryProfile))
    steps = profile.rss
    others = steps[:3] + steps[4:]
    # the planted allocation (all but page-rounding slack), less what the steps vary by on this machine
    assert steps[3] - max(others) > 0.9 * HOG_MB - (max(others) - min(others))
    assert max(others) < steps[3]
