"""LoRA-FA: A is drawn at random and frozen, only B trains. With `optimizer=adamw` B gets plain AdamW;
with `optimizer=lorafa` peft's LoRA-FA optimizer (here: `lorafa_optimizer`) projects B's gradient
through (A·Aᵀ)⁻¹, and any other variant is refused with it."""

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


def is_frozen_input(name: str) -> bool:
    """A's: frozen, and read by the LoRA-FA optimizer (paired with their B)."""
    return ".lora_A." in name


def lorafa_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """peft's LoRA-FA optimizer (AdamW on B with B's gradient projected through (A·Aᵀ)⁻¹).

    peft puts every parameter of the model in its one group; only the adapter's trainable tensors
    and the frozen A each B is paired with are kept (the freeze check allows those A's: the spec's
    `optimizer_reads`).
    """
    from peft.optimizers import create_lorafa_optimizer

    config = model.peft_config["default"]
    optimizer = create_lorafa_optimizer(
        model, r=config.r, lora_alpha=config.lora_alpha, lr=lr, weight_decay=weight_decay
    )
    for group in optimizer.param_groups:
        keep = [
            i
            for i, (p, n) in enumerate(zip(group["params"], group["names"], strict=True))
            if p.requires_grad or is_frozen_input(n)
        ]
        for key in ("params", "names", "scaling_factors"):
            group[key] = [group[key][i] for i in keep]
    return optimizer


lorafa_optimizer.takes_model = True
# peft's LoRA-FA optimizer (conf/optimizer/lorafa.yaml), and the name configs saved before it moved here use
LORAFA_OPTIMIZERS = ("loralab.variants.lora_fa.lorafa_optimizer", "loralab.optim.lorafa")


def check_optimizer_fits(variant: str, full: Any) -> None:
    """The LoRA-FA optimizer pairs each lora_A with its lora_B and keeps A frozen: any other variant
    is refused with it (DoRA's magnitude, VeRA's vectors break the pairing)."""
    optimizer = (full.get("optimizer") or {}).get("_target_", "")
    if optimizer in LORAFA_OPTIMIZERS and variant != "lora_fa":
        raise ConfigError(
            f"optimizer=lorafa trains B with A frozen and pairs each lora_A with its lora_B; it does not fit "
            f"variant={variant}: use variant=lora_fa, or optimizer=adamw"
        )


SPEC = register_variant(
    VariantSpec(
        name="lora_fa",
        schema=LoraFAConfig,
        build=build,
        is_trainable=is_trainable,
        optimizer_reads=is_frozen_input,
        check_any_run=check_optimizer_fits,
    )
)
