"""The layout of a run directory and the one place that reads and writes it.

`RunDir` is a run directory: its files' paths, reading them (one error, `RunFileError`, for a
file a reader needs that is missing or damaged), writing the JSON ones atomically, its status,
its config hash, the run a skipped sweep job stands for. `SweepDir` is a sweep directory: its
runs, its jobs and their states, and setting aside a job directory whose config changed.
`runs_below` finds runs at any depth. Besides: which training state a `ckpt_path` names,
whether a saved adapter is the one its run recorded, and the command that continues a run.

Imports no torch (the config checks use it), except to check the tensors of an adapter saved by
a loralab that recorded no file hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError, LoralabError
from loralab.io import write_json, write_text

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
# metrics.csv and the earlier parts set aside on resume (metrics.1.csv, ...)
METRICS_PARTS = "metrics*.csv"
TRAIN_LOG = "train.log"
GIT_DIFF = "git_diff.patch"
HYDRA_DIR = ".hydra"
HYDRA_CONFIG = f"{HYDRA_DIR}/config.yaml"  # Hydra's copy of the config, with interpolations
HYDRA_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
SWEEP_SUMMARY = "sweep_summary.json"
REPLACED = "replaced"  # a sweep's earlier jobs, moved out of job directories that now run other configs
# what the run itself writes: a directory holding any of these holds a run
RUN_MARKERS = (SUMMARY_FILE, RUN_META, CHECKPOINTS_DIR, ADAPTER_DIR)
FINISHED = ("completed", "skipped")


class RunFileError(LoralabError):
    """A file of a run directory that a reader needs and that is missing, or damaged (not valid
    JSON, or not a JSON object)."""


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`; {} when the file is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_checkpoint_meta(checkpoint: str | Path) -> dict:
    """A checkpoint directory's checkpoint.json (raises as json does when it is missing or damaged:
    only complete checkpoints are read)."""
    return json.loads((Path(checkpoint) / CHECKPOINT_META).read_text())


def check_new_run_dir(run_dir: str | Path, resume: Any, ckpt_path: Any) -> None:
    """Refuse to start a fresh run in a directory holding a run that trained something: it would
    overwrite that run's adapter, checkpoints and summary. Continuing it (resume=auto, ckpt_path)
    is what such a directory is for; a run that failed before training left nothing to lose."""
    found = RunDir(run_dir).earlier_run()
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


# ---- a run directory ------------------------------------------------------------------------
def _name_order(name: str) -> tuple:
    """Job directories in the order Hydra numbers them (2 before 10), then other names."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


