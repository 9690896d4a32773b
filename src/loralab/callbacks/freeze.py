"""Freeze everything but the adapter before the optimizer is built, record what was adapted,
and fail the run if a base weight is trainable when training starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from peft.tuners.tuners_utils import BaseTunerLayer

from loralab.callbacks.contributions import SummaryContributor
from loralab.errors import FreezeError
from loralab.io import write_json
from loralab.loggers import attach_file
from loralab.rundir import FREEZE_MANIFEST
from loralab.variants.registry import AdapterInfo
from loralab.variants.targets import layer_of

log = logging.getLogger(__name__)


def _wrapped(info: AdapterInfo) -> tuple[set[str], set[str]]:
    """The modules peft gave an adapter layer and those it trains in full (ModulesToSaveWrapper),
    by their names in the base model."""
    from peft.utils import ModulesToSaveWrapper

    adapted, saved = set(), set()
    for name, module in info.model.get_base_model().named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            saved.add(name)
        elif isinstance(module, BaseTunerLayer) and not any(name.startswith(f"{s}.") for s in saved):
            adapted.add(name)
    return adapted, saved


def check_agreement(info: AdapterInfo) -> None:
    """What peft built must be what loralab resolved and checked before loading: the same adapted
    modules and the same modules trained in full."""
    adapted, saved = _wrapped(info)
    for what, built, resolved in (
        ("adapted", adapted, {n for names in info.target_matches.values() for n in names}),
        (
            "trained in full (modules_to_save)",
            saved,
            {n for names in info.modules_to_save_matches.values() for n in names},
        ),
    ):
        if built != resolved:
            extra, missing = sorted(built - resolved), sorted(resolved - built)
            raise FreezeError(
                f"peft {what} other modules than loralab resolved from variant.target_modules and "
                f"variant.modules_to_save (peft only: {extra[:3] or 'none'}; loralab only: {missing[:3] or 'none'}): "
                "name the modules explicitly in the variant config"
            )


def build_manifest(info: AdapterInfo) -> dict:
    """Which modules each target pattern adapted, per layer, with trainable counts; which modules
    train in full, and why (variant.modules_to_save, or the classification head)."""
    check_agreement(info)
    base = info.model.get_base_model()
    params = list(info.model.named_parameters())
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    total = sum(p.numel() for _, p in params)

    def group(matches: dict[str, list[str]]) -> dict:
        out = {}
        for pattern, names in matches.items():
            layers: dict[str, list[str]] = {}
            count = 0
            seen: set[int] = set()  # a Parameter shared by several modules (LoRA-drop) counts once
            for name in names:
                module = base.get_submodule(name)
                layers.setdefault(layer_of(name), []).append(name)
                fresh = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
                seen.update(id(p) for p in fresh)
                count += sum(p.numel() for p in fresh)
            out[pattern] = {"modules": len(names), "trainable_params": count, "layers": layers}
        return out

    user = set(info.cfg.modules_to_save or [])
    saves = group(info.modules_to_save_matches)
    for entry, facts in saves.items():
        facts["why"] = "variant.modules_to_save" if entry in user else "classification head (trained in full)"
    return {
        "variant": info.spec.name,
        "task": info.task,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
        "targets": group(info.target_matches),
        "modules_to_save": saves,
        "head": info.heads,
        "trainable_tensors": {n: p.numel() for n, p in params if p.requires_grad},
    }


def verify_frozen(info: AdapterInfo, optimizers: list[Any] | None = None) -> None:
    """Raise FreezeError if a non-adapter parameter is trainable or handed to an optimizer."""
    named = list(info.model.named_parameters())
    leaked = [n for n, p in named if p.requires_grad and not info.is_trainable(n)]
    if optimizers:
        owner = {id(p): n for n, p in named}
        # frozen tensors the variant's optimizer reads but never updates (LoRA-FA's A)
        reads = info.spec.optimizer_reads or (lambda name: False)
        for opt in optimizers:
            for group in opt.param_groups:
                leaked += [
                    owner.get(id(p), "<unknown>")
                    for p in group["params"]
                    if not info.is_trainable(owner.get(id(p), ""))
                    and not (reads(owner.get(id(p), "")) and not p.requires_grad)
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


class Freeze(SummaryContributor, pl.Callback):
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
            path = write_json(self.run_dir / FREEZE_MANIFEST, self.manifest)
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

    def check_unchanged(self, info: AdapterInfo) -> None:
        """After fit and every callback: the model that train() returns trains exactly the tensors
        it trained at the start (a second stage, a notebook, may keep training it)."""
        now = {n for n, p in info.model.named_parameters() if p.requires_grad}
        before = set(self.manifest.get("trainable_tensors", {}))
        if now != before:
            changed = sorted(now ^ before)
            raise FreezeError(
                f"the trainable set changed during the run ({len(changed)} tensor(s), e.g. {changed[0]}): something "
                "after the Freeze callback switched requires_grad; the saved adapter and checkpoints are unaffected"
            )

    def summary_fields(self) -> dict:
        """Parameter counts for summary.json."""
        keys = ("trainable_params", "total_params", "trainable_fraction")
        return {k: self.manifest.get(k) for k in keys}
