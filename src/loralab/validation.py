"""Checking a composed config before anything loads: each part's schema is built from its owner
(the variant's from the variant registry, the data's from `data`, quantization's from `models`), and
each owner's cross-config checks run (the variant's, the optimizer's, the trainer's).

Hydra checks key names and types against the schemas while composing; `validate` then builds
the dataclasses, whose `__post_init__` checks values. Both happen before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

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
from loralab.data.schema import DataConfig
from loralab.errors import ConfigError
from loralab.models.schema import QuantizationConfig


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
    from loralab.variants.registry import registered_variants

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
    for owner in registered_variants():  # rules a variant makes of every run (LoRA-FA: its optimizer)
        if owner.check_any_run is not None:
            owner.check_any_run(spec.name, cfg)
    if spec.check is not None:
        spec.check(variant, cfg)
    if quantization is not None:
        # a k-bit base refused where bitsandbytes cannot run it (no CUDA, a CPU trainer, bitsandbytes
        # missing): a second here rather than a failed load
        from loralab.models.quantized import check_available

        check_available(cfg.get("trainer"))
    check_trainer(cfg)
    return ValidatedConfig(variant=variant, data=data, quantization=quantization)


def validate_data(cfg: DictConfig) -> DataConfig:
    """The data section alone, checked (loralab-eval: another split or data config for a finished
    run, whose training settings are not checked again)."""
    resolve_paths(cfg)
    return _build(DataConfig, cfg.data, "data")


def check_config(cfg, skeletons: dict | None = None):
    """The checks of one run's config, as a single run and every job of a sweep get them: its
    values, the W&B environment, the model's location, and the targets against the model's module
    tree (built without weights; `skeletons` keeps one per model across a sweep's jobs). Returns
    the typed config."""
    from omegaconf import OmegaConf

    from loralab.variants import get_variant

    typed = validate(cfg)
    if any("wandb" in str((node or {}).get("_target_", "")) for node in (cfg.get("logger") or {}).values()):
        from loralab.loggers import check_wandb_env

        check_wandb_env()
    skeletons = {} if skeletons is None else skeletons
    key = (OmegaConf.to_yaml(cfg.model, resolve=True), typed.data.task, typed.data.format)
    if key not in skeletons:
        source = _check_model_location(cfg)
        task = source.task_for(typed.data)  # a task the model cannot do is refused here
        skeletons[key] = (task.name, source.skeleton(task.name))
    task, skeleton = skeletons[key]
    get_variant(typed.variant.name).check_targets(skeleton, typed.variant, task)
    return typed


def _check_model_location(cfg):
    """Build the model source (it checks that a local model directory or packaged file exists;
    no weights load), so that a wrong path is refused before Hydra makes the run directory."""
    from hydra.utils import instantiate

    from loralab.errors import LoralabError

    try:
        return instantiate(cfg.model)
    except Exception as exc:  # instantiate wraps what the source raised
        if isinstance(exc.__cause__, LoralabError):
            raise exc.__cause__ from None
        raise
