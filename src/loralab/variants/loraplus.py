"""LoRA+: LoRA whose B matrices learn `lr_ratio` times faster than A, through peft's
`create_loraplus_optimizer` around the configured optimizer class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loralab.errors import ConfigError
from loralab.variants.lora import build_lora, is_trainable
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig

if TYPE_CHECKING:  # torch loads with the model, after the config checks
    import torch

# the order of peft's parameter groups
GROUP_NAMES = ("lora_A", "embedding", "lora_B", "lora_B_no_decay")


@dataclass
class LoraPlusConfig(LoraVariantConfig):
    """LoRA with B's learning rate = lr_ratio × A's (the paper recommends about 16)."""

    name: str = "loraplus"
    lr_ratio: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr_ratio > 0:
            raise ConfigError(f"variant.lr_ratio must be > 0, got {self.lr_ratio!r}: set e.g. variant.lr_ratio=16")


def build(model: torch.nn.Module, cfg: LoraPlusConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """A peft LoRA adapter; the difference is in the optimizer."""
    return build_lora(model, cfg, task, SPEC)


def check(cfg: LoraPlusConfig, full: Any) -> None:
    """LoRA+ needs a torch optimizer class with a learning rate (it builds the groups itself)."""
    optimizer = full.get("optimizer") or {}
    if not optimizer.get("_partial_") or "lr" not in optimizer:
        raise ConfigError("variant=loraplus needs a partial torch optimizer with lr (e.g. optimizer=adamw)")


def make_optimizer(adapter: AdapterInfo, factory: Callable[..., torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """peft's LoRA+ groups: A at lr, B (and 1-d tensors) at lr × ratio, embeddings apart."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs = dict(factory.keywords)
    lr = kwargs.pop("lr")
    kwargs["loraplus_weight_decay"] = kwargs.pop("weight_decay", 0.0)
    optimizer = create_loraplus_optimizer(
        adapter.model, factory.func, lr=lr, loraplus_lr_ratio=adapter.cfg.lr_ratio, **kwargs
    )
    for group, name in zip(optimizer.param_groups, GROUP_NAMES, strict=True):
        group["name"] = name
    return optimizer


SPEC = register_variant(
    VariantSpec(
        name="loraplus",
        schema=LoraPlusConfig,
        build=build,
        is_trainable=is_trainable,
        check=check,
        make_optimizer=make_optimizer,
    )
)
