"""The layout of a run directory and the rules for reading one: its file names, whether a directory
already holds a run, which training state a `ckpt_path` names, and whether a saved adapter is the
one its run recorded. Imports no torch (the config checks use it), except to check the tensors
of an adapter saved by a loralab that recorded no file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError

SUMMARY_FILE = "summary.json"
RUN_META = "run_meta.json"
RESOLVED_CONFIG = "config.yaml"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "training_state.ckpt"
CHECKPOINT_META = "checkpoint.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FREEZE_MANIFEST = "freeze_manifest.json"
MERGE_REPORT = "merge_report.json"
METRICS_CSV = "metrics.csv"
TRAIN_LOG = "train.log"
HYDRA_DIR = ".hydra"
SWEEP_SUMMARY = "sweep_summary.json"
# what the run itself writes: a directory holding any of these holds a run
RUN_MARKERS = (SUMMARY_FILE, RUN_META, CHECKPOINTS_DIR, ADAPTER_DIR)
FINISHED = ("completed", "skipped")


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`; {} when the file is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def existing_run(directory: str | Path) -> dict | None:
    """What `directory` holds of an earlier run, or None when it holds none (absent, empty, or only
    what Hydra writes before a run starts): its status, when it started, and whether it trained
    anything worth keeping (a checkpoint or an adapter)."""
    directory = Path(directory)
    if not directory.is_dir() or not any((directory / m).exists() for m in RUN_MARKERS):
        return None
    summary, meta = read_json(directory / SUMMARY_FILE), read_json(directory / RUN_META)
    steps = sorted((directory / CHECKPOINTS_DIR).glob("step-*")) if (directory / CHECKPOINTS_DIR).is_dir() else []
    return {
        "status": summary.get("status") or "unfinished",
        "started_at": meta.get("started_at"),
        "trained": bool(steps) or (directory / ADAPTER_DIR).is_dir(),
        "last_checkpoint": steps[-1].name if steps else None,
    }


def check_new_run_dir(run_dir: str | Path, resume: Any, ckpt_path: Any) -> None:
    """Refuse to start a fresh run in a directory holding a run that trained something: it would
    overwrite that run's adapter, checkpoints and summary. Continuing it (resume=auto, ckpt_path)
    is what such a directory is for; a run that failed before training left nothing to lose."""
    found = existing_run(run_dir)
    if found is None or resume == "auto" or ckpt_path or not (found["trained"] or found["status"] == "completed"):
        return
    facts = [f"status {found['status']}"]
    if found["last_checkpoint"]:
        facts.append(f"last checkpoint {found['last_checkpoint']}")
    raise ConfigError(
        f"hydra.run.dir={run_dir} holds an earlier run ({', '.join(facts)}): continue it with resume=auto, or "
        "start a new run in a new directory (leave hydra.run.dir unset for a time-stamped one)"
    )


def check_writable(path: str | Path, key: str) -> None:
    """Refuse a directory that cannot be created or written, before anything is written: say which
    existing directory (or file) stands in the way."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {probe} is a file, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == path else f"cannot be created: {probe} is"
        raise ConfigError(
            f"{key}={path} {what} not writable (read-only, or owned by another user); choose another path"
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(directory: str | Path) -> dict[str, str]:
    """SHA-256 of every file directly in `directory`, by name: what summary.json records of the
    final adapter, so that any reader can tell a damaged copy without loading it."""
    return {p.name: file_sha256(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}


def tensor_digest(tensor: Any) -> str:
    """SHA-256 of a torch tensor's dtype, shape and bytes."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}{tuple(tensor.shape)}".encode())
    import torch

    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(tensors: dict[str, Any]) -> str:
    """One SHA-256 over named tensors (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensor_digest(tensors[name]).encode())
    return h.hexdigest()


def adapter_problem(run_dir: str | Path, summary: dict | None = None) -> str | None:
    """Why the adapter in `run_dir`/adapter is not the one its completed run recorded (missing,
    truncated, changed), or None when it is, or when the run recorded nothing to check against.
    The directory is read where it is now, not where summary.json says it was written."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY_FILE) if summary is None else summary
    if summary.get("status") != "completed":
        return None
    adapter = run_dir / ADAPTER_DIR
    recorded = summary.get("adapter_files")
    if recorded:
        for name, digest in sorted(recorded.items()):
            path = adapter / name
            if not path.is_file():
                return f"{path} is missing"
            if file_sha256(path) != digest:
                return f"{path} is not the file the run saved (its SHA-256 differs from the one summary.json records)"
        return None
    if summary.get("adapter_sha256"):  # written before file hashes were recorded: the tensors
        weights = adapter / ADAPTER_WEIGHTS
        if not weights.is_file():
            return f"{weights} is missing"
        try:
            from safetensors.torch import load_file

            found = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
            return f"{weights} cannot be read ({str(exc).splitlines()[0]})"
        if state_digest(found) != summary["adapter_sha256"]:
            return f"{weights} does not hold the tensors summary.json records"
    return None


def checkpoint_state_file(ckpt_path: str | Path) -> Path:
    """The training state a `ckpt_path` names: a checkpoint directory (checkpoints/step-N) or its
    training_state.ckpt. Anything else is refused with what it is and what to pass instead."""
    raw = str(ckpt_path)
    path = Path(raw).expanduser()
    if path.name == STATE_FILE and path.exists():  # a file, or DeepSpeed's directory of shards
        return path
    if path.is_dir():
        if (path / STATE_FILE).exists():
            return path / STATE_FILE
        if (path / CHECKPOINTS_DIR).is_dir():
            raise ConfigError(
                f"ckpt_path={raw} is a run directory, not a checkpoint: continue it with resume=auto "
                f"hydra.run.dir={raw}, or pass one of its checkpoints ({raw}/{CHECKPOINTS_DIR}/step-N)"
            )
        if (path / ADAPTER_CONFIG).is_file():
            raise ConfigError(
                f"ckpt_path={raw} is a saved adapter, which holds no training state (optimizer, step, data "
                f"position): pass a checkpoint directory (<run>/{CHECKPOINTS_DIR}/step-N)"
            )
        raise ConfigError(
            f"ckpt_path={raw} is a directory without {STATE_FILE}: pass a checkpoint directory "
            f"(<run>/{CHECKPOINTS_DIR}/step-N) or its {STATE_FILE}"
        )
    if path.is_file():  # a training state under another name
        return path
    raise ConfigError(f"ckpt_path not found: {raw}: pass a checkpoint directory or its {STATE_FILE}")


# ---- sweeps: what a job directory holds ------------------------------------------------------
REPLACED = "replaced"  # earlier jobs moved out of a job directory that now runs another config


def job_state(run_dir: Path) -> tuple[str | None, str | None]:
    """(config hash, status) of what a run directory holds; (None, None) when it holds no run. A
    completed run whose adapter is not the one it recorded is `damaged`."""
    meta, summary = read_json(run_dir / RUN_META), read_json(run_dir / SUMMARY_FILE)
    status = summary.get("status")
    if status == "completed" and adapter_problem(run_dir, summary):
        status = "damaged"
    return meta.get("config_hash"), status


def resolve_same_as(summary: dict, run_dir: str | Path) -> Path | None:
    """The run a skipped job stands for. Its `same_as` path, or, when a later relaunch moved
    that run into replaced/, wherever in the sweep the completed run with its hash now is."""
    target, wanted = summary.get("same_as"), summary.get("config_hash")
    if not target:
        return None
    if job_state(Path(target)) == (wanted, "completed"):
        return Path(target)
    sweep_dir = Path(run_dir).parent
    for meta in sorted({*sweep_dir.glob(f"*/{RUN_META}"), *sweep_dir.glob(f"{REPLACED}/*/{RUN_META}")}):
        if job_state(meta.parent) == (wanted, "completed"):
            return meta.parent
    return None


# overrides a continued run replaces: where it writes and what it resumes from
# (hydra.mode is Hydra's own record of how it ran, not the user's)
_CONTINUE_REPLACES = ("resume=", "ckpt_path=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=")


def quote_override(value: str) -> str:
    """A value as a quoted Hydra override string (paths with spaces, commas or `$` stay whole)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"


def continue_command(run_dir: str | Path) -> str:
    """The command that continues this run from its newest checkpoint: the same overrides with
    resume=auto in the same run directory; for a sweep's job, the sweep again in its directory
    (finished jobs are skipped, this one resumes)."""
    import shlex
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hc = HydraConfig.get()
        argv = [a for a in sys.argv[1:] if not a.lstrip("+~").startswith(_CONTINUE_REPLACES)]
        return shlex.join(["loralab-train", *argv, f"hydra.sweep.dir={hc.sweep.dir}"])
    overrides: list[str] = []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = [*hc.overrides.task, *hc.overrides.hydra]
    kept = [o for o in overrides if not o.lstrip("+~").startswith(_CONTINUE_REPLACES)]
    return shlex.join(["loralab-train", *kept, "resume=auto", f"hydra.run.dir={run_dir}"])
