"""Bad input through the real CLI: non-zero exit, one clear line, no traceback, nothing loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE = ["model=tiny", "debug=fast", "logger=csv", "~callbacks.progress"]


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
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


def test_data_without_required_columns(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 4)
    proc = run_cli(tmp_path, "data=local", f"data.train_file={path}")
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
