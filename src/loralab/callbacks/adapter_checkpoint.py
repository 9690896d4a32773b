"""Adapter-only checkpoints in peft's format, each with a resumable training state.

checkpoints/step-0000030/
    adapter_config.json, adapter_model.safetensors   (peft: PeftModel.from_pretrained reads them)
    variant.json          (the variant's own facts, where it has any)
    training_state.ckpt   (trainable tensors, optimizer, scheduler, loop progress, RNG states)
    checkpoint.json       (step, monitored metric, the adapter's tensor hash)
Each directory is written under a temporary name, read back and compared tensor by tensor
(SHA-256) with what the run holds, and only then renamed into place: a checkpoint that exists
is complete. With sharded strategies (FSDP, ZeRO-3) the adapter is first gathered whole onto
rank 0. The newest one and the best `save_top_k` by `monitor` are kept. At fit end the adapter
goes to `final_dir`, checked the same way.

A process killed at any moment leaves complete checkpoints and, at most, a `.tmp-step-*` (being
written) or `.del-step-*` (being pruned) directory, which resume never reads and the next fit
removes. Resuming checks the chosen checkpoint's tensors against the hashes in its checkpoint.json
and falls back to the one before when they differ. A checkpoint holding a nan or inf is refused,
and a full disk leaves the checkpoints already written as they were.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import traceback
from pathlib import Path

import lightning.pytorch as pl
import torch

from loralab import rng
from loralab.callbacks.contributions import SummaryContributor
from loralab.console import to_log_files
from loralab.distributed import clean_name, collectives_done, full_parameters
from loralab.errors import DISK_FULL, CheckpointError, ConfigError, LoralabError, NonFiniteError, first_line
from loralab.io import dir_bytes, write_dir, write_json
from loralab.rundir import (
    ADAPTER_WEIGHTS,
    STATE_FILE,
    checkpoint_state_file,
    file_hashes,
    read_checkpoint_meta,
    state_digest,
    tensor_digest,
)
from loralab.rundir import CHECKPOINT_META as META_FILE
from loralab.timing import timed

log = logging.getLogger(__name__)

WORLD_KEY = "loralab_world_size"
RNG_KEY = "loralab_rng_per_rank"
# the variant's own facts at that step (LoRA-drop's selection: read back on resume)
VARIANT_FILE = "variant.json"


def compare_digests(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError unless `found` holds exactly `expected`'s tensors, bit for bit."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differ = sorted(n for n in set(expected) & set(found) if tensor_digest(expected[n]) != tensor_digest(found[n]))
    if missing or extra or differ:
        parts = [
            f"{len(v)} {k} (e.g. {v[0]})"
            for k, v in (("missing", missing), ("unexpected", extra), ("differing", differ))
            if v
        ]
        raise CheckpointError(
            f"{what} does not read back as saved: {'; '.join(parts)}: the disk may be full or failing; "
            "the previous checkpoint is kept"
        )


def adapter_key(name: str) -> str:
    """The key under which peft saves a trainable parameter of the model (the LightningModule's
    `model.` prefix and peft's adapter name removed; a trained copy of a module is saved under the
    module's own name; DoRA's magnitude without `.weight`)."""
    name = name.removeprefix("model.")
    name = name.replace(".modules_to_save.default.", ".")
    name = re.sub(r"\.lora_magnitude_vector\.default\.weight$", ".lora_magnitude_vector", name)
    return re.sub(r"\.default(?=\.|$)", "", name)


def check_adapter_keys(found: set[str], written: set[str], trainable: list[str], what: str) -> None:
    """Raise CheckpointError unless a saved adapter holds every tensor the run trains and exactly
    the keys peft gives the model (`written`): an adapter that lacks its classification head, or
    holds keys of another model, is never kept."""
    needed = written | {adapter_key(n) for n in trainable}
    missing, extra = sorted(needed - found), sorted(found - needed)
    if missing or extra:
        parts = [
            f"{len(v)} {k} (e.g. {', '.join(v[:2])})" for k, v in (("missing", missing), ("unexpected", extra)) if v
        ]
        raise CheckpointError(
            f"{what} does not hold the adapter the run trains: {'; '.join(parts)} key(s): it would not load onto the "
            "base as trained; the previous checkpoint is kept"
        )


def trainable_state(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """The run's trainable tensors by the names a checkpoint's state_dict uses (wrappers'
    prefixes removed), copied to CPU. Under a sharded strategy, call inside full_parameters."""
    return {clean_name(n): p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}


def peft_state(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """What peft writes to adapter_model.safetensors for the model as it is now."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(pl_module.model).items()}


