"""The random number generators' state: torch's (CPU, and CUDA's where it is in use), numpy's
and Python's `random`, captured as one dict and restored from it. A checkpoint saves each
process's state (`capture_all`), and a resumed process restores its own: dropout masks, data
shuffling and sampling then continue exactly as in an uninterrupted run.

The dict's keys (`rng_torch`, `rng_python`, `rng_numpy`, `rng_cuda`) are part of the checkpoint
format: training states written before this module existed restore the same way."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """This process's RNG states (CUDA's only when CUDA has been initialised: asking would start it)."""
    np_state = np.random.get_state()
    state = {
        "rng_torch": torch.get_rng_state(),
        "rng_python": random.getstate(),
        # numpy's key array as a list: a checkpoint is read back with torch.load(weights_only=True)
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Set the RNG states `capture` returned; a state without them (an older or foreign
    checkpoint) changes nothing, and CUDA's is skipped on a machine without CUDA."""
    if "rng_torch" in state:
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        kind, keys, *rest = state["rng_numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def capture_all(world_size: int) -> list[dict]:
    """Every process's RNG state, by rank (dropout masks differ between ranks: each resumes its
    own). With more than one process this is a collective: every rank must call it."""
    if world_size == 1:
        return [capture()]
    import torch.distributed as dist

    states: list = [None] * world_size
    dist.all_gather_object(states, capture())
    return states


def own(states: list[dict] | None, rank: int) -> dict | None:
    """This process's state among those `capture_all` saved (None when none were saved)."""
    return states[rank] if states else None
