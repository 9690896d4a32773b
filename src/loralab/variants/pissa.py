"""PiSSA: LoRA initialised from the top-r singular vectors of W0, with W0 replaced by the residual.
Saved adapters are converted (peft's `path_initial_model_for_weight_conversion`) into a plain LoRA
of rank 2r against the original base, so that they apply to the unmodified model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from loralab.errors import ConfigError
from loralab.io import write_dir
from loralab.rundir import ADAPTER_WEIGHTS
from loralab.variants.lora import adapter_info, is_trainable, lora_model
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig

if TYPE_CHECKING:  # torch loads with the model, after the config checks
    import torch

INIT_DIR = "pissa_init"


@dataclass
class PissaConfig(LoraVariantConfig):
    """PiSSA: `svd_niter` null for an exact SVD, or K for peft's fast randomized SVD (pissa_niter_K)."""

    name: str = "pissa"
    dropout: float = 0.0
    svd_niter: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_lora_weights is not True:
            raise ConfigError("PiSSA sets its own initialisation: leave variant.init_lora_weights at true")
        if self.bias != "none":
            # the conversion loads the initial adapter as a second one, which peft refuses with trained biases
            raise ConfigError(
                f"PiSSA with variant.bias={self.bias}: its saved adapter is converted by peft into a plain LoRA "
                "against the original base, which peft cannot do when biases train: set variant.bias=none, or train "
                "biases with variant=lora"
            )
        if self.svd_niter is not None and self.svd_niter < 1:
            raise ConfigError(f"variant.svd_niter must be null or >= 1, got {self.svd_niter}")

    @property
    def init(self) -> str:
        """peft's init_lora_weights value."""
        return "pissa" if self.svd_niter is None else f"pissa_niter_{self.svd_niter}"


def check(cfg: PissaConfig, full: Any) -> None:
    """PiSSA replaces W0 by its SVD residual: peft does that on float weights only."""
    if (full.get("model") or {}).get("quantization") is not None:
        raise ConfigError(
            "PiSSA replaces W0 by its SVD residual, which peft does on float weights only, not on a k-bit "
            "(bitsandbytes) base: drop model/quantization, or use variant=lora"
        )


def build(model: torch.nn.Module, cfg: PissaConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """SVD-initialised LoRA; the initial adapter is kept (run_dir/pissa_init) for the conversion."""
    import torch

    peft_model, found = lora_model(model, cfg, task, init_lora_weights=cfg.init)
    run_dir = context.run_dir if context is not None and context.run_dir is not None else None
    init_dir = (run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="loralab-"))) / INIT_DIR
    # the initial state is the same on every (re)build: the SVD of the same W0
    write_dir(init_dir, lambda tmp: peft_model.save_pretrained(str(tmp)))

    def save(directory: Path) -> None:
        # the conversion loads the initial adapter into fresh LoRA layers, whose random init would
        # draw from the global RNG after the checkpoint recorded it: resume would then diverge
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            peft_model.save_pretrained(str(directory), path_initial_model_for_weight_conversion=str(init_dir))
        keep_trained_copies(peft_model, Path(directory))

    facts = {
        "init": cfg.init,
        "initial_adapter_dir": str(init_dir),
        "export": f"plain LoRA of rank {2 * cfg.r} against the original base (ΔW = B·A − B0·A0)",
    }
    return adapter_info(peft_model, SPEC, cfg, task, found, facts=facts, save_adapter=save)


def keep_trained_copies(model: torch.nn.Module, directory: Path) -> None:
    """peft's conversion writes only the converted lora_A/lora_B: put back what else the adapter
    holds (a classification head and other modules_to_save, trained biases), unchanged."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    path = directory / ADAPTER_WEIGHTS
    converted = load_file(str(path))
    missing = {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items() if k not in converted
    }
    if missing:
        save_file({**converted, **missing}, str(path), metadata={"format": "pt"})


SPEC = register_variant(
    VariantSpec(name="pissa", schema=PissaConfig, build=build, is_trainable=is_trainable, check=check)
)
