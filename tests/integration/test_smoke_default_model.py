"""The real default model (SmolLM2-135M-Instruct from the packaged GGUF) for two steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loralab.train import train
from tests.conftest import compose_config


@pytest.mark.slow
def test_default_model_two_steps(tmp_path):
    cfg = compose_config(
        [
            "logger=csv",
            "~callbacks.progress",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "data.num_train=16",
            "data.num_val=8",
            "data.generation_examples=4",
            "data.eval_batch_size=8",
            "callbacks.merge_check.probe_examples=2",
        ],
        tmp_path / "run",
    )
    summary, objects = train(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["merge_passed"] and summary["reload_max_abs_err"] < 1e-2
    # all-linear r=8 on 30 layers of q, o (576x576), k, v (192x576), gate, up (1536x576), down (576x1536)
    per_layer = 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert summary["trainable_params"] == 30 * per_layer == 2_442_240
    config = json.loads((Path(cfg.paths.run_dir) / "merged" / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and "quantization_config" not in config
    tokenizer = objects["module"].tokenizer
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
