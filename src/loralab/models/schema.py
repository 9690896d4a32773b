"""The `model/quantization` group's schema (QLoRA through bitsandbytes). Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

from loralab.errors import ConfigError

QUANT_BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class QuantizationConfig:
    """A k-bit base through bitsandbytes (QLoRA): `bits` 4 (with `quant_type` and `double_quant`)
    or 8 (LLM.int8). `compute_dtype` is what 4-bit layers compute in and what the merge check
    dequantizes into; `gradient_checkpointing` is peft's prepare_model_for_kbit_training default."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise ConfigError(
                f"model.quantization.bits must be 4 or 8, got {self.bits!r}: use model/quantization=nf4 or =int8"
            )
        if self.quant_type not in QUANT_TYPES:
            raise ConfigError(
                f"model.quantization.quant_type must be one of {list(QUANT_TYPES)}, got {self.quant_type!r}"
            )
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"model.quantization.compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {self.compute_dtype!r}"
            )
