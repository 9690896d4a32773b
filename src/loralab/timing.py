"""Where a run's wall time goes: seconds per phase (validation, the test split, forgetting, the
merge check, saves), summary.json's `time` beside the training steps' own. A phase inside another
(the checkpoint saved at the end of a validation, the merged model saved by the merge check)
counts for itself only: the phases add up to at most the wall time, and `other` is the rest
(loading, set-up)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

PHASES = ("validate", "test", "forgetting", "merge_check", "save")


class PhaseClock:
    """Exclusive seconds per phase name; phases nest (the inner one pauses the outer)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, started]

    def start(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            self._add(*self._stack[-1], now)
        self._stack.append([name, now])

    def stop(self, name: str) -> None:
        if not self._stack or self._stack[-1][0] != name:  # unbalanced (a hook that failed): drop
            self._stack = [s for s in self._stack if s[0] != name]
            return
        now = time.perf_counter()
        self._add(*self._stack.pop(), now)
        if self._stack:
            self._stack[-1][1] = now

    def _add(self, name: str, started: float, now: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + now - started

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def summary(self, train: float, total: float) -> dict[str, float]:
        """summary.json's `time`: train (the steps), each phase, other, total."""
        figures = {"train": train, **{p: self.seconds.get(p, 0.0) for p in PHASES}}
        figures.update({k: v for k, v in self.seconds.items() if k not in figures})
        figures["other"] = max(0.0, total - sum(figures.values()))
        figures["total"] = total
        return figures


def phase_of(pl_module: Any, name: str):
    """The module's clock's phase `name` (nothing, for a module without a clock)."""
    clock = getattr(pl_module, "clock", None)
    return clock.phase(name) if clock is not None else nullcontext()


def timed(name: str) -> Callable:
    """A callback hook `(self, trainer, pl_module, ...)` counted as phase `name`."""

    def wrap(hook: Callable) -> Callable:
        @functools.wraps(hook)
        def run(self, trainer, pl_module, *args, **kwargs):
            with phase_of(pl_module, name):
                return hook(self, trainer, pl_module, *args, **kwargs)

        return run

    return wrap
