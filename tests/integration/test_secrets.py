"""No credential ever lands in what a run writes: a W&B key and a hub token in the environment, a
run with W&B (offline) and CSV logging, and every file of the run directory searched."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from loralab.secrets import REDACTED, check_command_line, redact
from tests.conftest import TINY


def test_no_secret_in_any_file_a_run_writes(tmp_path):
    found = {
        "WANDB_API_KEY": secrets.token_hex(20),  # a W&B key: 40 hex digits
        "HF_TOKEN": "hf_" + secrets.token_urlsafe(30).replace("-", "a").replace("_", "b"),
        "MY_DB_PASSWORD": secrets.token_urlsafe(16),
    }
    run_dir = tmp_path / "run"
    env = {**os.environ, **found, "WANDB_MODE": "offline", "LORALAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "loralab", *TINY, "logger=default", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in written) and (run_dir / "run_meta.json").is_file()
    for path in written:
        data = path.read_bytes()
        for name, value in found.items():
            assert value.encode() not in data, f"${name} was written into {path}"
    for name, value in found.items():
        assert value not in proc.stdout + proc.stderr, f"${name} was printed"


def test_redact_replaces_secret_values_and_keys(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    config = {
        "model": {"name_or_path": "org/model", "token": "abc123456", "revision": "main"},
        "note": "pulled with hf_" + "x" * 34,
        "list": ["hf_" + "x" * 34, 3],
        "data": {"pad_token": "<pad>", "max_new_tokens": 8},
    }
    assert redact(config) == {
        "model": {"name_or_path": "org/model", "token": REDACTED, "revision": "main"},
        "note": f"pulled with {REDACTED}",
        "list": [REDACTED, 3],
        "data": {"pad_token": "<pad>", "max_new_tokens": 8},  # not credentials
    }


def test_command_line_secrets_are_refused(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    assert "$WANDB_API_KEY" in check_command_line(["variant.r=4", "tags=[0123456789abcdef0123456789abcdef01234567]"])
    assert "model.token=..." in check_command_line(["+model.token=whatever1"])
    assert "(data.hub_id=...)" in check_command_line(["data.hub_id=hf_" + "A1" * 17])  # a token's shape
    # a git commit is 40 hex digits too: only the environment's own key is refused
    assert check_command_line(["model.revision=" + "ab" * 20, "variant.r=4", "data.max_new_tokens=8"]) is None
