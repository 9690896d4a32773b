"""Crash safety through real processes on the tiny model: SIGKILL at several moments, SIGTERM and
Ctrl-C, a full disk, nan in training, damaged and half-written checkpoints; `resume=auto` in the
same run directory then finishes with the adapter an uninterrupted run trains, bit for bit."""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.callbacks.adapter_checkpoint import (
    META_FILE,
    STATE_FILE,
    find_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from loralab.errors import CheckpointError, NonFiniteError
from tests.conftest import TINY

# checkpoints at steps 3, 6, 9, 12
RUN = [*TINY, "variant.r=4", "trainer.max_steps=12", "trainer.val_check_interval=3"]


def start(run_dir: Path, cache: Path, *extra: str, ignore_sigxfsz: bool = False) -> subprocess.Popen:
    """`python -m loralab RUN hydra.run.dir=run_dir extra`, as users start it."""
    env = {**os.environ, "WANDB_MODE": "offline", "LORALAB_CACHE": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)

    def before_exec() -> None:
        if ignore_sigxfsz:  # a write past the file-size limit then fails with EFBIG, as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-m", "loralab", *RUN, f"hydra.run.dir={run_dir}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=before_exec,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll `condition` (every millisecond) until it holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to interrupt it:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the moment to interrupt the run")
        time.sleep(0.001)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def leftovers(run_dir: Path) -> list[str]:
    ckpts = run_dir / "checkpoints"
    found = [*ckpts.glob(".tmp-*"), *ckpts.glob(".del-*"), *run_dir.glob(".tmp-adapter*"), *run_dir.glob(".old-*")]
    return sorted(p.name for p in found)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> dict[str, torch.Tensor]:
    """The adapter of the same run, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(run_dir, cache))
    assert code == 0, err[-3000:]
    return adapter(run_dir)


# SIGKILL at several moments: a minute of launches; make test keeps SIGTERM, SIGINT and the full disk
@pytest.mark.matrix
def test_sigkill_at_several_moments_then_resume_auto_trains_the_same_adapter(reference, cache, tmp_path):
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"

    # 1. in the middle of training, a little after the first checkpoint
    proc = start(run_dir, cache)
    wait_for(lambda: (ckpts / "step-0000003" / META_FILE).is_file(), proc)
    time.sleep(0.05)
    kill(proc)
    first = [c["step"] for c in list_checkpoints(ckpts)]
    assert first and first[0] == 3

    # 2. while a checkpoint is being written (its temporary directory holds a file)
    earlier = {(d.name, d.stat().st_ino) for d in ckpts.glob(".tmp-step-*")}  # left by kill 1, if it hit a write

    def writing() -> bool:
        for d in ckpts.glob(".tmp-step-*"):
            try:
                if (d.name, d.stat().st_ino) not in earlier and any(d.iterdir()):
                    return True
            except FileNotFoundError:  # renamed into place meanwhile
                continue
        return False

    proc = start(run_dir, cache, "resume=auto")
    wait_for(writing, proc)
    kill(proc)
    half = sorted(ckpts.glob(".tmp-step-*"))
    assert half, "the kill was meant to land inside a checkpoint write"
    # the half-written one is never listed; every listed one reads back as recorded
    assert all(not Path(c["path"]).name.startswith(".") for c in list_checkpoints(ckpts))
    for c in list_checkpoints(ckpts):
        verify_checkpoint(c["path"])
    assert find_checkpoint(None, "auto", ckpts) == str(Path(list_checkpoints(ckpts)[-1]["path"]) / STATE_FILE)

    # 3. while the final adapter is being written, after the last checkpoint
    proc = start(run_dir, cache, "resume=auto")
    wait_for(lambda: any(run_dir.glob(".tmp-adapter*")), proc)
    kill(proc)

    # 4. to the end
    code, err = finish(start(run_dir, cache, "resume=auto"))
    assert code == 0, err[-3000:]
    assert_same(adapter(run_dir), reference)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 12
    assert leftovers(run_dir) == []  # what the killed processes left half-written is gone


@pytest.mark.parametrize(
    "sig",
    # Ctrl-C takes the same path as SIGTERM (StopOnSignal handles both): its case runs in make test-matrix
    [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="Ctrl-C", marks=pytest.mark.matrix)],
)
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(reference, cache, tmp_path, sig):
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    proc = start(run_dir, cache)
    wait_for(lambda: (ckpts / "step-0000003" / META_FILE).is_file(), proc)
    time.sleep(0.05)
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(sig).name
    found = re.fullmatch(rf"loralab: stopped by {name} after step (\d+); checkpoint: (\S+); continue with: (.*)", last)
    assert found, last
    # the command to continue is this run's own: its overrides, resume=auto, its directory
    command = shlex.split(found[3])
    assert command == ["loralab-train", *RUN, "resume=auto", f"hydra.run.dir={run_dir}"], found[3]
    step = int(found[1])
    assert found[2] == str(ckpts / f"step-{step:07d}") and 3 <= step < 12
    verify_checkpoint(found[2])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] == step
    assert not (run_dir / "adapter").exists()  # no final adapter from a stopped run
    # and the printed command continues it where it stopped
    env = {**os.environ, "WANDB_MODE": "offline", "LORALAB_CACHE": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    again = subprocess.run([sys.executable, "-m", "loralab", *command[1:]], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same(adapter(run_dir), reference)
    # the curve holds the validations that ran (every 3 steps), not the stop's step stamped on
    # the figures of the validation before it
    steps = [v["step"] for v in json.loads((run_dir / "summary.json").read_text())["validations"]]
    assert steps == [0, 3, 6, 9, 12], steps


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(cache, tmp_path):
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    proc = start(run_dir, cache, ignore_sigxfsz=True)
    wait_for(lambda: (ckpts / "step-0000003" / META_FILE).is_file(), proc)
    # from now on no file of the process may grow past half a training state: the next one fails
    limit = (ckpts / "step-0000003" / STATE_FILE).stat().st_size // 2
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    kept = {f.name: f.read_bytes() for f in (ckpts / "step-0000003").iterdir()}
    code, err = finish(proc)
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"loralab: error: saving checkpoint step 6 in {ckpts} failed: File too large; free space there, then "
        f"continue with resume=auto; the last checkpoint, {ckpts / 'step-0000003'}, is kept"
    )
    assert {f.name: f.read_bytes() for f in (ckpts / "step-0000003").iterdir()} == kept
    verify_checkpoint(ckpts / "step-0000003")
    assert leftovers(run_dir) == [] and [c["step"] for c in list_checkpoints(ckpts)] == [3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "File too large" in summary["error"]


# ---- in this process --------------------------------------------------------------------------
DIVERGE = ["variant.r=4", "trainer.max_steps=8", "trainer.val_check_interval=1", "optimizer.lr=1e30"]


def test_nan_stops_the_run_naming_the_step_and_keeps_the_checkpoints(make_cfg):
    from loralab.train import run

    cfg = make_cfg(*DIVERGE, "trainer.gradient_clip_val=null")
    with pytest.raises(NonFiniteError) as caught:
        run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["global_step"]
    assert summary["status"] == "failed" and f"at step {step}: training stopped" in summary["error"]
    assert str(caught.value) in summary["error"]
    saved = list_checkpoints(run_dir / "checkpoints")
    assert saved and f"the last checkpoint, {saved[-1]['path']}, is kept" in str(caught.value)
    for c in saved:  # every checkpoint on disk is intact and finite
        verify_checkpoint(c["path"])
        tensors = load_file(Path(c["path"]) / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (run_dir / "adapter").exists()


def test_without_the_guard_a_non_finite_adapter_is_never_checkpointed(make_cfg):
    from loralab.train import run

    cfg = make_cfg(*DIVERGE, "trainer.gradient_clip_val=null", "callbacks.nonfinite_guard=null")
    with pytest.raises(NonFiniteError, match=r"the adapter holds nan or inf at step \d+ .*checkpoint not saved"):
        run(cfg)
    for c in list_checkpoints(Path(cfg.paths.run_dir) / "checkpoints"):
        tensors = load_file(Path(c["path"]) / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values())


def test_resume_auto_skips_a_damaged_checkpoint_and_refuses_pickled_code(make_cfg, tmp_path, caplog):
    from loralab.train import train

    cfg = make_cfg("variant.r=4", "trainer.max_steps=4", "trainer.val_check_interval=2")
    train(cfg)
    ckpts = Path(cfg.paths.run_dir) / "checkpoints"
    newest, older = (Path(c["path"]) for c in reversed(list_checkpoints(ckpts)))
    # one flipped bit in the newest checkpoint's adapter
    data = bytearray((newest / "adapter_model.safetensors").read_bytes())
    data[-3] ^= 0x01
    (newest / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not hold the tensors its checkpoint.json records"):
        verify_checkpoint(newest)
    assert find_checkpoint(None, "auto", ckpts) == str(older / STATE_FILE)
    assert f"skipping {newest}" in caplog.text
    with pytest.raises(CheckpointError, match="it is damaged"):
        find_checkpoint(str(newest), None, ckpts)  # named explicitly: refused, not skipped

    # a training state that would run code when unpickled is read as data only: refused
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"state_dict": {}, "x": _RunsCode(str(marker))}, evil / STATE_FILE)
    with pytest.raises(CheckpointError, match="cannot be read as a training state"):
        find_checkpoint(str(evil), None, ckpts)
    assert not marker.exists()


class _RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
