"""The variant registry: a name maps to its schema, its builder and its trainable-parameter rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from loralab.errors import ConfigError


@dataclass
class AdapterInfo:
    """What a builder applied: the peft model plus the facts callbacks and reports need."""

    model: torch.nn.Module
    spec: VariantSpec
    cfg: Any
    task: str
    target_matches: dict[str, list[str]]
    modules_to_save_matches: dict[str, list[str]] = field(default_factory=dict)

    def is_trainable(self, param_name: str) -> bool:
        """Whether this parameter belongs to the adapter (or modules_to_save)."""
        return self.spec.is_trainable(param_name, self.cfg)


@dataclass
class VariantSpec:
    """A variant: its config schema, how to apply it, and which parameters it trains."""

    name: str
    schema: type
    build: Callable[[torch.nn.Module, Any, str], AdapterInfo]
    is_trainable: Callable[[str, Any], bool]


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
    if name not in _REGISTRY:
        raise ConfigError(f"unknown variant {name!r}: choose variant= one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
