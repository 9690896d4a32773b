"""loralab.rng: a captured state restores every generator, survives a checkpoint's data-only
load, and keeps the checkpoint format's keys."""

from __future__ import annotations

import random

import numpy as np
import torch

from loralab import rng


def draw() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_restore_repeats_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = rng.capture()
    assert {"rng_torch", "rng_python", "rng_numpy"} <= set(state)  # the checkpoint format's keys
    first = draw()
    torch.save({"state": state}, tmp_path / "state.ckpt")  # as a training state is saved and read
    loaded = torch.load(tmp_path / "state.ckpt", weights_only=True)["state"]
    assert draw() != first
    rng.restore(loaded)
    assert draw() == first


def test_a_state_without_rng_changes_nothing():
    torch.manual_seed(2)
    state = rng.capture()
    rng.restore({})  # a checkpoint from before RNG states were saved
    after = torch.rand(2)
    rng.restore(state)
    assert torch.equal(torch.rand(2), after)


def test_one_process_and_its_own_state():
    states = rng.capture_all(1)
    assert len(states) == 1 and rng.own(states, 0) is states[0]
    assert rng.own(None, 0) is None and rng.own([], 3) is None
