"""VeRA through peft's VeraConfig: one frozen random pair (A, B) shared by every adapted layer and
sliced to each layer's shape; each layer trains only a vector b (d_out) and a vector d (r)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loralab.config.values import check_seed
from loralab.errors import ConfigError
from loralab.variants.lora import adapter_info, peft_task
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import AdapterVariantConfig
from loralab.variants.targets import Resolution, check_targets, trains

if TYPE_CHECKING:  # torch and peft load with the model, after the config checks
    from peft import VeraConfig
    from torch import nn

_TRAINABLE = re.compile(r"\.vera_lambda_(b|d)\.|\.modules_to_save\.")


@dataclass
class VeraVariantConfig(AdapterVariantConfig):
    """VeRA: shared frozen projections regenerated from `projection_prng_key` (and saved with the
    adapter), trained scaling vectors b (zeros) and d (`d_initial`). VeRA has no α: `alpha` is
    accepted so that grids over alpha compose, and ignored."""

    name: str = "vera"
    r: int = 256
    dropout: float = 0.0
    d_initial: float = 0.1
    projection_prng_key: int = 0
    save_projection: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.save_projection:
            raise ConfigError(
                "variant.save_projection=false makes the adapter depend on a random generator reproducing "
                "the projections bit for bit elsewhere: keep variant.save_projection=true"
            )
        check_seed(self.projection_prng_key, "variant.projection_prng_key")
        if not self.d_initial > 0:
            raise ConfigError(f"variant.d_initial must be > 0, got {self.d_initial!r}: peft's default is 0.1")

    @property
    def scaling(self) -> float:
        """VeRA has no α/r factor."""
        return 1.0


def check_linear_targets(model: nn.Module, cfg: VeraVariantConfig, task: str = "causal_lm") -> None:
    """VeRA adapts linear layers only: refuse any other matched module with its name and type."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    for pattern, names in check_targets(model, cfg, task).targets.items():
        for name in names:
            module = model.get_submodule(name)
            if not isinstance(module, (nn.Linear, Conv1D)):
                raise ConfigError(
                    f"VeRA adapts linear layers only, but {pattern!r} selects {name} "
                    f"({type(module).__name__}): remove it from variant.target_modules"
                )


def check_existing_adapters(model: nn.Module, cfg: VeraVariantConfig) -> None:
    """A model that already carries a VeRA adapter shares its projections: a different r would pass
    peft's checks and crash in forward, so it is refused here."""
    from peft import PeftModel, VeraConfig

    if not isinstance(model, PeftModel):
        return
    for name, config in model.peft_config.items():
        if isinstance(config, VeraConfig) and config.r != cfg.r:
            raise ConfigError(
                f"the model already has VeRA adapter {name!r} with r={config.r}; a second VeRA adapter shares "
                f"its projections and must use the same r: set variant.r={config.r} (got {cfg.r})"
            )
    raise ConfigError("the base model already carries a peft adapter: loralab trains one adapter per run")


def vera_config(cfg: VeraVariantConfig, task: str, found: Resolution) -> VeraConfig:
    """peft's VeraConfig for our schema."""
    from peft import VeraConfig

    bias = "vera_only" if cfg.bias == "lora_only" else cfg.bias
    return VeraConfig(
        r=cfg.r,
        target_modules=cfg.target_modules,
        projection_prng_key=cfg.projection_prng_key,
        save_projection=cfg.save_projection,
        vera_dropout=cfg.dropout,
        d_initial=cfg.d_initial,
        bias=bias,
        modules_to_save=found.modules_to_save(cfg),
        task_type=peft_task(task),
    )


def build(model: nn.Module, cfg: VeraVariantConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """Check that every target is linear, then wrap the model with peft's VeRA."""
    from peft import get_peft_model

    check_existing_adapters(model, cfg)
    found = check_targets(model, cfg, task)
    check_linear_targets(model, cfg, task)
    peft_model = get_peft_model(model, vera_config(cfg, task, found))
    projections = peft_model.base_model.vera_A["default"], peft_model.base_model.vera_B["default"]
    facts = {
        "projection_prng_key": cfg.projection_prng_key,
        "save_projection": cfg.save_projection,
        "d_initial": cfg.d_initial,
        "vera_A_shape": list(projections[0].shape),
        "vera_B_shape": list(projections[1].shape),
    }
    return adapter_info(peft_model, SPEC, cfg, task, found, facts=facts)


def is_trainable(name: str, cfg: VeraVariantConfig) -> bool:
    """b and d vectors, modules_to_save copies, and biases as `bias` says."""
    return trains(name, _TRAINABLE, cfg.bias)


SPEC = register_variant(
    VariantSpec(
        name="vera",
        schema=VeraVariantConfig,
        build=build,
        is_trainable=is_trainable,
        check_model=check_linear_targets,
        rank_at_most_width=False,
    )
)
