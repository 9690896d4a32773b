"""Vanilla LoRA through peft's LoraConfig, and the variants that are LoRA with one of peft's flags:
rsLoRA (s = α/√r) and DoRA (a trained magnitude per output row)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loralab.tasks import get_task
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig
from loralab.variants.targets import Resolution, check_targets, trains

if TYPE_CHECKING:  # torch and peft load with the model, after the config checks
    import torch
    from peft import LoraConfig, TaskType
    from peft.tuners.lora import LoraLayer

# loralab trains one adapter per run, under peft's default name
ADAPTER = "default"
_ADAPTER_PARAM = re.compile(
    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.|\.modules_to_save\."
)


def peft_task(task: str) -> TaskType:
    """peft's task type for a loralab task (peft is imported only when an adapter is built)."""
    from peft import TaskType

    return TaskType[get_task(task).peft_type]


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    """The peft LoRA layers of `model` by full module name, in model order."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def lora_config(cfg: LoraVariantConfig, task: str, found: Resolution, **overrides: Any) -> LoraConfig:
    """peft's LoraConfig for our schema and the resolved targets (variants built on LoRA pass their
    own flags)."""
    from peft import LoraConfig

    kwargs: dict[str, Any] = {
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "bias": cfg.bias,
        "modules_to_save": found.modules_to_save(cfg),
        "init_lora_weights": cfg.init_lora_weights,
        "task_type": peft_task(task),
    }
    return LoraConfig(**{**kwargs, **overrides})


def lora_model(
    model: torch.nn.Module, cfg: LoraVariantConfig, task: str, **flags: Any
) -> tuple[torch.nn.Module, Resolution]:
    """Check the targets, then wrap the model with a peft LoRA adapter built with `flags`; the
    peft model and what its targets resolved to."""
    from peft import get_peft_model

    found = check_targets(model, cfg, task)
    return get_peft_model(model, lora_config(cfg, task, found, **flags)), found


def adapter_info(
    peft_model: torch.nn.Module, spec: VariantSpec, cfg: Any, task: str, found: Resolution, **extra: Any
) -> AdapterInfo:
    """The finished handle a builder returns (`extra`: facts, callbacks, save_adapter)."""
    return AdapterInfo(
        model=peft_model,
        spec=spec,
        cfg=cfg,
        task=task,
        target_matches=found.targets,
        modules_to_save_matches=found.saves,
        heads=found.heads,
        **extra,
    )


def build_lora(
    model: torch.nn.Module, cfg: LoraVariantConfig, task: str, spec: VariantSpec, **flags: Any
) -> AdapterInfo:
    """Check the targets, then wrap the model with a peft LoRA adapter built with `flags`."""
    peft_model, found = lora_model(model, cfg, task, **flags)
    return adapter_info(peft_model, spec, cfg, task, found)


def is_trainable(name: str, cfg: LoraVariantConfig) -> bool:
    """LoRA A/B (and DoRA's magnitude), modules_to_save copies, and biases as `bias` says."""
    return trains(name, _ADAPTER_PARAM, cfg.bias)


def build(
    model: torch.nn.Module, cfg: LoraVariantConfig, task: str, context: BuildContext | None = None
) -> AdapterInfo:
    """Vanilla LoRA."""
    return build_lora(model, cfg, task, SPEC)


SPEC = register_variant(VariantSpec(name="lora", schema=LoraVariantConfig, build=build, is_trainable=is_trainable))


@dataclass
class RsLoraConfig(LoraVariantConfig):
    """rsLoRA: LoRA with s = α/√r, so that the update's scale does not shrink as r grows."""

    name: str = "rslora"

    @property
    def scaling(self) -> float:
        """The factor s in W0 + s·B·A."""
        return self.alpha / math.sqrt(self.r)


def build_rslora(
    model: torch.nn.Module, cfg: RsLoraConfig, task: str, context: BuildContext | None = None
) -> AdapterInfo:
    """peft LoRA with use_rslora=True."""
    return build_lora(model, cfg, task, RSLORA, use_rslora=True)


RSLORA = register_variant(
    VariantSpec(name="rslora", schema=RsLoraConfig, build=build_rslora, is_trainable=is_trainable)
)


@dataclass
class DoraConfig(LoraVariantConfig):
    """DoRA: the LoRA direction plus a trained magnitude m per output row (m = ‖W0‖ rows at init)."""

    name: str = "dora"


def build_dora(model: torch.nn.Module, cfg: DoraConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """peft LoRA with use_dora=True."""
    return build_lora(model, cfg, task, DORA, use_dora=True)


DORA = register_variant(VariantSpec(name="dora", schema=DoraConfig, build=build_dora, is_trainable=is_trainable))
