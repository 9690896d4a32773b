"""Running one experiment on several processes: trainer checks before anything loads, which
process is rank 0 before Lightning knows, ending a run's processes, and gathering a sharded
adapter onto rank 0. How worker processes are started is loralab.launcher's.

check_trainer runs among the config checks, before torch loads: keep torch and Lightning out of
this module's top-level imports.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError

log = logging.getLogger(__name__)

CUDA_ACCELERATORS = ("gpu", "cuda")
# transformers' decoder layer classes: one FSDP unit each
DECODER_LAYERS = (
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
    "Qwen3DecoderLayer",
    "GemmaDecoderLayer",
    "Gemma2DecoderLayer",
    "Phi3DecoderLayer",
    "GPT2Block",
    "GPTNeoXLayer",
)


def env_rank() -> int:
    """This process's global rank as its launcher's environment says (0 when launched alone).
    Valid before torch.distributed is set up, which Lightning does only inside `fit`.
    Order as Lightning's: RANK (torchrun, loralab's workers), then the local and node rank
    (Lightning's launcher), then SLURM's and MPI's task ids (a worker started inside an
    interactive SLURM job inherits SLURM_PROCID=0, so the local rank comes first)."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ or "GROUP_RANK" in os.environ:
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
        # processes per node are known to the trainer only: a process on another node counts as
        # non-zero, which is what callers ask
        return local if node == 0 else node * 1_000_000 + local
    for key in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def is_rank_zero() -> bool:
    """Whether this process writes the run-level files (summary, reports, merged model)."""
    return env_rank() == 0


# ---- checks before anything loads --------------------------------------------------------
def strategy_name(trainer: Any) -> str:
    """The configured strategy: its class name (FSDPStrategy) or Lightning's registered name
    (deepspeed_stage_3); empty when none is set."""
    strategy = (trainer or {}).get("strategy")
    if strategy is None:
        return ""
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    return name.rsplit(".", 1)[-1]


def strategy_family(trainer: Any) -> str:
    """`fsdp` or `deepspeed` for the strategies that shard (FSDPStrategy, fsdp_cpu_offload,
    DeepSpeedStrategy, deepspeed_stage_3, ...), else empty."""
    name = strategy_name(trainer).lower()
    return next((family for family in ("fsdp", "deepspeed") if name.startswith(family)), "")


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(accelerator: str) -> tuple[str, str]:
    """What `precision=auto` means on this machine, and why: bf16 autocast over fp32 weights where
    the hardware computes bf16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
    AMX), fp32 elsewhere (where bf16 would be emulated, or fp16 would need loss scaling)."""
    if accelerator in (*CUDA_ACCELERATORS, "auto"):
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            # emulated bf16 (pre-Ampere GPUs) is slower than fp32: only native counts
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return "bf16-mixed", f"{name} computes bf16 natively"
            return "32-true", f"{name} has no native bf16"
        if accelerator != "auto":
            return "32-true", "no CUDA device"
    if cpu_has_bf16():
        return "bf16-mixed", "the CPU computes bf16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
    return "32-true", "the CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): it would be emulated"


def resolve_precision(cfg: Any) -> None:
    """`trainer.precision=auto` (the presets' default) replaced, in place, by this machine's choice,
    before the config is hashed, saved or checked; `precision_choice` records it and why (in
    run_meta.json and summary.json). An explicit precision is left as it is."""
    from omegaconf import OmegaConf, open_dict

    if str(OmegaConf.select(cfg, "trainer.precision", default=None)) != "auto":
        return
    chosen, why = choose_precision(str(cfg.trainer.get("accelerator", "cpu")))
    with open_dict(cfg):
        cfg.trainer.precision = chosen
        cfg.precision_choice = {"asked": "auto", "used": chosen, "why": why}
    log.info("precision=auto: %s (%s)", chosen, why)


