"""Checks of what the typed schemas do not cover: the top-level keys (seed, experiment name, tags),
the trainer's numbers, the optimizer's and the scheduler's. Each refuses a value that would crash
later, or run and mean nothing (0 steps, an infinite rate), with one line that names the fix.
Like the schemas, these import no torch: a bad value is refused in a second."""

from __future__ import annotations

import math
import re
from typing import Any

from loralab.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seeds (Lightning's seed_everything, datasets' splits) are 32-bit
# one directory name under outputs/: no separators, no leading dot (., .., hidden directories)
PLAIN_NAME = re.compile(r"[\w+=,@-][\w.+=,@-]*")
WANDB_TAG_MAX = 64  # W&B refuses longer tags when the run starts
PRECISIONS = (
    "auto",  # replaced by loralab.distributed.resolve_precision before the run
    "32-true",
    "32",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "64",
    "transformer-engine",
    "transformer-engine-float16",
)


def is_int(value: Any) -> bool:
    """An integer that is not a bool (YAML's true is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seed(value: Any, key: str) -> None:
    """A seed every generator takes: an integer in [0, 2**32 - 1]."""
    if not is_int(value) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key} must be an integer in [0, {SEED_MAX}], got {value!r}: set e.g. {key}=42")


def check_finite(value: Any, key: str) -> None:
    """nan and inf pass most range checks (`inf > 0`): refuse them by name."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")


# on/off switches outside the groups' schemas: true or false, nothing else (Hydra passes `maybe` or
# `1` through as they are, and Python would read any of them as on)
SWITCHES = (
    "validate_before",
    "cache_before",
    "compute.labelled_head",
    "compute.shared_dropout",
    "compute.fast_dropout",
    "compute.shared_prefix",
    "compute.shared_prefix_train",
    "compute.prompt_once",
    "compute.compile",
)


# switches that also take `auto`: the run chooses by its device (compute.shared_prefix_train)
AUTO_SWITCHES = ("compute.shared_prefix_train",)


def check_top_level(cfg: Any) -> None:
    """seed, experiment_name, tags and the switches."""
    from omegaconf import OmegaConf

    check_seed(cfg.get("seed"), "seed")
    for key in SWITCHES:
        value = OmegaConf.select(cfg, key) if OmegaConf.is_config(cfg) else cfg.get(key)
        if key in AUTO_SWITCHES and value == "auto":
            continue
        if value is not None and not isinstance(value, bool):
            if key in AUTO_SWITCHES:
                raise ConfigError(
                    f"{key} must be true, false or auto, got {value!r}: write {key}=auto (on on the CPU, off on a "
                    f"GPU), {key}=true or {key}=false"
                )
            raise ConfigError(f"{key} must be true or false, got {value!r}: write {key}=true or {key}=false")
    name = cfg.get("experiment_name")
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"experiment_name={name!r} must be a plain directory name (letters, digits and _ . + = , @ -, not "
            "starting with a dot, no '/'): it names the run's directory under outputs/, e.g. experiment_name=my_study"
        )
    tags = cfg.get("tags")
    if tags is None:
        return
    if not (isinstance(tags, (list, tuple)) or _is_list_node(tags)):
        raise ConfigError(f"tags must be a list, got {tags!r}: write tags=[{tags}]")
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > WANDB_TAG_MAX:
            raise ConfigError(f"tags must be non-empty strings of at most {WANDB_TAG_MAX} characters, got {tag!r}")


def _is_list_node(value: Any) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, ListConfig)


def _positive_int(trainer: Any, key: str, fix: str, allow: tuple = ()) -> None:
    value = trainer.get(key)
    if value in allow and not isinstance(value, bool):
        return
    if not is_int(value) or value < 1:
        raise ConfigError(f"trainer.{key} must be an integer >= 1, got {value!r}: {fix}")


