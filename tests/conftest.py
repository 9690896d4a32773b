"""Shared fixtures: compose the real configs with overrides, on the tiny model, in a temp run dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from loralab.config.paths import CONF_DIR
from loralab.validation import register_schemas

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the tests compute in fp32 on every machine kind (the presets' precision=auto would choose bf16 on a
# CPU with native bf16 only); tests of precision=auto ask for it (precision=auto)
os.environ.setdefault("LORALAB_PRECISION", "32-true")
register_schemas()

TINY = ["model=tiny", "debug=fast", "logger=csv", "~callbacks.progress"]
# the tiny Llama (2 layers, width 64) as a transformers config, for tests that build it directly
TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def compose_config(overrides: list[str], run_dir: Path, cache_dir: Path | None = None) -> DictConfig:
    """The composed train config with `overrides`, writing into `run_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Build a tiny-model config: make_cfg("variant.r=4", run="a")."""

    def make(*overrides: str, run: str = "run", base: list[str] | None = None) -> DictConfig:
        return compose_config([*(TINY if base is None else base), *overrides], tmp_path / run, tmp_path / "cache")

    return make


@pytest.fixture
def tiny_tokenizer():
    """The tokenizer shipped for model=tiny."""
    from loralab.models import FromConfig

    return FromConfig({"model_type": "llama"}).load_tokenizer()


def build_tiny_adapter(task: str = "causal_lm", labels: list[str] | None = None, **variant):
    """A peft LoRA adapter on the tiny model (2 layers, width 64), built the way train() does."""
    import torch

    from loralab.models import FromConfig
    from loralab.variants import get_variant
    from loralab.variants.schema import LoraVariantConfig

    torch.manual_seed(0)
    source = FromConfig(dict(TINY_CONFIG), name="tiny")
    cfg = LoraVariantConfig(**variant)
    return get_variant("lora").build(source.load_model(task, labels), cfg, task), source.load_tokenizer()


@pytest.fixture
def tiny_adapter():
    """Factory fixture for build_tiny_adapter."""
    return build_tiny_adapter


def train_process(base: Path, name: str, *overrides: str) -> Path:
    """`python -m loralab` on the tiny model into base/name, as users run it."""
    import subprocess
    import sys

    run_dir = base / name
    env = {**os.environ, "LORALAB_CACHE": str(base / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "loralab", *TINY, f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=base,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


TINY_RUNS = {
    "a": ("seed=1",),
    "b": ("seed=2", "variant.r=4"),
    "topics": ("data=topics",),  # classification: accuracy, not exact match
}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Finished tiny runs for the rerun, compare and bad-input tests (treat them as read-only: copy
    one before changing it). Trained once per test session: under pytest-xdist (make test) the
    workers share them through the session's temp root, the first to need them training them under
    a file lock while the others wait."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's root, above each worker's own folder
    base, done = root / "tiny-runs", root / "tiny-runs.done"
    with FileLock(str(root / "tiny-runs.lock")):
        if not done.exists():
            if base.exists():  # a worker that failed half-way: train them all again
                import shutil

                shutil.rmtree(base)
            base.mkdir()
            for name, overrides in TINY_RUNS.items():
                train_process(base, name, *overrides)
            done.touch()
    return {name: base / name for name in TINY_RUNS}


# The longest test files first (seconds on a 2-core EPYC, --durations=0, two workers), so that make
# test's pytest-xdist workers, which take a file at a time in this order (--dist loadfile
# --no-loadscope-reorder), finish together; the other files keep their order after these. Only the
# schedule depends on this list: a stale one makes make test slower, never wrong.
LONG_FILES = (
    "test_distributed.py",  # 122
    "test_bad_inputs.py",  # 199, 69 of them the shared tiny runs
    "test_sweep.py",  # 132
    "test_smoke_default_model.py",  # 114
    "test_architectures.py",  # 116
    "test_compile.py",  # 98
    "test_crash_safety.py",  # 98
    "test_before_cache.py",  # 116, 69 of them the shared tiny runs
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: in-file order kept


def tiny_llama(vocab_size: int = 300):
    """The tiny Llama (2 layers, width 64) as a transformers model, seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = {k: v for k, v in TINY_CONFIG.items() if k != "model_type"}
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **config))


def tiny_gpt2(vocab_size: int = 300):
    """A GPT-2 of the same size (another family: fused qkv, learned positions, tied head)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=64))


def loss_and_grads(model, batch: dict, labelled: bool):
    """The causal LM training loss of `batch` and the trainable parameters' gradients."""
    from loralab.tasks.causal_lm import CausalLM

    model.zero_grad()
    loss = CausalLM().loss(model, batch, labelled=labelled)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
