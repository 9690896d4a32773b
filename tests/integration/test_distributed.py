"""trainer=ddp_cpu: the tiny model trained in two processes (gloo) through the real CLI.

The two-process run must train what one process trains with twice the per-device batch on the
same data and seed; rank 0 alone writes the run's files and its one W&B run; checkpoints hold
the whole adapter, read back and hash-checked; a resumed run continues bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.callbacks.adapter_checkpoint import STATE_FILE, state_digest
from tests.wandb_records import run_facts

# W&B on (offline) to count its runs
COMMON = ["model=tiny", "debug=fast", "~callbacks.progress", "trainer.max_steps=4"]
DDP = ["trainer=ddp_cpu", "trainer.devices=2", "data.train_batch_size=4"]


def launch(tmp_path: Path, run_dir: Path, *overrides: str, common: list[str] = COMMON) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    for key in ("HYDRA_FULL_ERROR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "loralab", *common, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 8, and two processes with batch 4 each, LoRA dropout off (each
    process draws its own masks); and two processes with dropout, for the resume test."""
    tmp = tmp_path_factory.mktemp("ddp")
    launch(tmp, tmp / "single", "trainer=cpu", "data.train_batch_size=8", "variant.dropout=0")
    launch(tmp, tmp / "ddp", *DDP, "variant.dropout=0")
    launch(tmp, tmp / "ddp_dropout", *DDP, "variant.dropout=0.1")
    return tmp


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_two_processes_train_what_one_process_trains_with_twice_the_batch(runs):
    single, ddp = (
        load_file(runs / "single/adapter/adapter_model.safetensors"),
        load_file(runs / "ddp/adapter/adapter_model.safetensors"),
    )
    assert single.keys() == ddp.keys() and len(single) == 28
    start = load_file(runs / "ddp/checkpoints/step-0000002/adapter_model.safetensors")
    for name in single:
        # the adapter moved (B starts at zero), and by the same amount in both runs
        assert not torch.equal(single[name], start[name]) or "lora_A" in name
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
    s, d = summary(runs / "single"), summary(runs / "ddp")
    assert s["global_step"] == d["global_step"] == 4
    # every validation example counted once: the same loss as one process
    for key in ("val/loss", "val/exact_match"):
        assert d["after"][key] == pytest.approx(s["after"][key], rel=1e-4), key
        # the held-out test split (debug=fast: 8 examples), each rank its share, the sums reduced
        test_key = key.replace("val/", "test/")
        assert d["test"][test_key] == pytest.approx(s["test"][test_key], rel=1e-4), test_key
        assert d["before"][key] == pytest.approx(s["before"][key], rel=1e-5), key
    assert d["final_train_loss"] == pytest.approx(s["final_train_loss"], rel=1e-4)
    # throughput counts every process's tokens
    assert d["train_tokens"] == s["train_tokens"] > 0
    # the merge check ran once, on rank 0's full model
    assert d["merge_passed"] and json.loads((runs / "ddp/merge_report.json").read_text())["passed"]


def test_rank_zero_alone_writes_the_run_files(runs):
    def files(run_dir: Path) -> set[str]:
        return {
            str(p.relative_to(run_dir))
            for p in run_dir.rglob("*")
            if p.is_file() and "wandb" not in p.parts and ".hydra" not in p.parts
        }

    ddp, single = files(runs / "ddp"), files(runs / "single")
    # the same files as one process, plus the worker's own log
    assert ddp - single == {"ranks/rank1.log"}, ddp ^ single
    assert single - ddp == set()
    # one W&B run, rank 0's (run_facts asserts there is exactly one) with the final figures
    facts = run_facts(runs / "ddp")
    assert facts["summary"]["final/trainable_params"] == summary(runs / "ddp")["trainable_params"]
    assert facts["config"]["trainer.strategy._target_"] == "lightning.pytorch.strategies.DDPStrategy"
    # the freeze manifest is the one a single process writes
    manifest = json.loads((runs / "ddp/freeze_manifest.json").read_text())
    assert manifest == json.loads((runs / "single/freeze_manifest.json").read_text())
    # the worker trained the config rank 0 saved, and said so in its log
    log = (runs / "ddp/ranks/rank1.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "Traceback" not in log


def test_checkpoints_hold_the_whole_adapter_checked_by_hash(runs):
    for step in ("step-0000002", "step-0000004"):
        ckpt = runs / "ddp/checkpoints" / step
        meta = json.loads((ckpt / "checkpoint.json").read_text())
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)["state_dict"]
        adapter = load_file(ckpt / "adapter_model.safetensors")
        assert meta["world_size"] == 2 and len(state) == len(adapter) == 28
        assert meta["trainable_sha256"] == state_digest(state)
        assert meta["adapter_sha256"] == state_digest(adapter)
    assert summary(runs / "ddp")["adapter_sha256"] == state_digest(
        load_file(runs / "ddp/adapter/adapter_model.safetensors")
    )


