"""Freeze everything but the adapter before the optimizer is built, record what was adapted,
and fail the run if a base weight is trainable when training starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from peft.tuners.tuners_utils import BaseTunerLayer

from loralab.errors import FreezeError
from loralab.io import write_json
from loralab.loggers import attach_file
from loralab.variants.registry import AdapterInfo
from loralab.variants.targets import layer_of

log = logging.getLogger(__name__)


def build_manifest(info: AdapterInfo) -> dict:
    """Which modules each target pattern adapted, per layer, with trainable counts."""
    base = info.model.get_base_model()
    params = list(info.model.named_parameters())
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    total = sum(p.numel() for _, p in params)

    def group(matches: dict[str, list[str]], must_adapt: bool) -> dict:
        out = {}
        for pattern, names in matches.items():
            layers: dict[str, list[str]] = {}
            count = 0
            seen: set[int] = set()  # a Parameter shared by several modules (LoRA-drop) counts once
            for name in names:
                module = base.get_submodule(name)
                if must_adapt and not isinstance(module, BaseTunerLayer):
                    raise FreezeError(
                        f"module {name} matched {pattern!r} but received no adapter (its type "
                        f"{type(module.get_base_layer() if hasattr(module, 'get_base_layer') else module).__name__} "
                        "is not supported): narrow variant.target_modules"
                    )
                layers.setdefault(layer_of(name), []).append(name)
                fresh = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
                seen.update(id(p) for p in fresh)
                count += sum(p.numel() for p in fresh)
            if not names:
                raise FreezeError(f"pattern {pattern!r} matched no module: fix the variant config")
            out[pattern] = {"modules": len(names), "trainable_params": count, "layers": layers}
        return out

    return {
        "variant": info.spec.name,
        "task": info.task,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
        "targets": group(info.target_matches, must_adapt=True),
        "modules_to_save": group(info.modules_to_save_matches, must_adapt=False),
        "trainable_tensors": {n: p.numel() for n, p in params if p.requires_grad},
    }


def verify_frozen(info: AdapterInfo, optimizers: list[Any] | None = None) -> None:
    """Raise FreezeError if a non-adapter parameter is trainable or handed to an optimizer."""
    named = list(info.model.named_parameters())
    leaked = [n for n, p in named if p.requires_grad and not info.is_trainable(n)]
    if optimizers:
        owner = {id(p): n for n, p in named}
        for opt in optimizers:
            for group in opt.param_groups:
                # tensors an optimizer reads but never updates (LoRA-FA's frozen A), and says so
                read_only = set(group.get("frozen_inputs", ()))
                leaked += [
                    owner.get(id(p), "<unknown>")
                    for p in group["params"]
                    if not info.is_trainable(owner.get(id(p), ""))
                    and not (owner.get(id(p)) in read_only and not p.requires_grad)
                ]
    if leaked:
        leaked = sorted(set(leaked))
        more = f" (+{len(leaked) - 3} more)" if len(leaked) > 3 else ""
        raise FreezeError(
            f"base weights are trainable: {', '.join(leaked[:3])}{more}: only adapter parameters may "
            "train; something unfroze them after the Freeze callback"
        )
    if not any(p.requires_grad for _, p in named):
        raise FreezeError("no parameter is trainable: the adapter is empty; check variant.target_modules")


class Freeze(pl.Callback):
    """Freezes the base in `setup` (before `configure_optimizers`) and checks it at train start."""

    def __init__(self, run_dir: str | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.manifest: dict = {}
        self._logged = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        info: AdapterInfo = pl_module.adapter
        for name, param in info.model.named_parameters():
            param.requires_grad_(info.is_trainable(name))
        verify_frozen(info)
        self.manifest = build_manifest(info)
        self._publish(trainer)

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer) -> None:
        if self._logged:  # setup runs for validate and again for fit
            return
        self._logged = True
        m = self.manifest
        adapted = sum(entry["modules"] for entry in m["targets"].values())
        log.info(
            "%s adapter: %s of %s parameters train (%.3f%%), in %d adapted modules%s",
            m["variant"],
            f"{m['trainable_params']:,}",
            f"{m['total_params']:,}",
            100 * m["trainable_fraction"],
            adapted,
            f" and {sum(e['modules'] for e in m['modules_to_save'].values())} trained copies"
            if m["modules_to_save"]
            else "",
        )
        if self.run_dir is not None:
            path = write_json(self.run_dir / "freeze_manifest.json", self.manifest)
            attach_file(trainer.loggers, path, self.run_dir)
        flat = {
            "adapter/trainable_params": self.manifest["trainable_params"],
            "adapter/total_params": self.manifest["total_params"],
        }
        for pattern, entry in self.manifest["targets"].items():
            flat[f"adapter/modules[{pattern}]"] = entry["modules"]
        for logger in trainer.loggers:
            logger.log_hyperparams(flat)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # DeepSpeed's ZeRO optimizer holds flat partitions, not the model's parameters: only the
        # requires_grad side can be checked there (DeepSpeed builds it from trainable ones only)
        deepspeed = type(trainer.strategy).__name__ == "DeepSpeedStrategy"
        verify_frozen(pl_module.adapter, None if deepspeed else trainer.optimizers)

    def summary_fields(self) -> dict:
        """Parameter counts for summary.json."""
        keys = ("trainable_params", "total_params", "trainable_fraction")
        return {k: self.manifest.get(k) for k in keys}
