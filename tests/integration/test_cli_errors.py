"""Bad input through the real CLI: non-zero exit, one clear line, no traceback, nothing loaded.

The catalogue runs the console script's `main()` in this process (a fresh interpreter spends
~15 s on this machine importing torch, Lightning and peft before the first check); a few tests
run it as a subprocess, as users do."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BASE = ["model=tiny", "debug=fast", "logger=csv", "~callbacks.progress"]


def run_cli(tmp_path: Path, *overrides: str, monkeypatch: pytest.MonkeyPatch | None = None) -> SimpleNamespace:
    """`loralab-train BASE hydra.run.dir=... overrides` in this process: its exit code, and its
    stderr with every log record (so a logged traceback shows as a subprocess's would)."""
    from hydra.core.global_hydra import GlobalHydra

    from loralab.train import main

    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))
    patch.setenv("WANDB_MODE", "offline")
    patch.delenv("HYDRA_FULL_ERROR", raising=False)
    patch.setattr(sys, "argv", ["loralab-train", *BASE, f"hydra.run.dir={tmp_path / 'run'}", *overrides])
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # what an interpreter would print before exiting 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        logging.getLogger().removeHandler(handler)
        GlobalHydra.instance().clear()
        if monkeypatch is None:
            patch.undo()
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


def run_cli_process(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The same as a separate process, as users run it."""
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loralab.train",
            *BASE,
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CASES = {
    "rank below one": (["variant.r=0"], "variant.r must be an integer >= 1", True),
    "alpha not positive": (["variant.alpha=0"], "variant.alpha must be > 0", True),
    "dropout out of range": (["variant.dropout=1.5"], "variant.dropout must be in [0, 1)", True),
    "unknown variant": (["variant=lorra"], "Could not find 'variant/lorra'", True),
    "unknown key": (["variant.rank=4"], "Could not override 'variant.rank'", True),
    "target matches nothing": (
        ["variant.target_modules=[q_proj,nope_proj]"],
        "'nope_proj' matches no module",
        True,
    ),
    "modules_to_save matches nothing": (
        ["variant.modules_to_save=[headx]"],
        "modules_to_save entry 'headx'",
        True,
    ),
    "VeRA on a non-linear target": (
        ["variant=vera", "variant.target_modules=[q_proj,embed_tokens]"],
        "VeRA adapts linear layers only, but 'embed_tokens' selects model.embed_tokens (Embedding)",
        True,
    ),
    "LoRA-FA optimizer with DoRA": (["variant=dora", "optimizer=lorafa"], "does not fit variant=dora", True),
    "Delta-LoRA with dropout": (["variant=delta_lora", "variant.dropout=0.1"], "set variant.dropout=0", True),
    "missing model path": (
        ["model=hub", "model.name_or_path=/no/such/model"],
        "model path not found",
        True,
    ),
    "missing data file": (
        ["data=local", "data.train_file=/no/such.jsonl"],
        "data.train_file not found",
        True,
    ),
    "every example too long": (["data.max_length=4"], "longer than data.max_length=4", True),
    "required value missing": (["model=hub"], "model.name_or_path is required and not set", True),
    "hub data without id": (["data=hub"], "pass data.hub_id=", True),
    "invalid target regex": (["variant.target_modules='.*(q_proj'"], "is not a valid regex", True),
    "wrong value type": (["variant.r=abc"], "could not be converted to Integer", True),
    "quantization bits": (["model/quantization=nf4", "model.quantization.bits=3"], "bits must be 4 or 8", True),
    "unknown quantization preset": (["model/quantization=int4"], "Could not find 'model/quantization/int4'", True),
    "fp16 on CPU": (["precision=16-mixed"], "trainer.precision=16-mixed needs a GPU", True),
    "precision as a number": (["precision=32"], "for precision: 32-true, bf16-mixed, 16-mixed", True),
    "no CPU processes": (
        ["trainer=ddp_cpu", "trainer.devices=0"],
        "trainer.devices must be a number of processes",
        True,
    ),
    "several nodes without a cluster": (["trainer.num_nodes=2"], "trainer.num_nodes=2 needs a multi-node launch", True),
    "FSDP on CPU": (
        ["trainer=fsdp", "trainer.accelerator=cpu", "precision=32-true"],
        "FSDPStrategy runs on CUDA GPUs only: on CPU use trainer=ddp_cpu",
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(tmp_path, name):
    overrides, fragment, before_model = CASES[name]
    proc = run_cli(tmp_path, *overrides)
    assert proc.returncode != 0
    assert fragment in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error:") and fragment in last  # the whole message is one line
    if before_model:
        assert not (tmp_path / "run" / "run_meta.json").exists()  # stopped before data and model


@pytest.mark.parametrize("name", ["unknown variant", "rank below one", "fp16 on CPU"])
def test_bad_input_as_a_process(tmp_path, name):
    """The console script as users run it: composition errors (Hydra's) and loralab's checks."""
    overrides, fragment, _ = CASES[name]
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_quantized_base_without_cuda(tmp_path):
    proc = run_cli_process(tmp_path, "model/quantization=nf4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error: model.quantization needs a CUDA GPU"), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "run_meta.json").exists()  # stopped before data and model


def test_data_without_required_columns(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 4)
    proc = run_cli_process(tmp_path, "data=local", f"data.train_file={path}")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error: train data has columns ['question', 'answer']")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "columns" in summary["error"]


def test_empty_data_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    proc = run_cli(tmp_path, "data=local", f"data.train_file={path}")
    assert proc.returncode == 2 and "loralab: error:" in proc.stderr
    assert "empty" in proc.stderr or "cannot read" in proc.stderr


def test_full_error_shows_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "loralab.train", *BASE, f"hydra.run.dir={tmp_path}", "variant.r=0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