@pytest.mark.matrix  # resume is checked on one process in make test: make test-matrix
def test_resume_under_ddp_continues_bit_for_bit(runs):
    """Cut the two-process run (with dropout) back to its step-2 checkpoint, resume it with two
    processes: the adapter and the metrics at step 4 are those of the uninterrupted run (the
    optimizer state, the schedule, the data position and each rank's own RNG were restored)."""
    resumed = runs / "resumed"
    shutil.copytree(runs / "ddp_dropout", resumed)
    for name in ("checkpoints/step-0000004", "adapter", "merged", "summary.json", "merge_report.json"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    launch(runs, resumed, *DDP, "variant.dropout=0.1", "resume=auto")
    done = load_file(runs / "ddp_dropout/adapter/adapter_model.safetensors")
    again = load_file(resumed / "adapter/adapter_model.safetensors")
    assert done.keys() == again.keys()
    for name in done:
        assert torch.equal(done[name], again[name]), name
    assert summary(resumed)["after"] == summary(runs / "ddp_dropout")["after"]
    assert summary(resumed)["global_step"] == 4


@pytest.mark.matrix  # a second DDP check: make test-matrix
def test_resume_with_another_number_of_processes_is_refused(runs):
    """The data position is counted in per-process batches: one line, the finished files stay."""
    again = runs / "one_process"
    shutil.copytree(runs / "ddp", again)
    env = {**os.environ, "LORALAB_CACHE": str(runs / "cache"), "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "loralab", *COMMON, "logger=csv", "variant.dropout=0", "trainer=cpu"]
    command += ["data.train_batch_size=4", f"ckpt_path={again / 'checkpoints/step-0000002'}", f"hydra.run.dir={again}"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: error: the checkpoint was saved by 2 process(es) and this run has 1"), last
    assert (again / "adapter/adapter_model.safetensors").is_file()
    assert (again / "checkpoints/step-0000004/checkpoint.json").is_file()


@pytest.mark.matrix  # two more process launches: `make test-matrix` (and .ci/run) runs it
def test_seq2seq_two_processes_train_what_one_process_trains(tmp_path):
    """An encoder-decoder's loss under DDP is the token-loss sum over the global batch's answer
    tokens (computed from the logits: the model takes no num_items_in_batch), as one process."""
    # T5 has dropout of its own (dropout_rate 0.1), and each process draws its own masks: off here
    common = [
        "model=tiny_t5",
        "+model.config.dropout_rate=0.0",
        "debug=fast",
        "~callbacks.progress",
        "trainer.max_steps=4",
    ]
    common += ["logger=csv"]
    launch(tmp_path, tmp_path / "single", "data.train_batch_size=8", "variant.dropout=0", common=common)
    launch(tmp_path, tmp_path / "ddp", *DDP, "variant.dropout=0", common=common)
    single = load_file(tmp_path / "single/adapter/adapter_model.safetensors")
    ddp = load_file(tmp_path / "ddp/adapter/adapter_model.safetensors")
    assert single.keys() == ddp.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
    s, d = summary(tmp_path / "single"), summary(tmp_path / "ddp")
    assert d["final_train_loss"] == pytest.approx(s["final_train_loss"], rel=1e-4)
    assert d["after"]["val/loss"] == pytest.approx(s["after"]["val/loss"], rel=1e-4)
