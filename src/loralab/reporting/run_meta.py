"""run_meta.json: what a person or `loralab-rerun` needs to understand and repeat a run."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from loralab.rundir import RESOLVED_CONFIG, RunDir
from loralab.secrets import redact

PACKAGES = (
    "loralab",
    "torch",
    "lightning",
    "transformers",
    "peft",
    "datasets",
    "hydra-core",
    "omegaconf",
    "wandb",
    "tokenizers",
    "safetensors",
    "numpy",
    "gguf",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def _git_state_once(repo: Path) -> tuple:
    return tuple(_read_git_state(repo).items())


def git_state(repo: Path) -> dict:
    """Commit and dirty flag of the source tree (and the diff when dirty), as first read by this
    process: the code a process runs is what it imported, so the later jobs of a sweep (one
    process under the basic launcher) record the same state as its first, even when the tree
    changes while the sweep runs."""
    return dict(_git_state_once(Path(repo)))


def _read_git_state(repo: Path) -> dict:

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None}
    status = run("status", "--porcelain", "--untracked-files=no") or ""
    return {
        "commit": commit.strip(),
        "dirty": bool(status.strip()),
        "diff": run("diff", "HEAD") if status.strip() else None,
    }


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config as flat `a.b.c` keys, for logger config panels."""
    out: dict = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(redact(OmegaConf.to_container(cfg, resolve=True)), "")
    return out


# the layout of a run directory that loralab-rerun and loralab-compare read; raised when it changes
FORMAT_VERSION = 1
# keys that say where a run writes or how it is watched, not what it computes
# (precision_choice: the record of precision=auto, whose outcome trainer.precision holds)
# (cache_before: whether the figures before training are read or measured again: the same figures)
UNHASHED = (
    "paths",
    "logger",
    "resume",
    "ckpt_path",
    "tags",
    "experiment_name",
    "objective",
    "precision_choice",
    "cache_before",
)
# keys added after runs were recorded, at the value that computes what those runs computed: left out
# of the hash there, so that a relaunched sweep still finds its finished jobs and compare still
# groups them (data.task: null chooses the task those runs had; no test split evaluates nothing)
NEUTRAL = {
    ("data", "task"): None,
    ("data", "metrics"): ["exact_match"],
    ("data", "answer_regex"): None,
    ("data", "num_test"): (0, None),
    ("data", "test_file"): None,
    ("data", "test_split"): None,
    ("data", "packing"): False,
    ("data", "pack_length"): None,
    ("callbacks", "test_split"): {"_target_": "loralab.callbacks.TestEvaluation", "checkpoint": "best"},
    # memory is measured, nothing computed changes
    ("callbacks", "memory"): {"_target_": "loralab.callbacks.MemoryProfile"},
    # forgetting is measured in eval mode and draws no random number: training is the same
    ("callbacks", "forgetting"): {
        "_target_": "loralab.callbacks.Forgetting",
        "probe": "general_text",
        "block_tokens": 256,
        "batch_size": 8,
    },
    # how a step computes, at the values that compute what runs before these switches computed
    # (full logits, one dropout mask per adapter); a group left empty goes too
    ("compute", "labelled_head"): False,
    ("compute", "shared_dropout"): False,
    ("compute", "fast_dropout"): False,
    ("compute", "shared_prefix"): False,
    ("compute", "shared_prefix_train"): False,
    ("compute", "prompt_once"): False,
    ("compute", "compile"): False,
}


def _placeholders(data: dict) -> list[tuple[str, str]]:
    paths = data.get("paths") or {}
    pairs = [
        (str(paths[k]), f"${{paths.{k}}}") for k in ("run_dir", "output_dir", "cache_dir", "root_dir") if paths.get(k)
    ]
    return sorted(pairs, key=lambda p: -len(p[0]))  # the longest (most specific) prefix first


def relocate(node: object, pairs: list[tuple[str, str]]) -> object:
    """Every string that starts with one of the `pairs`' old prefixes, rewritten to the new one."""
    if isinstance(node, dict):
        return {k: relocate(v, pairs) for k, v in node.items()}
    if isinstance(node, list):
        return [relocate(v, pairs) for v in node]
    if isinstance(node, str):
        for old, new in pairs:
            if node == old or node.startswith(old.rstrip("/") + "/"):
                return new + node[len(old.rstrip("/")) :]
    return node


def config_hash(cfg: DictConfig | dict) -> str:
    """A hash of what a run computes: the resolved config without where it writes (paths, with
    every path under them written relative to them), loggers, resume settings, tags or name.
    Two runs with the same hash train the same thing; a sweep skips jobs whose hash finished."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = relocate(data, _placeholders(data))
    for key in UNHASHED:
        data.pop(key, None)
    for (group, key), value in NEUTRAL.items():
        node = data.get(group)
        neutral = value if isinstance(value, tuple) else (value,)
        if isinstance(node, dict) and key in node and node[key] in neutral:
            del node[key]
            if not node:
                del data[group]
    text = OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# set by loralab-rerun: the run this one repeats, and its overrides
RERUN: dict | None = None


def hydra_overrides() -> list[str]:
    """The command-line overrides of this run, when run as a Hydra app (a rerun: the original's
    overrides followed by the rerun's own)."""
    if RERUN is not None:
        return [*(RERUN.get("original_overrides") or []), *RERUN.get("overrides", [])]
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def write_run_meta(run_dir: str | Path, cfg: DictConfig, model: dict, data: dict) -> dict:
    """Write run_meta.json (and git_diff.patch when the tree is dirty)."""
    run = RunDir(run_dir)
    source_root = Path(__file__).resolve().parents[3]
    git = git_state(source_root)
    diff = git.pop("diff")
    if diff:
        git["diff_file"] = run.write_diff(diff)
    import torch

    meta = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        # relative paths on the command line were relative to this directory
        "cwd": os.getcwd(),
        "overrides": hydra_overrides(),
        "config_hash": config_hash(cfg),
        "config_file": RESOLVED_CONFIG,
        "rerun_of": (RERUN or {}).get("rerun_of"),
        "format_version": FORMAT_VERSION,
        "seed": cfg.seed,
        "data_seed": cfg.data.get("seed"),
        # the precision the run computes in, and, for precision=auto, why
        "precision": dict(cfg.get("precision_choice") or {"used": str(cfg.trainer.get("precision"))}),
        "git": git,
        "packages": package_versions(),
        "model": model,
        "data": data,
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            # YES: transformers swapped layers for kernels from the Hub (loralab's default is NO)
            "use_hub_kernels": os.environ.get("USE_HUB_KERNELS"),
        },
    }
    run.write_meta(redact(meta))
    # the resolved config: what `loralab-rerun` runs again (.hydra/config.yaml keeps interpolations)
    run.write_resolved_config(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))))
    return meta
