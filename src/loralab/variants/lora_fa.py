"""LoRA-FA: A is drawn at random and frozen, only B trains. With `optimizer=adamw` B gets plain AdamW;
with `optimizer=lorafa` peft's LoRA-FA optimizer projects B's gradient through (A·Aᵀ)⁻¹."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loralab.errors import ConfigError
from loralab.variants.lora import build_lora
from loralab.variants.lora import is_trainable as lora_trainable
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig

if TYPE_CHECKING:  # torch loads with the model, after the config checks
    import torch


@dataclass
class LoraFAConfig(LoraVariantConfig):
    """LoRA with A frozen after its random initialisation."""

    name: str = "lora_fa"


def build(model: torch.nn.Module, cfg: LoraFAConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """A peft LoRA adapter whose A the Freeze callback leaves frozen."""
    return build_lora(model, cfg, task, SPEC)


def is_trainable(name: str, cfg: LoraFAConfig) -> bool:
    """LoRA's trainable set without A (lora_A, and lora_embedding_A on embedding targets)."""
    return ".lora_A." not in name and ".lora_embedding_A." not in name and lora_trainable(name, cfg)


# peft's LoRA-FA optimizer (conf/optimizer/lorafa.yaml)
LORAFA_OPTIMIZER = "loralab.optim.lorafa"


def check_optimizer_fits(variant: str, full: Any) -> None:
    """The LoRA-FA optimizer pairs each lora_A with its lora_B and keeps A frozen: any other variant
    is refused with it (DoRA's magnitude, VeRA's vectors break the pairing)."""
    optimizer = (full.get("optimizer") or {}).get("_target_", "")
    if optimizer == LORAFA_OPTIMIZER and variant != "lora_fa":
        raise ConfigError(
            f"optimizer=lorafa trains B with A frozen and pairs each lora_A with its lora_B; it does not fit "
            f"variant={variant}: use variant=lora_fa, or optimizer=adamw"
        )


SPEC = register_variant(VariantSpec(name="lora_fa", schema=LoraFAConfig, build=build, is_trainable=is_trainable))