def check_trainer(cfg: Any) -> None:
    """Trainer settings this machine cannot run, as one-line ConfigErrors, before any model or
    data loads."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "cpu"))
    precision = str(trainer.get("precision", "32-true"))
    name, family = strategy_name(trainer), strategy_family(trainer)
    devices = trainer.get("devices", 1)
    num_nodes = trainer.get("num_nodes", 1) or 1

    if accelerator in CUDA_ACCELERATORS:
        # torch only for a GPU trainer: a CPU config is refused without loading it
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine has none (torch sees no "
                "CUDA device): use trainer=cpu, or trainer=ddp_cpu for several CPU processes"
            )
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise ConfigError(
                f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPU(s): set "
                "trainer.devices to at most that, or -1 for all"
            )
    if accelerator == "cpu":
        if family:
            raise ConfigError(f"trainer.strategy {name} runs on CUDA GPUs only: on CPU use trainer=ddp_cpu")
        if precision.startswith("16") or precision == "transformer-engine":
            raise ConfigError(
                f"trainer.precision={precision} needs a GPU (fp16 with loss scaling): on CPU use "
                "precision=bf16-mixed or precision=32-true"
            )
        if not (isinstance(devices, int) and devices >= 1):
            raise ConfigError(f"trainer.devices must be a number of processes >= 1 on CPU, got {devices!r}")
        if "bf16" in precision and not cpu_has_bf16():
            log.warning(
                "precision=%s on a CPU without native bf16 (no avx512_bf16/amx_bf16): it runs, emulated, and "
                "may be slower than 32-true",
                precision,
            )
    variant = (cfg.get("variant") or {}).get("name")
    if family and variant and _updates_base_weights(variant):
        raise ConfigError(
            f"variant={variant} updates the base weights, which a sharded strategy splits between processes "
            "and the saved adapter does not carry: use trainer=ddp (or gpu) with it"
        )
    merge_check = (cfg.get("callbacks") or {}).get("merge_check") or {}
    if family and merge_check.get("rebuild") == "never":
        raise ConfigError(
            f"callbacks.merge_check.rebuild=never, but under {name} no process holds the trained model whole: "
            "set callbacks.merge_check.rebuild=auto"
        )
    if family == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"trainer.strategy {name} needs the deepspeed package: pip install deepspeed") from exc
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes must be an integer >= 1, got {num_nodes!r}")
    if num_nodes > 1 and not _cluster_launch():
        raise ConfigError(
            f"trainer.num_nodes={num_nodes} needs a multi-node launch: run under SLURM (srun, or "
            "hydra/launcher=slurm with nodes set), or start the same command on every node with NODE_RANK, "
            "MASTER_ADDR and MASTER_PORT set (or torchrun --nnodes)"
        )
    if (num_nodes > 1 or _external_launch()) and not _run_dir_pinned():
        raise ConfigError(
            "several processes were launched from outside (torchrun/srun): each would time-stamp its own run "
            "directory; pin it with hydra.run.dir=outputs/<name> (a multirun: hydra.sweep.dir=...) so that all "
            "of them agree"
        )


def _cluster_launch() -> bool:
    return any(
        v in os.environ for v in ("SLURM_NTASKS", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "OMPI_COMM_WORLD_SIZE")
    )


def _external_launch() -> bool:
    """Processes started by torchrun or srun (not by loralab's own launcher)."""
    if os.environ.get("LORALAB_WORKER"):
        return False
    world = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
    return world.isdigit() and int(world) > 1


def _run_dir_pinned() -> bool:
    """hydra.run.dir given on the command line (a multirun: hydra.sweep.dir, or submitit, which
    fixes each job's directory before its tasks start)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return True
    if not HydraConfig.initialized():
        return True
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # submitit pickles each job's config once for all its tasks; otherwise every process
        # would time-stamp its own sweep directory
        from omegaconf import OmegaConf

        launcher = str(OmegaConf.select(hc, "launcher._target_") or "")
        return "submitit" in launcher or any(o.startswith("hydra.sweep.dir=") for o in hc.overrides.hydra)
    return any(o.startswith("hydra.run.dir=") for o in hc.overrides.hydra)


# ---- FSDP ----------------------------------------------------------------------------------
def decoder_layer_policy() -> Any:
    """FSDP auto-wrap policy: one unit per transformers decoder layer."""
    import functools

    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    def is_layer(module: Any) -> bool:
        return type(module).__name__ in DECODER_LAYERS

    return functools.partial(lambda_auto_wrap_policy, lambda_fn=is_layer)


def collectives_done(trainer: Any) -> None:
    """The run's last collective is behind it: a worker exiting now (even with an error at its
    interpreter's teardown) no longer concerns rank 0, which goes on with the merge check."""
    watcher = getattr(getattr(getattr(trainer, "strategy", None), "_launcher", None), "watcher", None)
    if watcher is not None:
        watcher.stopped = True


def end_distributed(trainer: Any, failed: bool) -> None:
    """After a run: join (or, on failure, stop) the workers, restore the environment, and close
    the process group the fit opened (Lightning leaves it open), so that the next run in this
    process (a sweep's next job) starts afresh."""
    import torch.distributed as dist

    launcher = getattr(getattr(trainer, "strategy", None), "_launcher", None)
    if hasattr(launcher, "finish"):
        launcher.finish(failed)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- the whole adapter on rank 0 --------------------------------------------------------------
@contextlib.contextmanager
def full_parameters(trainer: Any) -> Iterator[None]:
    """Inside: rank 0's module holds every parameter whole, gathered from the other ranks'
    shards (FSDP, DeepSpeed ZeRO-3); nothing to do for DDP and one device. Every rank must
    enter it (it is a collective)."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if name == "FSDPStrategy":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True):
            yield
    elif name == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False):
        import deepspeed

        # the adapter alone: gathering the frozen base too would put the whole model on every GPU
        trainable = [p for p in strategy.model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            yield
    else:
        yield


def sharded_strategy(trainer: Any) -> bool:
    """Whether parameters are split between processes (FSDP, DeepSpeed ZeRO-3)."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    return name == "FSDPStrategy" or (name == "DeepSpeedStrategy" and bool(getattr(strategy, "zero_stage_3", False)))


WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name without the wrappers' parts (FSDP, activation checkpointing, compile)."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _updates_base_weights(variant: str) -> bool:
    """Whether the registered variant changes the base weights themselves (its spec says so)."""
    from loralab.variants import get_variant

    return get_variant(variant).updates_base_weights