def read_adapter_file(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved peft adapter."""
    from safetensors.torch import load_file

    path = directory / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory} has no adapter_model.safetensors after saving: the save failed")
    return load_file(str(path))


def _complete(path: Path) -> bool:
    # DeepSpeed writes the training state as a directory of shards
    return (path / META_FILE).is_file() and (path / STATE_FILE).exists()


def list_checkpoints(dirpath: str | Path) -> list[dict]:
    """Complete checkpoints under `dirpath`, oldest first."""
    out = []
    for path in sorted(Path(dirpath).glob("step-*")):
        if _complete(path):
            meta = read_checkpoint_meta(path)
            out.append({**meta, "path": str(path)})
    return sorted(out, key=lambda m: m["step"])


def load_state(path: str | Path) -> dict:
    """A training_state.ckpt, read as data only (`weights_only=True`: no pickled code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (unpickling errors of many kinds)
        raise CheckpointError(
            f"{path} cannot be read as a training state ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
            "it is damaged or was not written by loralab"
        ) from exc


def verify_checkpoint(directory: str | Path) -> None:
    """Raise CheckpointError unless the checkpoint's training state and adapter hold the tensors
    its checkpoint.json recorded (SHA-256)."""
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    state_file = directory / STATE_FILE
    if state_file.is_file() and meta.get("trainable_sha256"):  # (DeepSpeed's is a directory)
        if state_digest(load_state(state_file)["state_dict"]) != meta["trainable_sha256"]:
            raise CheckpointError(f"{state_file} does not hold the tensors its {META_FILE} records: it is damaged")
    adapter = directory / ADAPTER_WEIGHTS
    if meta.get("adapter_sha256") and adapter.is_file():
        from safetensors.torch import load_file

        try:
            found = load_file(str(adapter))
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
            raise CheckpointError(f"{adapter} cannot be read ({exc}): it is damaged") from exc
        if state_digest(found) != meta["adapter_sha256"]:
            raise CheckpointError(f"{adapter} does not hold the tensors its {META_FILE} records: it is damaged")


def find_checkpoint(ckpt_path: str | None, resume: str | None, dirpath: str | Path) -> str | None:
    """The training-state file to resume from: an explicit path, or the newest complete and intact
    one under `dirpath` for resume=auto (None when there is none yet)."""
    if ckpt_path:
        path = checkpoint_state_file(ckpt_path)
        if (path.parent / META_FILE).is_file():
            verify_checkpoint(path.parent)
        elif path.is_file():  # not one of loralab's: at least readable as data only
            load_state(path)
        log.info("resuming from %s", path)
        return str(path)
    if resume == "auto":
        found = list_checkpoints(dirpath)
        for candidate in reversed(found):
            try:
                verify_checkpoint(candidate["path"])
            except CheckpointError as exc:
                log.warning("resume=auto: skipping %s: %s", candidate["path"], exc)
                continue
            log.info("resume=auto: resuming from %s", Path(candidate["path"]) / STATE_FILE)
            return str(Path(candidate["path"]) / STATE_FILE)
        log.warning(
            "resume=auto: no complete checkpoint under %s, starting from scratch (to continue an "
            "earlier run, pass hydra.run.dir=<its run directory>)",
            dirpath,
        )
        return None
    return None


def remove_partial(dirpath: str | Path, final_dir: str | Path | None = None) -> list[str]:
    """Delete what a killed process left half-written: checkpoints being written or pruned, and
    the final adapter's temporary directories. Returns what was removed."""
    dirpath = Path(dirpath)
    found = [*dirpath.glob(".tmp-step-*"), *dirpath.glob(".del-step-*")] if dirpath.is_dir() else []
    if final_dir is not None:
        final_dir = Path(final_dir)
        found += [*final_dir.parent.glob(f".tmp-{final_dir.name}*"), *final_dir.parent.glob(f".old-{final_dir.name}*")]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return [str(p) for p in found]


def _discard(checkpoint: Path) -> None:
    """Delete a checkpoint directory, renamed first: a process killed while deleting leaves a
    `.del-step-*` that resume never reads (and the next fit removes), not half a checkpoint."""
    gone = checkpoint.with_name(f".del-{checkpoint.name}")
    os.rename(checkpoint, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _write_failed(exc: OSError, what: str, kept: str | None = None) -> CheckpointError:
    """A write error as one line; a full disk (or quota, or file-size limit) says so."""
    full = exc.errno in DISK_FULL
    cause = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    fix = "free space there, then continue with resume=auto" if full else "fix it, then continue with resume=auto"
    where = f" ({exc.filename})" if exc.filename else ""
    return CheckpointError(f"saving {what} failed: {cause}{where}; {fix}" + (f"; {kept}" if kept else ""))


def _save_failed(exc: Exception, what: str, kept: str) -> CheckpointError:
    """An error of the variant's own saving code as one line; its traceback goes to train.log."""
    cause = first_line(exc)
    to_log_files(f"saving {what} failed:\n" + "".join(traceback.format_exception(exc)))
    return CheckpointError(f"saving {what} failed ({cause}); {kept}; the traceback is in train.log")


class AdapterCheckpoint(SummaryContributor, pl.Callback):
    """Saves adapter checkpoints after each validation during fit, and the final adapter."""

    def __init__(
        self,
        dirpath: str,
        final_dir: str,
        monitor: str = "val/loss",
        mode: str = "min",
        save_top_k: int = 2,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"adapter_checkpoint.mode must be min or max, got {mode!r}")
        self.dirpath = Path(dirpath)
        self.final_dir = Path(final_dir)
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.last_saved: str | None = None
        self.adapter_bytes: int | None = None
        self.adapter_sha256: str | None = None
        self.adapter_files: dict[str, str] | None = None

    # ---- what goes into training_state.ckpt -------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        keep = {clean_name(n) for n, p in pl_module.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in keep}
        # the data position is counted in per-process batches: resume with as many processes
        checkpoint[WORLD_KEY] = trainer.world_size
        # every process's own RNG state (dropout masks differ between ranks): each resumes its own
        checkpoint[RNG_KEY] = rng.capture_all(trainer.world_size)  # every rank saves: a collective

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._own_rng = rng.own(checkpoint.get(RNG_KEY), trainer.global_rank)
        saved_world = checkpoint.get(WORLD_KEY, 1)
        if saved_world != trainer.world_size:
            raise CheckpointError(
                f"the checkpoint was saved by {saved_world} process(es) and this run has {trainer.world_size}: "
                "resume with the same trainer.devices and trainer.num_nodes (each process's data position and "
                "batch are part of the state)"
            )
        if "state_dict" not in checkpoint:  # FSDP and DeepSpeed load the weights themselves, first
            return
        needed = {clean_name(n) for n, p in pl_module.named_parameters() if p.requires_grad}
        missing = sorted(needed - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(
                f"the checkpoint lacks {len(missing)} trainable tensor(s) (e.g. {missing[0]}): it was "
                "saved with another variant or target_modules; resume with the same config"
            )

    def state_dict(self) -> dict:
        """The callback's state in the checkpoint: this process's RNG states (loralab.rng)."""
        return rng.capture()

    def load_state_dict(self, state: dict) -> None:
        # Lightning hands every process rank 0's callback state; this process's own, when the
        # checkpoint has it (read in on_load_checkpoint, which Lightning calls first)
        rng.restore(getattr(self, "_own_rng", None) or state)

    # ---- saving -----------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self.save(trainer, pl_module)

    @timed("save")
    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, scored: bool = True) -> Path:
        """Write one complete checkpoint directory for the current step. `scored=False` (a stop
        between validations) records no metric: the checkpoint never counts as the best."""
        step = trainer.global_step
        value = trainer.callback_metrics.get(self.monitor) if scored else None
        target = self.dirpath / f"step-{step:07d}"
        tmp = self.dirpath / f".tmp-step-{step:07d}"
        error: BaseException | None = None
        try:
            if trainer.is_global_zero:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        except OSError as exc:
            error = _write_failed(exc, f"checkpoint step {step} in {self.dirpath}", self.kept_message())
        if trainer.strategy.reduce_boolean_decision(error is None, all=True):
            try:
                trainer.save_checkpoint(tmp / STATE_FILE, weights_only=False)  # collective; rank 0 writes
                expected, adapter_digest = self._save_adapter(trainer, pl_module, tmp)  # collective
                if trainer.is_global_zero:
                    bad = sorted(n for n, t in expected.items() if not bool(torch.isfinite(t).all()))
                    if bad:
                        raise NonFiniteError(
                            f"the adapter holds nan or inf at step {step} ({bad[0]}): checkpoint not saved; "
                            f"{self.kept_message()} (lower optimizer.lr, or keep trainer.gradient_clip_val set)"
                        )
                    if (tmp / STATE_FILE).is_file():  # DeepSpeed writes a directory
                        saved = load_state(tmp / STATE_FILE)["state_dict"]
                        compare_digests(expected, saved, f"the training state in {tmp.name}")
                    if pl_module.adapter.facts:
                        write_json(tmp / VARIANT_FILE, pl_module.adapter.facts)
                    write_json(  # last: its presence marks the checkpoint complete
                        tmp / META_FILE,
                        {
                            "step": step,
                            "epoch": trainer.current_epoch,
                            "monitor": self.monitor,
                            "value": None if value is None else float(value),
                            "world_size": trainer.world_size,
                            "trainable_sha256": state_digest(expected),
                            "adapter_sha256": adapter_digest,
                        },
                    )
            except OSError as exc:
                error = _write_failed(exc, f"checkpoint step {step} in {self.dirpath}", self.kept_message())
            except LoralabError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 (re-raised below, once every rank knows)
                error = _save_failed(exc, f"checkpoint step {step}", self.kept_message())
        # rank 0's failure reaches every rank, none is left waiting in a barrier
        if not trainer.strategy.reduce_boolean_decision(error is None, all=True):
            if trainer.is_global_zero:
                shutil.rmtree(tmp, ignore_errors=True)
            raise error or CheckpointError(f"saving checkpoint step {step} failed on another rank: see its log")
        if trainer.is_global_zero:
            if target.exists():  # the same step saved before (a resumed run passing it again): replaced whole
                _discard(target)
            tmp.rename(target)
            self.last_saved = str(target)
            self._prune()
        trainer.strategy.barrier()
        return target

    def last_complete(self) -> str | None:
        """The newest complete checkpoint directory on disk."""
        found = list_checkpoints(self.dirpath) if self.dirpath.is_dir() else []
        return found[-1]["path"] if found else None

    def kept_message(self) -> str:
        found = self.last_complete()
        return f"the last checkpoint, {found}, is kept" if found else "no checkpoint had been saved yet"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for path in remove_partial(self.dirpath, self.final_dir):
                log.info("removed %s, left half-written by an earlier process", path)

    def _save_adapter(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, directory: Path
    ) -> tuple[dict[str, torch.Tensor], str | None]:
        """Gather the whole adapter onto rank 0, write it in peft's format into `directory`, read
        it back and compare. Every rank must call it. Returns rank 0's trainable tensors and the
        hash of the adapter file (empty and None elsewhere)."""
        expected: dict[str, torch.Tensor] = {}
        written: dict[str, torch.Tensor] = {}
        with full_parameters(trainer):
            if trainer.is_global_zero:
                expected = trainable_state(pl_module)
                written = peft_state(pl_module)
                pl_module.adapter.save(directory)
        if not trainer.is_global_zero:
            return expected, None
        try:
            found = read_adapter_file(directory)
            check_adapter_keys(set(found), set(written), list(expected), f"the adapter in {directory.name}")
            if pl_module.adapter.save_adapter is None:
                compare_digests(written, found, f"the adapter in {directory.name}")
            # (a variant that converts on save, PiSSA or Delta-LoRA, writes other values than the live ones)
        except CheckpointError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return expected, state_digest(found)

    def _prune(self) -> None:
        found = list_checkpoints(self.dirpath)
        if not found:
            return
        keep = {found[-1]["path"]}
        scored = [c for c in found if c["value"] is not None]
        scored.sort(key=lambda c: c["value"], reverse=self.mode == "max")
        keep |= {c["path"] for c in scored[: self.save_top_k]}
        for c in found:
            if c["path"] not in keep:
                _discard(Path(c["path"]))

    def best(self) -> str | None:
        """The best checkpoint directory by the monitored metric."""
        scored = [c for c in list_checkpoints(self.dirpath) if c["value"] is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda c: c["value"])["path"]

    @timed("save")
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tmp = self.final_dir.with_name(f".tmp-{self.final_dir.name}")
        try:
            if trainer.is_global_zero:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            trainer.strategy.barrier()
            _, self.adapter_sha256 = self._save_adapter(trainer, pl_module, tmp)  # collective
            if trainer.is_global_zero:
                write_dir(self.final_dir, lambda into: [shutil.move(str(f), into / f.name) for f in tmp.iterdir()])
                tmp.rmdir()
                self.adapter_bytes = dir_bytes(self.final_dir)
                self.adapter_files = file_hashes(self.final_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_failed(exc, f"the final adapter to {self.final_dir}") from exc
        except LoralabError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:  # noqa: BLE001 (the variant's own saving: one line, not a traceback)
            shutil.rmtree(tmp, ignore_errors=True)
            raise _save_failed(exc, f"the final adapter to {self.final_dir}", self.kept_message()) from exc
        collectives_done(trainer)

    def summary_fields(self) -> dict:
        """Where the adapter and checkpoints are, for summary.json."""
        return {
            "adapter_dir": str(self.final_dir),
            "adapter_bytes": self.adapter_bytes,
            "adapter_sha256": self.adapter_sha256,
            # every file of adapter/ by its SHA-256: readers (compare, rerun, a sweep's resume) tell
            # a damaged copy from the saved one without loading it
            "adapter_files": self.adapter_files,
            "last_checkpoint": self.last_saved,
            "best_checkpoint": self.best() if self.dirpath.exists() else None,
        }
