"""Base models: hub id or local directory, the packaged GGUF default, or built from a config.

The sources load torch: they are imported on first use (`loralab.models.Pretrained`), so that the
schema beside them (`loralab.models.schema`) is read by the config checks without it."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FromConfig", "ModelSource", "PackagedGGUF", "Pretrained"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("loralab.models.sources"), name)
    raise AttributeError(f"module 'loralab.models' has no attribute {name!r}")
