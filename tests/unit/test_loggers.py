"""W&B mode selection: online only with credentials, never a prompt."""

from __future__ import annotations

from loralab.loggers import wandb_credentials_present, wandb_logger


def test_credentials_from_env_and_netrc(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_credentials_present()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_credentials_present()
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_present()


def test_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_logger(save_dir=str(tmp_path), project="p")._offline
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_logger(save_dir=str(tmp_path), project="p")._offline
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(save_dir=str(tmp_path), project="p")._offline
