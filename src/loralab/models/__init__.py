"""Base models: hub id or local directory, the packaged GGUF default, or built from a config."""

from loralab.models.sources import FromConfig, ModelSource, PackagedGGUF, Pretrained

__all__ = ["FromConfig", "ModelSource", "PackagedGGUF", "Pretrained"]
