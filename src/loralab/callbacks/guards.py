"""Two guards on a running fit.

NonFiniteGuard: the first nan or inf in the loss, the gradients or the adapter's weights stops the
run with the step's number, before the optimizer writes it into the weights; the checkpoints
already saved are kept, and summary.json says `failed`.

StopOnSignal: SIGTERM (what a scheduler sends before preempting) or Ctrl-C lets the current step
finish (and its validation, when one is due), saves a checkpoint, marks the run `interrupted` and
exits with 128 + the signal's number. `resume=auto` in the same run directory continues from there.
A second Ctrl-C stops at once, without a checkpoint. After the last step (while the final adapter is
written and the merge checked) the handlers are Lightning's and Python's again: SIGTERM lets the run
finish, Ctrl-C stops it.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from loralab.errors import Interrupted, NonFiniteError
from loralab.rundir import continue_command

log = logging.getLogger(__name__)


def _checkpointer(trainer: pl.Trainer) -> Any:
    from loralab.callbacks.adapter_checkpoint import AdapterCheckpoint

    return next((cb for cb in trainer.callbacks if isinstance(cb, AdapterCheckpoint)), None)


def _kept(trainer: pl.Trainer) -> str:
    saver = _checkpointer(trainer)
    return saver.kept_message() if saver is not None else "this run saves no checkpoints"


def _agree(trainer: pl.Trainer, ok: bool) -> bool:
    """True when every process found its values finite (a collective when there are several):
    all processes stop at the same step, none is left waiting in the next all-reduce."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(ok, all=True))
    return ok


def _peaks(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's largest magnitude (nan where it holds one), as one float32 vector. Plain tensors
    on one device take one multi-tensor reduction (on a GPU a few kernel launches for all of them,
    where a reduction per tensor cost two each: ~840 per check for SmolLM2's 420 adapter tensors,
    two checks a step); anything else (several devices, tensor subclasses) one at a time."""
    with torch.no_grad():
        plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
        if plain and len({t.device for t in tensors}) == 1:
            # the infinity norm keeps nan (CUDA's multi-tensor kernel takes the nan-propagating max)
            return torch.stack(torch._foreach_norm(tensors, float("inf"), dtype=torch.float32))
        return torch.stack([t.abs().amax().float().to(tensors[0].device) for t in tensors])


def _first_bad(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding a nan or inf (one device sync for all of them)."""
    if not named:
        return None
    peaks = _peaks([t for _, t in named])
    if bool(torch.isfinite(peaks).all()):
        return None
    finite = torch.isfinite(peaks).tolist()
    return next(name for (name, _), ok in zip(named, finite, strict=True) if not ok)


class NonFiniteGuard(pl.Callback):
    """Stops training at the first nan or inf in the loss (before backward), a gradient (before the
    optimizer step) or an adapter weight (after it)."""

    HINT = "lower optimizer.lr, keep trainer.gradient_clip_val set, or train in precision=32-true"

    def __init__(self, check_gradients: bool = True, check_weights: bool = True) -> None:
        self.check_gradients = check_gradients
        self.check_weights = check_weights

    def _stop(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteError(f"{what} at step {trainer.global_step}: training stopped; {_kept(trainer)} ({self.HINT})")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not _agree(trainer, finite):
            value = loss.detach().float().item() if finite is False else "finite here, not on another process"
            self._stop(trainer, f"the training loss is {value}")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # fp16's gradient scaler skips steps with inf gradients and lowers its scale: by design
        if not self.check_gradients or str(trainer.precision).startswith("16"):
            return
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = _first_bad(grads)
        if not _agree(trainer, bad is None):
            self._stop(trainer, f"the gradient of {bad or 'a tensor on another process'} is not finite")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.check_weights:
            return
        weights = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        bad = _first_bad(weights)
        if not _agree(trainer, bad is None):
            self._stop(trainer, f"the adapter weight {bad or 'of another process'} is not finite after the update")


class StopOnSignal(pl.Callback):
    """SIGTERM / Ctrl-C during training: finish the step, save a checkpoint, exit 128 + signal."""

    def __init__(self, run_dir: str, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGINT")) -> None:
        self.run_dir = run_dir
        self.signals = [getattr(signal, name) for name in signals]
        self.received: int | None = None
        self._pending = False
        self._previous: dict[int, Any] = {}

    # ---- handlers, installed for the training loop only ---------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        self._pending = False
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in self.signals:
            # replaces Lightning's SIGTERM handler for the loop; restored in on_train_end
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.received = signum
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping%s",
            signal.Signals(signum).name,
            " (Ctrl-C again stops at once, without one)" if signum == signal.SIGINT else "",
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    # ---- stopping after a step ------------------------------------------------------------
    def _requested(self, trainer: pl.Trainer) -> bool:
        if trainer.world_size > 1:  # a signal reaches the processes at different moments
            return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))
        return self.received is not None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # After an optimizer step, where Lightning saves its own step checkpoints and knows how to
        # resume from. When a validation follows this step, the stop waits for it (and for its
        # checkpoint): a run resumed from here would skip that validation, and its data loader
        # would not draw from the RNG as the uninterrupted run's does.
        if _accumulating(trainer, batch_idx) or not self._requested(trainer):
            return
        last = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if last or _validation_due(trainer):
            self._pending = True
            return
        self._stop(trainer, pl_module, scored=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop(trainer, pl_module, scored=True)

    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule, scored: bool) -> None:
        signum = self.received or signal.SIGTERM  # another process's signal under DDP
        saver = _checkpointer(trainer)
        where = "none (callbacks.adapter_checkpoint is off)"
        if saver is not None:
            # a validation's checkpoint is saved by the checkpoint callback, before this one
            done = saver.last_saved and Path(saver.last_saved).name == f"step-{trainer.global_step:07d}"
            where = str(saver.last_saved if done else saver.save(trainer, pl_module, scored=scored))
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} after step {trainer.global_step}; checkpoint: {where}; "
            f"continue with: {continue_command(self.run_dir)}",
            signum,
        )


def _accumulating(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this batch's gradients wait for the next ones (no optimizer step after it)."""
    every = trainer.accumulate_grad_batches
    last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return every > 1 and (batch_idx + 1) % every != 0 and not last


def _validation_due(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after this training batch (Lightning's own decision)."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except AttributeError:  # another Lightning: stop at the batch's end; that validation is skipped
        return False
