"""LoRA variants: strategies chosen by name from a registry (one module + one YAML each)."""

from loralab.variants.registry import AdapterInfo, VariantSpec, get_variant, register_variant

# importing the modules registers their variants
from loralab.variants import lora  # noqa: E402,F401  isort: skip

__all__ = ["AdapterInfo", "VariantSpec", "get_variant", "register_variant"]
