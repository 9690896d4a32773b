"""loralab: config-driven LoRA experiments on Hydra, Lightning and peft."""

import os

__version__ = "0.1.0"

# transformers 5 (with its `kernels` dependency) swaps a model's layers for kernels fetched from the
# Hugging Face Hub when it runs on CUDA: that needs the network (offline runs fail on the first
# model.eval()), runs code nobody here vetted, and ties a run's numbers to the Hub's state that day.
# loralab runs each model's own torch code, the same on every machine; USE_HUB_KERNELS=YES opts in.
os.environ.setdefault("USE_HUB_KERNELS", "NO")
