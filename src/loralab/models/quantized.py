"""Quantized bases (QLoRA): a base loaded with bitsandbytes 4- or 8-bit linear layers and prepared
for k-bit training as peft users do, and the float copy the merge check merges into.

Merging into a k-bit base requantizes W0 + ΔW (peft's bitsandbytes merge does), which throws away
much of what the adapter learned; the merge check merges into a copy dequantized to the compute
dtype instead, and saves that float model.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from loralab.distributed import strategy_family, strategy_name
from loralab.errors import ConfigError, MergeCheckError
from loralab.models.schema import QuantizationConfig

# trainer accelerators that put the model on a CUDA device (auto picks one when it exists)
CUDA_ACCELERATORS = ("gpu", "cuda", "auto")


def check_available(trainer: Any) -> None:
    """Refuse a k-bit base where it cannot train: no CUDA device, a trainer off the GPU or one that
    shards parameters (FSDP, DeepSpeed), or bitsandbytes not installed."""
    trainer = trainer or {}
    accelerator = trainer.get("accelerator")
    if not torch.cuda.is_available():
        raise ConfigError(
            "model.quantization needs a CUDA GPU (bitsandbytes k-bit bases): this machine has none; "
            "drop model/quantization or run with trainer=gpu on a GPU machine"
        )
    if accelerator not in CUDA_ACCELERATORS:
        raise ConfigError(
            f"model.quantization puts the base on the GPU, but trainer.accelerator={accelerator}: use trainer=gpu"
        )
    if strategy_family(trainer):
        raise ConfigError(
            f"model.quantization does not shard: bitsandbytes k-bit weights do not fit trainer.strategy "
            f"{strategy_name(trainer)}: use trainer=gpu or trainer=ddp"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "model.quantization needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or pip install -e '.[qlora]')"
        ) from exc


def as_quantization(value: Any) -> QuantizationConfig | None:
    """The typed quantization settings from a config node, a dict, or None (a float base)."""
    if value is None or isinstance(value, QuantizationConfig):
        return value
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)
    return QuantizationConfig(**data)


def bnb_config(quantization: QuantizationConfig) -> Any:
    """transformers' BitsAndBytesConfig for these settings."""
    from transformers import BitsAndBytesConfig

    dtype = getattr(torch, quantization.compute_dtype)
    if quantization.bits == 8:
        # bitsandbytes ignores the compute dtype in 8-bit; recorded so that the merge check reads
        # the dtype to dequantize into from the model itself
        return BitsAndBytesConfig(load_in_8bit=True, bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def load_kwargs(quantization: QuantizationConfig) -> dict:
    """`from_pretrained` arguments for a k-bit base: the bitsandbytes config and the device the
    weights are quantized on (this process's GPU; the CPU where there is none)."""
    device: Any = {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"
    return {"quantization_config": bnb_config(quantization), "device_map": device}


def prepare(model: torch.nn.Module, quantization: QuantizationConfig) -> torch.nn.Module:
    """peft's k-bit preparation: base frozen, unquantized weights in float32, input gradients on
    for gradient checkpointing (when enabled)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=quantization.gradient_checkpointing)


def quantization_of(model: torch.nn.Module) -> dict:
    """The bitsandbytes settings a (peft-wrapped) model was loaded with; {} for a float model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(getattr(base, "config", None), "quantization_config", None)
    if config is None or getattr(base, "hf_quantizer", None) is None:
        return {}
    values = config if isinstance(config, dict) else config.to_dict()
    if values.get("quant_method") != "bitsandbytes":
        return {}
    dtype = str(values.get("bnb_4bit_compute_dtype") or "float32").replace("torch.", "")
    if values.get("load_in_8bit"):
        return {"bits": 8, "compute_dtype": dtype}
    return {
        "bits": 4,
        "quant_type": values.get("bnb_4bit_quant_type"),
        "double_quant": bool(values.get("bnb_4bit_use_double_quant")),
        "compute_dtype": dtype,
    }


def _restore_saved_modules(model: torch.nn.Module) -> None:
    """Put back the original of each modules_to_save module: `unload()` keeps the trained copy,
    but the float base must be the base (the trained copy returns with the adapter's state)."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.original_module)


def dequantized_copy(peft_model: torch.nn.Module) -> torch.nn.Module:
    """A float copy of a peft model on a k-bit base: the base dequantized to its compute dtype,
    carrying the same trained adapter. Its `merge_and_unload()` adds ΔW to the dequantized W0;
    with the adapter disabled it is the dequantized base."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    facts = quantization_of(peft_model)
    if not facts:
        raise ValueError("dequantized_copy needs a model on a bitsandbytes base")
    dtype = getattr(torch, facts["compute_dtype"])
    name = peft_model.active_adapter
    adapter_state = get_peft_model_state_dict(peft_model, adapter_name=name)
    config = copy.deepcopy(peft_model.peft_config[name])
    # the trained values are loaded below: a plain init, never one that rewrites W0 (PiSSA, LoftQ)
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = True

    model = copy.deepcopy(peft_model)
    _restore_saved_modules(model)
    base = model.unload()
    base.dequantize(dtype=dtype)  # bitsandbytes layers -> nn.Linear; the quantization config is dropped
    base.to(dtype)
    base.config.dtype = dtype
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        base.__dict__.pop(flag, None)

    float_model = get_peft_model(base, config, adapter_name=name)
    loaded = set_peft_model_state_dict(float_model, adapter_state, adapter_name=name)
    if loaded.unexpected_keys:
        raise MergeCheckError(
            f"the adapter does not fit the dequantized base (unexpected keys {loaded.unexpected_keys[:3]}): "
            "report this with merge_report.json"
        )
    return float_model.eval()
