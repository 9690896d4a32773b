"""Vanilla LoRA through peft's LoraConfig."""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, TaskType, get_peft_model

from loralab.config.schemas import LoraVariantConfig
from loralab.errors import FreezeError
from loralab.variants.registry import AdapterInfo, VariantSpec, register_variant
from loralab.variants.targets import match_modules_to_save, match_targets

PEFT_TASKS = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}
_ADAPTER_PARAM = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.|\.modules_to_save\.")


def check_matches(target_matches: dict, save_matches: dict) -> None:
    """Every target pattern and modules_to_save entry must select at least one module."""
    for pattern, names in target_matches.items():
        if not names:
            raise FreezeError(
                f"target module pattern {pattern!r} matches no module in the model: fix "
                "variant.target_modules (list the model's modules with model.named_modules())"
            )
    for entry, names in save_matches.items():
        if not names:
            raise FreezeError(
                f"modules_to_save entry {entry!r} matches no module in the model: fix variant.modules_to_save"
            )


def lora_config(cfg: LoraVariantConfig, task: str, **overrides: object) -> LoraConfig:
    """peft's LoraConfig for our schema (variants built on LoRA pass their own flags)."""
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias=cfg.bias,
        modules_to_save=cfg.modules_to_save,
        init_lora_weights=cfg.init_lora_weights,
        task_type=PEFT_TASKS[task],
        **overrides,
    )


def build(model: torch.nn.Module, cfg: LoraVariantConfig, task: str) -> AdapterInfo:
    """Check the targets, then wrap the model with a peft LoRA adapter."""
    targets = match_targets(model, cfg.target_modules)
    saves = match_modules_to_save(model, cfg.modules_to_save)
    check_matches(targets, saves)
    peft_model = get_peft_model(model, lora_config(cfg, task))
    return AdapterInfo(peft_model, SPEC, cfg, task, targets, saves)


def is_trainable(name: str, cfg: LoraVariantConfig) -> bool:
    """LoRA A/B, modules_to_save copies, and biases as `bias` says."""
    if _ADAPTER_PARAM.search(name):
        return True
    if name.endswith(".bias"):
        return cfg.bias == "all" or (cfg.bias == "lora_only" and ".base_layer." in name)
    return False


SPEC = register_variant(VariantSpec("lora", LoraVariantConfig, build, is_trainable))
