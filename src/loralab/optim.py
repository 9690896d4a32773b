"""Learning-rate schedules, built from config with the step count known only at fit time."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from loralab.variants.lora_fa import lorafa_optimizer


def warmup_cosine(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_ratio: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then cosine decay to `min_lr_ratio`."""
    warmup = max(1, int(round(warmup_ratio * num_training_steps))) if warmup_ratio > 0 else 0
    total = max(num_training_steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


# configs saved before the LoRA-FA optimizer moved into its variant name it here (a rerun reads them)
lorafa = lorafa_optimizer