@dataclass(frozen=True)
class RunDir:
    """A run directory: where its files are, reading and writing them, and its state.

    Reading a JSON file (`read`, `summary`, `meta`): None when the file is missing, or
    `RunFileError` when `needed` says why the reader cannot go on without it; `RunFileError` when it
    is not valid JSON or not a JSON object. `lenient=True` reads {} instead, for the checks of a
    directory's state (a sweep's resume, a damaged adapter), which must not fail on a damaged file."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- its files ---------------------------------------------------------------------------
    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def meta_path(self) -> Path:
        return self.path / RUN_META

    @property
    def config_path(self) -> Path:
        """The resolved config (what loralab-rerun runs again)."""
        return self.path / RESOLVED_CONFIG

    @property
    def hydra_dir(self) -> Path:
        return self.path / HYDRA_DIR

    @property
    def hydra_config_path(self) -> Path:
        return self.path / HYDRA_CONFIG

    @property
    def hydra_overrides_path(self) -> Path:
        return self.path / HYDRA_OVERRIDES

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def train_log_path(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def merge_report_path(self) -> Path:
        return self.path / MERGE_REPORT

    @property
    def freeze_manifest_path(self) -> Path:
        return self.path / FREEZE_MANIFEST

    @property
    def diff_path(self) -> Path:
        return self.path / GIT_DIFF

    # ---- what it is ----------------------------------------------------------------------------
    def is_run(self) -> bool:
        """A run directory, or a sweep's job directory that died before writing anything of its own."""
        return any((self.path / name).exists() for name in (SUMMARY_FILE, RUN_META, HYDRA_DIR))

    def checkpoints(self) -> list[Path]:
        """Its checkpoint directories (checkpoints/step-N), oldest first."""
        return sorted(self.checkpoints_dir.glob("step-*")) if self.checkpoints_dir.is_dir() else []

    def earlier_run(self) -> dict | None:
        """What the directory holds of an earlier run, or None when it holds none (absent, empty, or
        only what Hydra writes before a run starts): its status, when it started, and whether it
        trained anything worth keeping (a checkpoint or an adapter)."""
        if not self.path.is_dir() or not any((self.path / m).exists() for m in RUN_MARKERS):
            return None
        summary, meta = self.summary(lenient=True), self.meta(lenient=True)
        steps = self.checkpoints()
        return {
            "status": summary.get("status") or "unfinished",
            "started_at": meta.get("started_at"),
            "trained": bool(steps) or self.adapter_dir.is_dir(),
            "last_checkpoint": steps[-1].name if steps else None,
        }

    # ---- reading -------------------------------------------------------------------------------
    def read(self, name: str, needed: str | None = None, *, lenient: bool = False) -> dict | None:
        """The JSON object in the file `name` (see the class for missing and damaged files)."""
        path = self.path / name
        if lenient:
            return read_json(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            if needed is None:
                return None
            raise RunFileError(f"{self.path} has no {name}: {needed}") from exc
        except ValueError as exc:
            raise RunFileError(f"{path} is not valid JSON ({exc}): the run directory is damaged") from exc
        if not isinstance(data, dict):
            raise RunFileError(f"{path} does not hold a JSON object: the run directory is damaged")
        return data

    def summary(self, needed: str | None = None, *, lenient: bool = False) -> dict | None:
        """summary.json: the run's status, error and figures."""
        return self.read(SUMMARY_FILE, needed, lenient=lenient)

    def meta(self, needed: str | None = None, *, lenient: bool = False) -> dict | None:
        """run_meta.json: what a person or loralab-rerun needs to understand and repeat the run."""
        return self.read(RUN_META, needed, lenient=lenient)

    def config_file(self, meta: dict | None = None) -> Path:
        """The resolved config the run saved: the file its run_meta.json names (config.yaml)."""
        meta = self.meta(lenient=True) if meta is None else meta
        return self.path / meta.get("config_file", RESOLVED_CONFIG)

    def resolved_config(self, meta: dict | None = None) -> Any:
        """The resolved config the run saved (an OmegaConf config), or None when it saved none."""
        from omegaconf import OmegaConf

        path = self.config_file(meta)
        return OmegaConf.load(path) if path.is_file() else None

    def saved_config(self) -> dict:
        """The run's resolved config (config.yaml), or Hydra's saved one (with interpolations) for
        runs that lack it, as plain data; {} when it has neither."""
        from omegaconf import OmegaConf

        for path in (self.config_path, self.hydra_config_path):
            if path.is_file():
                return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        return {}

    def hydra_overrides(self) -> list[str] | None:
        """The overrides Hydra saved for the run (.hydra/overrides.yaml), None when it saved none."""
        from omegaconf import OmegaConf

        path = self.hydra_overrides_path
        return list(OmegaConf.load(path)) if path.is_file() else None

    def saved_diff(self, name: str | None) -> str | None:
        """The source tree's uncommitted changes the run saved (run_meta.json's git.diff_file)."""
        return (self.path / name).read_text() if name and (self.path / name).is_file() else None

    def metric_curve(self, key: str = "val/loss") -> list[tuple[int, float]]:
        """(step, value) of `key` from metrics.csv (and earlier parts set aside on resume)."""
        points: dict[int, float] = {}
        for path in sorted(self.path.glob(METRICS_PARTS)):
            with path.open() as fh:
                for row in csv.DictReader(fh):
                    if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                        points[int(float(row["step"]))] = float(row[key])
        return sorted(points.items())

    # ---- its state -----------------------------------------------------------------------------
    def status(self) -> str | None:
        """The recorded status, except that a completed run whose adapter is not the one it
        recorded is `damaged`; None when the directory holds no summary."""
        summary = self.summary(lenient=True)
        status = summary.get("status")
        if status == "completed" and self.adapter_problem(summary):
            status = "damaged"
        return status

    def config_hash(self) -> str | None:
        """The hash of what the run computes, as run_meta.json records it."""
        return self.meta(lenient=True).get("config_hash")

    def state(self) -> tuple[str | None, str | None]:
        """(config hash, status); (None, None) when the directory holds no run."""
        return self.config_hash(), self.status()

    def adapter_problem(self, summary: dict | None = None) -> str | None:
        """Why the adapter in adapter/ is not the one its completed run recorded (missing,
        truncated, changed), or None when it is, or when the run recorded nothing to check against.
        The directory is read where it is now, not where summary.json says it was written."""
        summary = self.summary(lenient=True) if summary is None else summary
        if summary.get("status") != "completed":
            return None
        adapter = self.adapter_dir
        recorded = summary.get("adapter_files")
        if recorded:
            for name, digest in sorted(recorded.items()):
                path = adapter / name
                if not path.is_file():
                    return f"{path} is missing"
                if file_sha256(path) != digest:
                    return (
                        f"{path} is not the file the run saved (its SHA-256 differs from the one summary.json records)"
                    )
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

    def resolve_same_as(self, summary: dict | None = None) -> RunDir | None:
        """The run a skipped sweep job (this directory, with this summary) stands for: its
        `same_as` path, or, when a later relaunch moved that run into replaced/, wherever in the
        sweep the completed run with its hash now is."""
        summary = self.summary(lenient=True) if summary is None else summary
        target, wanted = summary.get("same_as"), summary.get("config_hash")
        if not target:
            return None
        if RunDir(target).state() == (wanted, "completed"):
            return RunDir(target)
        return SweepDir(self.path.parent).completed(wanted)

    # ---- writing (atomically: a file is complete or absent) ------------------------------------
    def write_summary(self, summary: dict) -> Path:
        return write_json(self.summary_path, summary)

    def write_meta(self, meta: dict) -> Path:
        return write_json(self.meta_path, meta)

    def write_resolved_config(self, config: Any) -> Path:
        """Save an OmegaConf config as config.yaml."""
        from omegaconf import OmegaConf

        tmp = self.path / f".{RESOLVED_CONFIG}.tmp"
        OmegaConf.save(config, tmp)
        tmp.replace(self.config_path)
        return self.config_path

    def write_diff(self, diff: str) -> str:
        """Save the source tree's uncommitted changes; the file's name (for run_meta.json)."""
        write_text(self.diff_path, diff)
        return GIT_DIFF


def runs_below(path: str | Path) -> list[RunDir]:
    """Run directories at any depth below `path` (not inside a run, not hidden, not replaced), in
    order (a sweep's jobs by number)."""
    found: list[RunDir] = []
    for child in sorted((p for p in Path(path).iterdir() if p.is_dir()), key=lambda p: _name_order(p.name)):
        if child.name.startswith(".") or child.name == REPLACED:
            continue
        run = RunDir(child)
        found += [run] if run.is_run() else runs_below(child)
    return found


def find_runs(path: str | Path) -> list[RunDir]:
    """`path` itself when it is a run directory, else every run below it (a sweep's jobs, or all
    of outputs/)."""
    run = RunDir(path)
    return [run] if run.is_run() else runs_below(path)


# ---- a sweep directory ----------------------------------------------------------------------
@dataclass(frozen=True)
class SweepDir:
    """A sweep directory: one job directory per job (0, 1, ...), earlier jobs set aside under
    replaced/, and sweep_summary.json."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def summary_path(self) -> Path:
        return self.path / SWEEP_SUMMARY

    def runs(self) -> list[RunDir]:
        """Every run the sweep holds (those that wrote run_meta.json), replaced ones included."""
        metas = {*self.path.glob(f"*/{RUN_META}"), *self.path.glob(f"{REPLACED}/*/{RUN_META}")}
        return [RunDir(meta.parent) for meta in sorted(metas)]

    def completed(self, config_hash: str | None, besides: RunDir | None = None) -> RunDir | None:
        """A run of the sweep (other than `besides`) that completed this config, or None."""
        for run in self.runs():
            if run != besides and run.state() == (config_hash, "completed"):
                return run
        return None

    def job_dirs(self) -> list[RunDir]:
        """The job directories Hydra created (with .hydra/), in job order."""
        found = sorted(self.path.glob(f"*/{HYDRA_DIR}"), key=lambda p: _name_order(p.parent.name))
        return [RunDir(p.parent) for p in found]

    def jobs(self) -> list[dict]:
        """One entry per job directory: its status and error from summary.json, or `failed` with
        "no summary.json" when the job died before writing one; a skipped job's `same_as` (`failed`
        when that run is gone); its overrides."""
        jobs = []
        for job in self.job_dirs():
            entry: dict[str, Any] = {"job": job.name, "run_dir": str(job.path)}
            if job.summary_path.is_file():
                data = job.summary(lenient=True)
                entry.update(status=data.get("status", "unknown"), error=data.get("error"))
                if data.get("same_as"):
                    found = job.resolve_same_as(data)
                    entry["same_as"] = str(found.path) if found else None
                    if found is None:
                        entry.update(status="failed", error=f"skipped as a repeat of {data['same_as']}, which is gone")
            else:
                entry.update(status="failed", error="no summary.json: the job stopped before training")
            overrides = job.hydra_overrides()
            if overrides is not None:
                entry["overrides"] = overrides
            jobs.append(entry)
        return jobs

    def set_aside(self, job: RunDir, config_hash: str) -> Path:
        """Move what a job directory holds of its run (all but .hydra/ and train.log) to
        replaced/<job>-<hash>/ (…-2, -3 when that config was moved out before); where it went."""
        keep = self.path / REPLACED / f"{job.name}-{config_hash}"
        n = 1
        while keep.exists():  # the same config moved out before: keep both
            n += 1
            keep = self.path / REPLACED / f"{job.name}-{config_hash}-{n}"
        keep.mkdir(parents=True)
        for item in job.path.iterdir():
            if item.name not in (HYDRA_DIR, TRAIN_LOG):
                shutil.move(str(item), keep / item.name)
        return keep

    def write_summary(self, report: dict) -> Path:
        return write_json(self.summary_path, report)


def resolve_same_as(summary: dict, run_dir: str | Path) -> Path | None:
    """The run a skipped job stands for (see RunDir.resolve_same_as)."""
    found = RunDir(run_dir).resolve_same_as(summary)
    return found.path if found else None


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
