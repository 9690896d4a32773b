"""The variant registry: a name maps to its schema, its builder, its trainable-parameter rule and,
where the variant needs them, its own cross-config checks and optimizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loralab.errors import ConfigError

if TYPE_CHECKING:  # torch loads with the model, after the config checks that use this module
    import torch


@dataclass(frozen=True, kw_only=True)
class BuildContext:
    """What a builder may use besides the model: the data (LoRA-drop's first stage trains on a
    sample of it), the run directory, and the checkpoint directory a resumed run starts from."""

    datamodule: Any = None
    run_dir: Path | None = None
    resume_dir: Path | None = None
    seed: int = 0
    # where a builder that trains (LoRA-drop's stage 1) runs: "cuda" when the trainer uses a GPU
    device: str = "cpu"


@dataclass(frozen=True, kw_only=True)
class AdapterInfo:
    """What a builder applied, finished when the builder returns it: the peft model plus the facts
    callbacks and reports need, the variant's own callbacks and its way of saving."""

    model: torch.nn.Module
    spec: VariantSpec
    cfg: Any
    task: str
    target_matches: dict[str, list[str]]
    modules_to_save_matches: dict[str, list[str]] = field(default_factory=dict)
    # a classification model's head modules (trained in full: their entries in modules_to_save_matches)
    heads: list[str] = field(default_factory=list)
    # the variant's own facts for summary.json and every checkpoint (variant.json)
    facts: dict = field(default_factory=dict)
    # callbacks the variant needs during fit (Delta-LoRA's weight update)
    callbacks: list = field(default_factory=list)
    # writes the adapter in peft's format into a directory; None: model.save_pretrained
    save_adapter: Callable[[Path], None] | None = None

    def is_trainable(self, param_name: str) -> bool:
        """Whether this parameter belongs to the adapter (or modules_to_save)."""
        return self.spec.is_trainable(param_name, self.cfg)

    def save(self, directory: str | Path) -> None:
        """Write an adapter that plain peft loads (`PeftModel.from_pretrained`) into `directory`."""
        if self.save_adapter is not None:
            self.save_adapter(Path(directory))
        else:
            self.model.save_pretrained(str(directory))

    def make_optimizer(self, factory: Callable[..., torch.optim.Optimizer]) -> torch.optim.Optimizer:
        """The optimizer from the config's partial: the variant's own grouping where it has one."""
        if self.spec.make_optimizer is not None:
            return self.spec.make_optimizer(self, factory)
        return default_optimizer(self.model, factory)


def default_optimizer(model: torch.nn.Module, factory: Callable[..., torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters; factories marked `takes_model` get the model."""
    if getattr(getattr(factory, "func", factory), "takes_model", False):
        return factory(model)
    return factory([p for p in model.parameters() if p.requires_grad])


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    """A variant: its config schema, how to apply it, and which parameters it trains.
    `check(variant_cfg, full_cfg)` refuses bad combinations with other groups before anything
    loads; `check_model(model, variant_cfg, task)` refuses targets the variant cannot adapt;
    `make_optimizer(adapter, factory)` builds the variant's parameter groups."""

    name: str
    schema: type
    build: Callable[[torch.nn.Module, Any, str, BuildContext], AdapterInfo]
    is_trainable: Callable[[str, Any], bool]
    check: Callable[[Any, Any], None] | None = None
    make_optimizer: Callable[[AdapterInfo, Callable[..., torch.optim.Optimizer]], torch.optim.Optimizer] | None = None
    check_model: Callable[[torch.nn.Module, Any, str], None] | None = None
    # LoRA's rank cannot exceed a target's min(d_in, d_out), so a larger r is refused; VeRA's r is
    # the width of its shared random projections and may exceed it
    rank_at_most_width: bool = True
    # the variant changes the base weights themselves (Delta-LoRA): a sharded strategy, which
    # splits them between processes, is refused
    updates_base_weights: bool = False
    # frozen tensors the variant's optimizer holds and reads without updating them (LoRA-FA's A,
    # which peft's LoRA-FA optimizer pairs with each B): the freeze check lets them be
    optimizer_reads: Callable[[str], bool] | None = None
    # a check this variant makes of every run's config, whichever variant the run uses
    # (LoRA-FA: its optimizer with another variant): (variant name, full config)
    check_any_run: Callable[[str, Any], None] | None = None

    def check_targets(self, model: torch.nn.Module, cfg: Any, task: str = "causal_lm") -> None:
        """Check the variant's targets against the model's module tree (a meta-device skeleton
        will do): every pattern matches modules an adapter can wrap, none of them shares its
        weight with another module, r fits them, and the variant's own rules (VeRA: linear only)
        hold."""
        from loralab.variants.targets import check_adaptable, check_rank, check_targets, check_tied

        found = check_targets(model, cfg, task)
        check_adaptable(model, found.targets)
        if self.check_model is not None:
            self.check_model(model, cfg, task)
        check_tied(model, found.targets, found.saves)
        if self.rank_at_most_width:
            check_rank(model, found.targets, cfg.r)


_REGISTRY: dict[str, VariantSpec] = {}


def register_variant(spec: VariantSpec) -> VariantSpec:
    """Add a variant under its name."""
    _REGISTRY[spec.name] = spec
    return spec


def registered_variants() -> list[VariantSpec]:
    """Every registered variant (importing loralab.variants registers the built-in ones)."""
    import loralab.variants  # noqa: F401

    return list(_REGISTRY.values())


def get_variant(name: str | None) -> VariantSpec:
    """The variant registered as `name`."""
    import loralab.variants  # noqa: F401

    if name not in _REGISTRY:
        raise ConfigError(f"unknown variant {name!r}: choose variant= one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
