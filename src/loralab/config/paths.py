"""One rule for the paths a user types: `~` is the home directory and a relative path is relative
to the directory the command was started in. Paths are made absolute in the config itself, so
that the resolved config a run saves (and `loralab-rerun` runs) finds the same files from any
working directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import open_dict

# the keys that name files or directories a run reads
PATH_KEYS = ("data.train_file", "data.val_file", "data.test_file", "ckpt_path")
# keys that hold a shipped resource's name or a file's path: made absolute when they look like a path
NAME_OR_PATH_KEYS = ("callbacks.forgetting.probe",)


# conf/ beside src/ (the package is installed editable from the repository)
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def absolute(value: str, base: str | Path | None = None) -> str:
    """`value` with `~` expanded, made absolute against `base` (default: the working directory)."""
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    return os.path.normpath(str(path))


def is_local_model(name: str, base: str | Path | None = None) -> bool:
    """Whether model.name_or_path names a local directory rather than a hub id."""
    return str(name).startswith(("/", ".", "~")) or Path(absolute(name, base)).is_dir()


def resolve_paths(cfg: Any, base: str | Path | None = None) -> None:
    """Make the data files, ckpt_path, a probe file and a local model.name_or_path absolute, in place."""
    from omegaconf import OmegaConf

    with open_dict(cfg):
        for key in PATH_KEYS:
            value = OmegaConf.select(cfg, key, default=None)
            if isinstance(value, str) and value:
                OmegaConf.update(cfg, key, absolute(value, base), merge=False)
        for key in NAME_OR_PATH_KEYS:
            value = OmegaConf.select(cfg, key, default=None)
            if isinstance(value, str) and any(c in value for c in "/.~"):  # a bare name is a shipped one
                OmegaConf.update(cfg, key, absolute(value, base), merge=False)
        model = cfg.get("model")
        name = model.get("name_or_path") if model is not None else None
        if isinstance(name, str) and name and is_local_model(name, base):
            model.name_or_path = absolute(name, base)