def check_trainer_values(trainer: Any) -> None:
    """The trainer's step counts, intervals, clipping and precision, before Lightning sees them."""
    if not trainer:
        return
    max_steps, max_epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    if max_steps == -1 and not isinstance(max_steps, bool):
        if not is_int(max_epochs) or max_epochs < 1:
            raise ConfigError(
                "trainer.max_steps=-1 trains until trainer.max_epochs, which is not set: set trainer.max_steps=N "
                "or trainer.max_epochs=N"
            )
    else:
        _positive_int(
            trainer, "max_steps", "set e.g. trainer.max_steps=40 (0 would save an untrained adapter)", allow=(None,)
        )
    if max_epochs is not None and max_epochs != -1:
        _positive_int(trainer, "max_epochs", "set e.g. trainer.max_epochs=1, or null to stop by trainer.max_steps")
    _positive_int(trainer, "accumulate_grad_batches", "set trainer.accumulate_grad_batches=1 for no accumulation")
    _positive_int(trainer, "log_every_n_steps", "set e.g. trainer.log_every_n_steps=5")
    if trainer.get("check_val_every_n_epoch") is not None:
        _positive_int(trainer, "check_val_every_n_epoch", "set it to null to validate by trainer.val_check_interval")
    interval = trainer.get("val_check_interval")
    if interval is not None:
        good = (is_int(interval) and interval >= 1) or (
            isinstance(interval, float) and math.isfinite(interval) and 0 < interval <= 1
        )
        if not good:
            raise ConfigError(
                f"trainer.val_check_interval must be a number of steps >= 1 or a fraction of an epoch in (0, 1], "
                f"got {interval!r}: set e.g. trainer.val_check_interval=20"
            )
    sanity = trainer.get("num_sanity_val_steps")
    if sanity is not None and (not is_int(sanity) or sanity < -1):
        raise ConfigError(f"trainer.num_sanity_val_steps must be an integer >= -1, got {sanity!r}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not is_number(clip) or not math.isfinite(clip) or clip < 0):
        raise ConfigError(
            f"trainer.gradient_clip_val must be a finite number >= 0 (or null: no clipping), got {clip!r}: "
            "set e.g. trainer.gradient_clip_val=1.0"
        )
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        import os

        source = (
            " (set by the environment's LORALAB_PRECISION)" if os.environ.get("LORALAB_PRECISION") == precision else ""
        )
        raise ConfigError(
            f"trainer.precision={precision}{source} is not a precision Lightning knows: use precision=auto, "
            "precision=32-true, precision=bf16-mixed or precision=16-mixed"
        )


def check_optimizer_values(optimizer: Any) -> None:
    """Learning rate, weight decay, betas and eps of a partial torch optimizer (when present)."""
    if not optimizer:
        return
    lr = optimizer.get("lr")
    if "lr" in optimizer and (not is_number(lr) or not math.isfinite(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr must be a finite number > 0, got {lr!r}: set e.g. optimizer.lr=2e-4")
    decay = optimizer.get("weight_decay")
    if decay is not None and (not is_number(decay) or not math.isfinite(decay) or decay < 0):
        raise ConfigError(f"optimizer.weight_decay must be a finite number >= 0, got {decay!r}")
    eps = optimizer.get("eps")
    if eps is not None and (not is_number(eps) or not math.isfinite(eps) or eps <= 0):
        raise ConfigError(f"optimizer.eps must be a finite number > 0, got {eps!r}")
    betas = optimizer.get("betas")
    if betas is not None:
        pair = list(betas) if not isinstance(betas, str) else None
        if not pair or len(pair) != 2 or not all(is_number(b) and 0 <= b < 1 for b in pair):
            raise ConfigError(
                f"optimizer.betas must be two numbers in [0, 1), got {betas!r}: set e.g. optimizer.betas=[0.9,0.999]"
            )


def check_scheduler_values(scheduler: Any) -> None:
    """The warm-up share and the final learning-rate ratio of the cosine schedule."""
    if not scheduler:
        return
    warmup = scheduler.get("warmup_ratio")
    if warmup is not None and (not is_number(warmup) or not 0 <= warmup < 1):
        raise ConfigError(
            f"scheduler.warmup_ratio must be in [0, 1), got {warmup!r}: it is the share of the steps spent warming up"
        )
    floor = scheduler.get("min_lr_ratio")
    if floor is not None and (not is_number(floor) or not 0 <= floor <= 1):
        raise ConfigError(f"scheduler.min_lr_ratio must be in [0, 1], got {floor!r}")
