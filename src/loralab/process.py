"""What a training process does about signals before Lightning's loop takes them over."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from loralab.errors import Interrupted


@contextlib.contextmanager
def interrupts_before_fit() -> Iterator[None]:
    """Ctrl-C or SIGTERM while the data and the model load (before the training loop, where
    StopOnSignal takes over): the run stops with one line and the status `interrupted`, not a
    traceback and `failed`. Nothing was trained, so there is nothing to continue from."""
    message = (
        "stopped by {name} before training started (while loading the data and the model): nothing was "
        "trained; run the command again"
    )

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Interrupted(message.format(name="SIGTERM"), signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(message.format(name="SIGINT"), signal.SIGINT) from exc
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
