"""What the benchmarks share: the composed config, the machine's description, medians, and
child processes that report one JSON line (each measurement runs in a process of its own, so that
imports, allocator pools and peak memory do not carry over from one to the next)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# the repository: benchmarks/ sits beside src/, outside the installed package
REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]) -> Any:
    """The training config as `loralab-train <overrides>` composes it, with a scratch run directory
    (no Hydra run here, but the key must resolve)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from loralab.config.paths import CONF_DIR
    from loralab.validation import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = tempfile.mkdtemp(prefix="loralab-bench-")
    return cfg


def prepared(overrides: list[str]) -> tuple[Any, Any, Any, Any, Any]:
    """(config, its typed form, model source, tokenizer, data module set up for fit) as loralab
    prepares them for `loralab-train <overrides>`, the global seed set."""
    import torch
    from hydra.utils import instantiate

    from loralab.data.datamodule import LoraDataModule
    from loralab.validation import validate

    cfg = compose(overrides)
    typed = validate(cfg)
    torch.manual_seed(cfg.seed)
    source = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    datamodule = LoraDataModule(typed.data, tokenizer, cache_dir=cfg.paths.cache_dir, task=source.task_for(typed.data))
    datamodule.setup("fit")
    return cfg, typed, source, tokenizer, datamodule


def machine() -> dict:
    """CPU model, cores, the instruction sets that decide matrix-product speed, memory, versions."""
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        name = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = name or platform.processor()
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
        info["isa"] = [f for f in wanted if f in flags]
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        info["cpu"] = platform.processor()
    from importlib.metadata import version

    for pkg in ("torch", "lightning", "transformers", "peft"):
        info[pkg] = version(pkg)
    return info


def median(values: list[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def run_child(args: list[str], timeout: float = 1800, env: dict | None = None) -> dict:
    """Run `python <args>` and return the JSON object on its last output line; raise with the
    child's error output when it fails."""
    # from the repository root, with it on the path: `benchmarks` is not part of the installed package
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args[:4])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def emit(result: dict) -> None:
    """A child's result: one JSON line on stdout."""
    print(json.dumps(result), flush=True)
