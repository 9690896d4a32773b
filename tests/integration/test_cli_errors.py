"""Bad input through the real CLI: non-zero exit, one clear line, no traceback, nothing loaded.

The catalogue runs the console script's `main()` in this process (a fresh interpreter spends
~15 s on this machine importing torch, Lightning and peft before the first check); a few tests
run it as a subprocess, as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BASE = ["model=tiny", "debug=fast", "logger=csv", "~callbacks.progress"]


def run_cli(tmp_path: Path, *overrides: str, monkeypatch: pytest.MonkeyPatch | None = None) -> SimpleNamespace:
    """`loralab-train BASE hydra.run.dir=... overrides` in this process: its exit code, and its
    stderr with every log record (so a logged traceback shows as a subprocess's would)."""
    from loralab.cli import main
    from tests.integration.bad_inputs import run_captured

    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))
    patch.setenv("WANDB_MODE", "offline")
    patch.delenv("HYDRA_FULL_ERROR", raising=False)
    patch.setattr(sys, "argv", ["loralab-train", *BASE, f"hydra.run.dir={tmp_path / 'run'}", *overrides])
    try:
        code, stderr = run_captured(main)
    finally:
        if monkeypatch is None:
            patch.undo()
    return SimpleNamespace(returncode=code, stderr=stderr)


def run_cli_process(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The same as a separate process, as users run it."""
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loralab",
            *BASE,
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# the whole catalogue runs in test_bad_inputs.py, in this process; these few as users run them
AS_A_PROCESS = {
    "unknown variant": (["variant=lorra"], "Could not find 'variant/lorra'"),
    "rank below one": (["variant.r=0"], "variant.r must be an integer >= 1"),
    "fp16 on CPU": (["precision=16-mixed"], "trainer.precision=16-mixed needs a GPU"),
}


@pytest.mark.parametrize("name", sorted(AS_A_PROCESS))
def test_bad_input_as_a_process(tmp_path, name):
    """The console script as users run it: composition errors (Hydra's) and loralab's checks."""
    if name == "fp16 on CPU" and torch.cuda.is_available():
        pytest.skip("fp16 is refused on machines without CUDA")
    overrides, fragment = AS_A_PROCESS[name]
    proc = run_cli_process(tmp_path, *overrides)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error:") and fragment in last, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "run_meta.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("preset", ["gpu", "ddp", "deepspeed_zero3"])
def test_gpu_trainer_without_cuda(tmp_path, preset):
    proc = run_cli(tmp_path, f"trainer={preset}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error: trainer.accelerator=gpu needs a CUDA GPU"), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "run_meta.json").exists()


def test_full_error_shows_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "loralab", *BASE, f"hydra.run.dir={tmp_path}", "variant.r=0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
