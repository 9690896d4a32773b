"""Delta-LoRA's callbacks (the variant is loralab.variants.delta_lora): the update that moves each
adapted W after every optimizer step, and the export of the change of W at fit end."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import torch
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from loralab.io import write_dir
from loralab.rundir import ADAPTER_WEIGHTS
from loralab.variants.lora import ADAPTER, lora_layers


def _pair(layer: LoraLayer) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight


def _as_weight(layer: LoraLayer, delta: torch.Tensor) -> torch.Tensor:
    # Conv1D-style layers store W transposed
    return delta.T if getattr(layer, "fan_in_fan_out", False) else delta


class DeltaLoraUpdate(pl.Callback):
    """Moves each adapted W by λ·s·Δ(B·A) after every optimizer step past K; keeps (A_K, B_K)."""

    def __init__(self, model: torch.nn.Module, delta_lambda: float, update_start: int) -> None:
        self.layers = lora_layers(model)
        self.delta_lambda = delta_lambda
        self.update_start = update_start
        self.anchor: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.updates = 0
        self.last_step = -1

    def snapshot(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Copies of every (A, B)."""
        return {n: tuple(t.detach().clone() for t in _pair(layer)) for n, layer in self.layers.items()}

    @torch.no_grad()
    def _move(self, old: dict[str, tuple[torch.Tensor, torch.Tensor]], factor: float) -> None:
        """W += factor·λ·s·(B·A − B_old·A_old) in every layer."""
        for name, layer in self.layers.items():
            a, b = _pair(layer)
            a0, b0 = old[name]
            delta = (b @ a - b0 @ a0) * (factor * self.delta_lambda * layer.scaling[ADAPTER])
            weight = layer.get_base_layer().weight
            weight.add_(_as_weight(layer, delta).to(weight.dtype))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_step = trainer.global_step
        if self.anchor is not None:
            # resumed past K: the base was loaded fresh (W_0); W_t = W_0 + λ·s·(B_t·A_t − B_K·A_K)
            self._move(self.anchor, 1.0)
        elif trainer.global_step >= self.update_start:
            self.anchor = self.snapshot()
        self.prev = self.snapshot()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last_step:  # a gradient-accumulation micro-batch: no optimizer step yet
            return
        self.last_step = step
        if step == self.update_start:
            self.anchor = self.snapshot()
        elif step > self.update_start:
            self._move(self.prev, 1.0)
            self.updates += 1
        self.prev = self.snapshot()

    def state_dict(self) -> dict:
        return {"anchor": self.anchor, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state["anchor"]
        self.updates = state["updates"]

    # ---- export --------------------------------------------------------------------------------
    def save_stacked(self, model: torch.nn.Module, directory: Path, scale_now: float, scale_anchor: float) -> None:
        """A peft LoRA adapter of rank 2r: B' = [scale_now·B_T, −scale_anchor·B_K], A' = [A_T; A_K],
        alpha doubled so that s stays α/r."""
        state = get_peft_model_state_dict(model)
        for name, layer in self.layers.items():
            a, b = (t.detach() for t in _pair(layer))
            a_k, b_k = self.anchor[name]
            state[f"{name}.lora_A.weight"] = torch.cat([a, a_k], dim=0).contiguous()
            state[f"{name}.lora_B.weight"] = torch.cat([scale_now * b, -scale_anchor * b_k], dim=1).contiguous()
        config = copy.deepcopy(model.peft_config[ADAPTER])
        config.r *= 2
        config.lora_alpha *= 2
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(directory))
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(directory / ADAPTER_WEIGHTS),
            metadata={"format": "pt"},
        )

    def save_adapter(self, model: torch.nn.Module, directory: Path) -> None:
        """The adapter that reproduces the trained model on the original base."""
        if self.anchor is None:  # W has not moved yet (T <= K): the plain adapter is exact
            model.save_pretrained(str(directory))
            return
        self.save_stacked(model, directory, self.delta_lambda + 1.0, self.delta_lambda)

    def save_delta_w(self, model: torch.nn.Module, directory: Path) -> None:
        """The change of W alone, λ·s·(B_T·A_T − B_K·A_K), as a rank-2r LoRA adapter."""
        self.save_stacked(model, directory, self.delta_lambda, self.delta_lambda)


class DeltaWExport(pl.Callback):
    """Writes delta_w/ at fit end (rank 0) when W has moved."""

    def __init__(self, update: DeltaLoraUpdate, directory: Path, facts: dict) -> None:
        self.update = update
        self.directory = directory
        self.facts = facts

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.facts["updates_applied"] = self.update.updates
        if not trainer.is_global_zero or self.update.anchor is None:
            return
        write_dir(self.directory, lambda tmp: self.update.save_delta_w(pl_module.model, tmp))
        self.facts["delta_w_dir"] = str(self.directory)
