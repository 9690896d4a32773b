"""Typed schemas for what users type most (variant, data), checked at compose time."""

from loralab.config.schemas import DataConfig, LoraVariantConfig, register_schemas, validate

__all__ = ["DataConfig", "LoraVariantConfig", "register_schemas", "validate"]
