"""GPU paths: the default experiment on one GPU in bf16, and the multi-GPU strategies on the tiny
model. Marked `gpu`: `make test` (-m "not gpu") leaves them out; run them on a CUDA machine with
`.venv/bin/python -m pytest -m gpu tests/integration/test_gpu_strategies.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.callbacks.adapter_checkpoint import state_digest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
TINY = ["model=tiny", "debug=fast", "~callbacks.progress", "variant.dropout=0", "logger=csv"]


def launch(tmp_path: Path, run_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "loralab", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_default_experiment_on_one_gpu_bf16(tmp_path):
    summary = launch(
        tmp_path, tmp_path / "gpu", "trainer=gpu", "precision=auto", "~callbacks.progress", "trainer.max_steps=20"
    )
    assert summary["status"] == "completed" and summary["merge_passed"]
    # precision=auto on a GPU: bf16 autocast where the device computes bf16 natively
    assert summary["precision"]["used"] == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    # compute.shared_prefix_train=auto: whole rows on a GPU
    assert summary["compute"]["shared_prefix_train"]["used"] is False
    assert summary["after"]["val/loss"] < summary["before"]["val/loss"]
    assert summary["peak_gpu_mb"] > 0 and summary["tokens_per_s"] > 0
    print(f"\n{torch.cuda.get_device_name(0)}: {summary['tokens_per_s']:.0f} tokens/s, {summary['peak_gpu_mb']:.0f} MB")


@pytest.mark.skipif(GPUS < 2, reason="needs two GPUs")
@pytest.mark.parametrize("preset", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_multi_gpu_strategy_matches_one_gpu(tmp_path, preset):
    """Two GPUs with batch 4 each train what one GPU trains with batch 8; the checkpoint holds
    the whole adapter (gathered from the shards), hash-checked."""
    if preset.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    common = [*TINY, "precision=32-true"]
    one = launch(tmp_path, tmp_path / "one", *common, "trainer=gpu", "data.train_batch_size=8")
    two = launch(
        tmp_path, tmp_path / "two", *common, f"trainer={preset}", "trainer.devices=2", "data.train_batch_size=4"
    )
    a = load_file(tmp_path / "one/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "two/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5, msg=name)
    assert two["after"]["val/loss"] == pytest.approx(one["after"]["val/loss"], rel=1e-3)
    assert two["adapter_sha256"] == state_digest(b)
    assert sorted(p.name for p in (tmp_path / "two").glob("summary*.json")) == ["summary.json"]
