"""Logger factories: W&B online when credentials exist, offline (no prompt) otherwise."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """An API key in the environment or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def check_wandb_env() -> None:
    """Refuse a WANDB_MODE that W&B itself would reject with a traceback when the run starts."""
    from loralab.errors import ConfigError

    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(
            f"the environment sets WANDB_MODE={mode!r}, which W&B does not know: unset it (online with "
            "credentials, offline without), or set WANDB_MODE=offline, online or disabled"
        )


def sweep_group(output_dir: str | None) -> str | None:
    """In a multirun job, the sweep's id for W&B's group: its directory, relative to the outputs
    directory. None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return group_of_sweep(HydraConfig.get().sweep.dir, output_dir)


def group_of_sweep(sweep_dir: str | Path, output_dir: str | None) -> str:
    """A sweep's W&B group: its directory relative to the outputs directory (else its name)."""
    sweep, out = Path(sweep_dir).resolve(), Path(output_dir or ".").resolve()
    return str(sweep.relative_to(out)) if sweep.is_relative_to(out) else sweep.name


def wandb_offline() -> bool:
    """Offline when WANDB_MODE says so, or when it is unset and no credentials exist (W&B would
    prompt for them); otherwise W&B's own settings decide."""
    mode = os.environ.get("WANDB_MODE")
    return mode in ("offline", "dryrun") or (mode is None and not wandb_credentials_present())


def wandb_logger(
    save_dir: str,
    group: str | None = None,
    tags: list[str] | None = None,
    auto_tags: list[str] | None = None,
    experiment: str | None = None,
    output_dir: str | None = None,
    **kwargs: Any,
) -> Any:
    """A Lightning WandbLogger; offline unless WANDB_MODE says otherwise or credentials exist.
    Group: `group`, else the sweep's id in a multirun, else the experiment name. Tags: `tags`
    plus `auto_tags` (r, alpha, seed)."""
    from lightning.pytorch.loggers import WandbLogger

    check_wandb_env()
    group = group or sweep_group(output_dir) or experiment
    all_tags = list(dict.fromkeys([*(tags or []), *(auto_tags or [])]))
    kwargs.update(group=group, tags=all_tags)

    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # without credentials W&B would prompt for them: go offline instead; otherwise leave the
    # choice to W&B's own settings (WANDB_MODE, `wandb offline`)
    offline = wandb_offline()
    if offline:
        log.info("W&B is offline (no credentials): sync later with `wandb sync %s/wandb/offline-run-*`", save_dir)
    logger = WandbLogger(save_dir=save_dir, offline=offline, **kwargs)
    # Lightning passes anonymous=None to wandb.init, which W&B answers with a deprecation warning on
    # every run ("The anonymous setting has no effect"): leave the setting out
    init = getattr(logger, "_wandb_init", None)  # the arguments Lightning keeps for wandb.init
    if isinstance(init, dict) and init.get("anonymous", "unset") is None:
        init.pop("anonymous")
    return logger


def attach_file(loggers: list, path: str | Path, base_dir: str | Path) -> None:
    """Attach a run file (manifest, merge report) to the W&B run; other loggers have the run dir."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.save(str(path), base_path=str(base_dir), policy="now")


def close_wandb(failed: bool) -> None:
    """Finish the W&B run of this process, marking it failed when the run failed."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
