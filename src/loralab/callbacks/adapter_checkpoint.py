"""Adapter-only checkpoints in peft's format, each with a resumable training state.

checkpoints/step-0000030/
    adapter_config.json, adapter_model.safetensors   (peft: PeftModel.from_pretrained reads them)
    variant.json          (the variant's own facts, where it has any)
    training_state.ckpt   (trainable tensors, optimizer, scheduler, loop progress, RNG states)
    checkpoint.json       (step, monitored metric)
Each directory is written under a temporary name and renamed when complete. The newest one
and the best `save_top_k` by `monitor` are kept. At fit end the adapter goes to `final_dir`.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from loralab.errors import ConfigError
from loralab.io import dir_bytes, write_dir, write_json

log = logging.getLogger(__name__)

STATE_FILE = "training_state.ckpt"
META_FILE = "checkpoint.json"
# the variant's own facts at that step (LoRA-drop's selection: read back on resume)
VARIANT_FILE = "variant.json"


def _complete(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / STATE_FILE).is_file()


def list_checkpoints(dirpath: str | Path) -> list[dict]:
    """Complete checkpoints under `dirpath`, oldest first."""
    out = []
    for path in sorted(Path(dirpath).glob("step-*")):
        if _complete(path):
            meta = json.loads((path / META_FILE).read_text())
            out.append({**meta, "path": str(path)})
    return sorted(out, key=lambda m: m["step"])


def find_checkpoint(ckpt_path: str | None, resume: str | None, dirpath: str | Path) -> str | None:
    """The training-state file to resume from: an explicit path, or the newest complete one
    under `dirpath` for resume=auto (None when there is none yet)."""
    if ckpt_path:
        path = Path(ckpt_path)
        if path.is_dir():
            path = path / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"ckpt_path not found: {ckpt_path}: pass a checkpoint directory or its {STATE_FILE}")
        return str(path)
    if resume == "auto":
        found = list_checkpoints(dirpath)
        if not found:
            log.warning(
                "resume=auto: no complete checkpoint under %s, starting from scratch (to continue an "
                "earlier run, pass hydra.run.dir=<its run directory>)",
                dirpath,
            )
            return None
        return str(Path(found[-1]["path"]) / STATE_FILE)
    return None


class AdapterCheckpoint(pl.Callback):
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

    # ---- what goes into training_state.ckpt -------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        keep = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        needed = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        missing = sorted(needed - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(
                f"the checkpoint lacks {len(missing)} trainable tensor(s) (e.g. {missing[0]}): it was "
                "saved with another variant or target_modules; resume with the same config"
            )

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "rng_torch": torch.get_rng_state(),
            "rng_python": random.getstate(),
            "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "rng_torch" in state:
            torch.set_rng_state(state["rng_torch"])
            random.setstate(state["rng_python"])
            kind, keys, *rest = state["rng_numpy"]
            np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    # ---- saving -----------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Write one complete checkpoint directory for the current step."""
        step = trainer.global_step
        value = trainer.callback_metrics.get(self.monitor)
        target = self.dirpath / f"step-{step:07d}"
        tmp = self.dirpath / f".tmp-step-{step:07d}"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier()
        trainer.save_checkpoint(tmp / STATE_FILE, weights_only=False)  # collective; rank 0 writes
        if trainer.is_global_zero:
            pl_module.adapter.save(tmp)
            if pl_module.adapter.facts:
                write_json(tmp / VARIANT_FILE, pl_module.adapter.facts)
            write_json(
                tmp / META_FILE,
                {
                    "step": step,
                    "epoch": trainer.current_epoch,
                    "monitor": self.monitor,
                    "value": None if value is None else float(value),
                },
            )
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            self.last_saved = str(target)
            self._prune()
        trainer.strategy.barrier()
        return target

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
                shutil.rmtree(c["path"], ignore_errors=True)

    def best(self) -> str | None:
        """The best checkpoint directory by the monitored metric."""
        scored = [c for c in list_checkpoints(self.dirpath) if c["value"] is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda c: c["value"])["path"]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        write_dir(self.final_dir, pl_module.adapter.save)
        self.adapter_bytes = dir_bytes(self.final_dir)

    def summary_fields(self) -> dict:
        """Where the adapter and checkpoints are, for summary.json."""
        return {
            "adapter_dir": str(self.final_dir),
            "adapter_bytes": self.adapter_bytes,
            "last_checkpoint": self.last_saved,
            "best_checkpoint": self.best() if self.dirpath.exists() else None,
        }
