"""loralab: config-driven LoRA experiments on Hydra, Lightning and peft."""

__version__ = "0.1.0"
