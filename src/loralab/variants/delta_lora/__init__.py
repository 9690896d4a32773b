"""Delta-LoRA: LoRA whose frozen weight W also moves, without gradients or optimizer state:
after each optimizer step t > K, W ← W + λ·s·(B_t·A_t − B_{t−1}·A_{t−1}). The updates telescope,
W_T = W_0 + λ·s·(B_T·A_T − B_K·A_K), which is what makes the run exportable and resumable:

- merged/ (written by the merge check) is the primary artefact: W_T + s·B_T·A_T;
- adapter/ is an ordinary peft LoRA of rank 2r against the *original* base that reproduces the
  trained model: W_0 + s·[(λ+1)·B_T, −λ·B_K]·[A_T; A_K] (to float rounding of the in-place updates).
  The rank-r pair (A_T, B_T) alone does not: it lacks the change of W;
- delta_w/ holds the change of W alone, λ·s·(B_T·A_T − B_K·A_K), in the same rank-2r form;
- checkpoints keep (A_K, B_K) in the callback state, and resume rebuilds W from the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loralab.errors import ConfigError
from loralab.variants.lora import adapter_info, is_trainable, lora_model
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig

if TYPE_CHECKING:  # torch loads with the model, after the config checks
    import torch


@dataclass
class DeltaLoraConfig(LoraVariantConfig):
    """Delta-LoRA: λ (`delta_lambda`) and the step K (`update_start`) after which W moves."""

    name: str = "delta_lora"
    dropout: float = 0.0
    delta_lambda: float = 2.0
    update_start: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dropout != 0:
            raise ConfigError(
                f"Delta-LoRA needs the LoRA branch without dropout (its W update assumes it): set "
                f"variant.dropout=0 (got {self.dropout})"
            )
        if self.update_start < 0:
            raise ConfigError(f"variant.update_start must be >= 0, got {self.update_start}")


def check(cfg: DeltaLoraConfig, full: Any) -> None:
    """W moves by λ·s·Δ(B·A) each step: increments that round away in a 16-bit weight, and that a
    k-bit weight cannot take at all."""
    if (full.get("model") or {}).get("quantization") is not None:
        raise ConfigError(
            "Delta-LoRA updates W itself every step, which a k-bit (bitsandbytes) weight cannot take: "
            "drop model/quantization, or use variant=lora"
        )
    dtype = (full.get("model") or {}).get("dtype", "float32")
    if dtype != "float32":
        raise ConfigError(
            f"Delta-LoRA adds a small λ·s·Δ(B·A) to W every step, which rounds away in a {dtype} weight: "
            "set model.dtype=float32 (trainer.precision=bf16-mixed still computes in bf16)"
        )


def build(model: torch.nn.Module, cfg: DeltaLoraConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """A peft LoRA adapter plus the callback that moves W."""
    from loralab.variants.delta_lora.callbacks import DeltaLoraUpdate, DeltaWExport

    peft_model, found = lora_model(model, cfg, task)
    update = DeltaLoraUpdate(peft_model, cfg.delta_lambda, cfg.update_start)
    facts = {
        "delta_lambda": cfg.delta_lambda,
        "update_start": cfg.update_start,
        "updates_applied": 0,
        "adapter_export": (
            f"rank-{2 * cfg.r} LoRA against the original base, W0 + s·[(λ+1)·B_T, −λ·B_K]·[A_T; A_K]: reproduces "
            "the trained model; the rank-r (A_T, B_T) alone does not (W moved); merged/ is the primary artefact"
        ),
    }
    callbacks = [update]
    if context is not None and context.run_dir is not None:
        callbacks.append(DeltaWExport(update, context.run_dir / "delta_w", facts))
    return adapter_info(
        peft_model,
        SPEC,
        cfg,
        task,
        found,
        facts=facts,
        callbacks=callbacks,
        save_adapter=lambda directory: update.save_adapter(peft_model, directory),
    )


SPEC = register_variant(
    VariantSpec(
        name="delta_lora",
        schema=DeltaLoraConfig,
        build=build,
        is_trainable=is_trainable,
        check=check,
        updates_base_weights=True,
    )
)
