"""Dataclass schemas for the `variant`, `data` and `model/quantization` groups.

Hydra checks key names and types against them while composing; `validate` then builds
the dataclasses, whose `__post_init__` checks values. Both happen before any model loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from loralab.config.paths import resolve_paths
from loralab.config.values import (
    check_finite,
    check_optimizer_values,
    check_scheduler_values,
    check_seed,
    check_top_level,
    check_trainer_values,
)
from loralab.errors import ConfigError

BIASES = ("none", "all", "lora_only")
SOURCES = ("builtin", "local", "hub")
FORMATS = ("prompt_completion", "chat", "classification")
LORAFA_OPTIMIZER = "loralab.optim.lorafa"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
QUANT_BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


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


@dataclass
class DataConfig:
    """Where the data comes from, how it is formatted, and how it is batched."""

    name: str = "dates"
    source: str = "builtin"
    builtin_task: Optional[str] = "dates"
    format: str = "prompt_completion"
    num_train: Optional[int] = 1000
    num_val: Optional[int] = 200
    seed: int = 1234
    max_length: int = 128
    train_batch_size: int = 8
    eval_batch_size: int = 32
    generation_examples: int = 64
    max_new_tokens: int = 16
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    val_fraction: float = 0.1
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = None
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    text_column: str = "text"
    label_column: str = "label"
    labels: Optional[List[str]] = None
    num_workers: int = 0
    # batch examples of similar length (less padding, faster steps); changes which examples share
    # a batch, so it is a switch of its own and off by default
    group_by_length: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {self.format!r}")
        for key in ("max_length", "train_batch_size", "eval_batch_size", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.generation_examples < 0:
            raise ConfigError(f"data.generation_examples must be >= 0, got {self.generation_examples}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check_seed(self.seed, "data.seed")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.source == "builtin":
            from loralab.data.builtin import BUILTIN_TASKS

            if self.builtin_task not in BUILTIN_TASKS:
                raise ConfigError(
                    f"unknown built-in task {self.builtin_task!r}: "
                    f"set data.builtin_task to one of {sorted(BUILTIN_TASKS)}"
                )
            for key in ("num_train", "num_val"):
                if not getattr(self, key) or getattr(self, key) < 1:
                    raise ConfigError(f"data.{key} must be >= 1 for a built-in task")
        elif self.source == "local":
            if not self.train_file:
                raise ConfigError("data.train_file is not set: pass data.train_file=path/to/train.jsonl")
            for key in ("train_file", "val_file"):
                path = getattr(self, key)
                if path is None:
                    continue
                if Path(path).is_dir():
                    raise ConfigError(
                        f"data.{key} {path} is a directory: pass a file ({', '.join(sorted(LOCAL_SUFFIXES))})"
                    )
                if not Path(path).is_file():
                    raise ConfigError(f"data.{key} not found: {path}: check the path")
                if Path(path).suffix.lower() not in LOCAL_SUFFIXES:
                    raise ConfigError(
                        f"data.{key} {path} has an unsupported suffix: use one of {sorted(LOCAL_SUFFIXES)}"
                    )
            if self.val_file is not None and Path(self.val_file).samefile(self.train_file):
                raise ConfigError(
                    f"data.val_file is the training file ({self.val_file}): validating on the training data "
                    "measures memorisation; pass a separate file, or leave data.val_file unset to hold out "
                    "data.val_fraction of the training file"
                )
        elif self.source == "hub":
            if not self.hub_id:
                raise ConfigError("data.hub_id is not set: pass data.hub_id=org/dataset")
            if self.val_split is not None and self.val_split == self.train_split:
                raise ConfigError(
                    f"data.val_split is the training split ({self.val_split!r}): validating on the training data "
                    "measures memorisation; pass another split, or leave data.val_split unset to hold out "
                    "data.val_fraction of the training split"
                )

    @property
    def task(self) -> str:
        """`seq_cls` for text/label data, else `causal_lm`."""
        return "seq_cls" if self.format == "classification" else "causal_lm"


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


@dataclass
class ValidatedConfig:
    """The typed parts of a composed config."""

    variant: Any
    data: DataConfig
    quantization: Optional[QuantizationConfig] = None


def register_schemas() -> None:
    """Store the schemas so that YAML files in conf/variant, conf/data and conf/model/quantization
    can extend them (`defaults: [_schema_<variant>]`); every registered variant stores its own."""
    from loralab.variants.registry import registered_variants

    cs = ConfigStore.instance()
    for spec in registered_variants():
        cs.store(group="variant", name=f"_schema_{spec.name}", node=spec.schema)
    cs.store(group="data", name="_schema_data", node=DataConfig)
    cs.store(group="model/quantization", name="_schema_quantization", node=QuantizationConfig)


def _build(schema: type, node: DictConfig, group: str) -> Any:
    data = OmegaConf.to_container(node, resolve=True)
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {group}: valid keys are {sorted(known)}")
    for key, value in data.items():  # nan and inf pass range checks such as `alpha > 0`
        check_finite(value, f"{group}.{key}")
    return schema(**data)


def validate(cfg: DictConfig) -> ValidatedConfig:
    """Check the variant, data and quantization settings; raise ConfigError with a one-line fix
    on bad values. Checks of the config alone come first and import no torch, so that a bad value
    is refused at once; those that ask the machine (CUDA, bitsandbytes, deepspeed) come last."""
    from loralab.distributed import check_trainer
    from loralab.variants import get_variant

    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required and not set: pass {key}=...")
    resolve_paths(cfg)
    check_top_level(cfg)
    spec = get_variant(cfg.variant.get("name"))
    variant = _build(spec.schema, cfg.variant, "variant")
    data = _build(DataConfig, cfg.data, "data")
    node = (cfg.get("model") or {}).get("quantization")
    quantization = None if node is None else _build(QuantizationConfig, node, "model.quantization")
    if (cfg.get("model") or {}).get("seed") is not None:
        check_seed(cfg.model.seed, "model.seed")
    if cfg.get("resume") not in (None, "auto"):
        raise ConfigError(f"resume must be auto or null, got {cfg.resume!r}: use ckpt_path=... for a path")
    if cfg.get("ckpt_path") and cfg.get("resume") == "auto":
        raise ConfigError(
            "resume=auto and ckpt_path both say where to continue from: pass one (resume=auto: the newest "
            "checkpoint of this run directory; ckpt_path: that checkpoint)"
        )
    if cfg.get("ckpt_path"):
        from loralab.rundir import checkpoint_state_file

        checkpoint_state_file(cfg.ckpt_path)
    check_trainer_values(cfg.get("trainer"))
    check_optimizer_values(cfg.get("optimizer"))
    check_scheduler_values(cfg.get("scheduler"))
    optimizer = (cfg.get("optimizer") or {}).get("_target_", "")
    if optimizer == LORAFA_OPTIMIZER and spec.name != "lora_fa":
        raise ConfigError(
            f"optimizer=lorafa trains B with A frozen and pairs each lora_A with its lora_B; it does not fit "
            f"variant={spec.name}: use variant=lora_fa, or optimizer=adamw"
        )
    if spec.check is not None:
        spec.check(variant, cfg)
    if quantization is not None:
        # a k-bit base refused where bitsandbytes cannot run it (no CUDA, a CPU trainer, bitsandbytes
        # missing): a second here rather than a failed load
        from loralab.models.quantized import check_available

        check_available(cfg.get("trainer"))
    check_trainer(cfg)
    return ValidatedConfig(variant=variant, data=data, quantization=quantization)
