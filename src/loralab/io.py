"""Atomic writes: a file or directory is complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Write text to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (see write_text)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_dir(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary directory beside `target`, then swap it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
    except BaseException:  # a failed or interrupted fill leaves nothing behind, and the old target
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return move_into(tmp, target)


def move_into(source: str | Path, target: str | Path) -> Path:
    """Rename the directory `source` to `target`, replacing what is there (set aside first, then
    removed: at every moment one of them is complete at `target`, or the old one beside it)."""
    source, target = Path(source), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.rename(target, old)
    os.rename(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def dir_bytes(path: str | Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def set_aside(path: str | Path) -> Path | None:
    """Rename an existing file to `<stem>.<n><suffix>` (first free n) so a new one can start."""
    path = Path(path)
    if not path.exists():
        return None
    n = 1
    while (kept := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    os.rename(path, kept)
    return kept
