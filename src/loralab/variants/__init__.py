"""LoRA variants: strategies chosen by name from a registry. Adding one is one module here
(which calls `register_variant`) plus one YAML in conf/variant/."""

import importlib
import pkgutil

from loralab.variants.registry import AdapterInfo, VariantSpec, get_variant, register_variant

_INFRASTRUCTURE = {"registry", "schema", "targets"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AdapterInfo", "VariantSpec", "get_variant", "register_variant"]
