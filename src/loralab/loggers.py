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

    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        mode = "online" if wandb_credentials_present() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode in ("offline", "dryrun"):
        log.info(
            "W&B is offline (no credentials): sync later with `wandb sync %s/wandb/offline-run-*`",
            save_dir,
        )
    return WandbLogger(save_dir=save_dir, offline=mode in ("offline", "dryrun"), mode=mode, **kwargs)
