"""Logger factories: W&B online when credentials exist, offline (no prompt) otherwise."""

from __future__ import annotations

import logging
import netrc
import os
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


def wandb_logger(save_dir: str, **kwargs: Any) -> Any:
    """A Lightning WandbLogger; offline unless WANDB_MODE says otherwise or credentials exist."""
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("WANDB_MODE")
    # without credentials W&B would prompt for them: go offline instead; otherwise leave the
    # choice to W&B's own settings (WANDB_MODE, `wandb offline`)
    offline = mode in ("offline", "dryrun") or (mode is None and not wandb_credentials_present())
    if offline:
        log.info("W&B is offline (no credentials): sync later with `wandb sync %s/wandb/offline-run-*`", save_dir)
    return WandbLogger(save_dir=save_dir, offline=offline, **kwargs)


def attach_file(loggers: list, path: str | Path, base_dir: str | Path) -> None:
    """Attach a run file (manifest, merge report) to the W&B run; other loggers have the run dir."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.save(str(path), base_path=str(base_dir), policy="now")
