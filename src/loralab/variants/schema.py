"""The config keys every variant has (rank, alpha, dropout, targets, bias, modules_to_save) and
LoRA's own: the schemas variant modules extend. Imports nothing heavy: configs are checked with them
before torch loads."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from loralab.errors import ConfigError

BIASES = ("none", "all", "lora_only")


@dataclass
class AdapterVariantConfig:
    """What every variant has: rank, alpha, dropout, targets, bias and extra trainable modules.
    (Keys common to all variants keep grids like `variant=lora,vera variant.r=4,8` composable.)"""

    name: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    modules_to_save: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ConfigError(f"variant.r must be an integer >= 1, got {self.r!r}: set e.g. variant.r=8")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(
                f"variant.alpha must be a finite number > 0, got {self.alpha!r}: set e.g. variant.alpha=16"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"variant.dropout must be in [0, 1), got {self.dropout!r}: set e.g. variant.dropout=0.05")
        if self.bias not in BIASES:
            raise ConfigError(f"variant.bias must be one of {list(BIASES)}, got {self.bias!r}")
        self.target_modules = _as_targets(self.target_modules, "variant.target_modules")
        if self.modules_to_save is not None:
            self.modules_to_save = _as_targets(self.modules_to_save, "variant.modules_to_save")
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]

    @property
    def scaling(self) -> float:
        """The factor s in W0 + s·B·A."""
        return self.alpha / self.r


@dataclass
class LoraVariantConfig(AdapterVariantConfig):
    """Vanilla LoRA (and the variants that are LoRA with other flags): adds peft's initialisation."""

    init_lora_weights: Any = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ConfigError(
                f"variant.init_lora_weights must be true, false or gaussian, got {self.init_lora_weights!r}"
            )


def _as_targets(value: Any, key: str) -> str | list[str]:
    """A non-empty string (regex or all-linear) or a non-empty list of module names."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    spelled = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    spelled = spelled if key.endswith("target_modules") else []
    for v in spelled:
        if re.sub(r"[-_ ]", "", v.lower()) == "alllinear" and not (
            v.lower() == "all-linear" and isinstance(value, str)
        ):
            raise ConfigError(
                f"{key}={value!r} is not all-linear: write {key}=all-linear (one string, with a hyphen) for every "
                "linear layer but the output head"
            )
    if isinstance(value, str) and value.lower() == "all-linear":
        return "all-linear"  # peft reads it in any case
    if isinstance(value, str) and value.strip():
        if value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigError(f"{key}={value!r} is not a valid regex ({exc}): fix the pattern") from exc
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ConfigError(
        f"{key} must be a module name list, a regex or all-linear, got {value!r}: e.g. {key}=[q_proj,v_proj]"
    )
