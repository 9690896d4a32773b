"""Learning-rate schedules, built from config with the step count known only at fit time."""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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


def lorafa(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """peft's LoRA-FA optimizer (AdamW on B with B's gradient projected through (A·Aᵀ)⁻¹).

    peft puts every parameter of the model in its one group; only the adapter's trainable tensors
    and the frozen A each B is paired with are kept, and the A's are listed as `frozen_inputs`:
    read by the optimizer, never updated.
    """
    from peft.optimizers import create_lorafa_optimizer

    config = model.peft_config["default"]
    optimizer = create_lorafa_optimizer(
        model, r=config.r, lora_alpha=config.lora_alpha, lr=lr, weight_decay=weight_decay
    )
    for group in optimizer.param_groups:
        keep = [
            i
            for i, (p, n) in enumerate(zip(group["params"], group["names"], strict=True))
            if p.requires_grad or ".lora_A." in n
        ]
        for key in ("params", "names", "scaling_factors"):
            group[key] = [group[key][i] for i in keep]
        group["frozen_inputs"] = [n for n in group["names"] if ".lora_A." in n]
    return optimizer


lorafa.takes_model = True
