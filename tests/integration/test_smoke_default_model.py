"""The real default model (SmolLM2-135M-Instruct from the packaged GGUF) for two steps, through the
command line as users run it: default loggers (W&B offline, CSV) and callbacks, output to a file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

# what loralab itself prints: its log records, the final table (a title and box-drawing lines) and
# the whole paths below it
OWN_LINE = re.compile(
    r"^(\[[\d\- :,]+\]\[loralab[\w.]*\]\[(INFO|WARNING)\] .*"
    r"|\s*loralab run: completed\s*"
    r"|[┏┃┡└│].*"
    r"|(adapter dir|merged dir|run dir): /\S+)$"
)


@pytest.mark.slow
def test_default_model_two_steps(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    for key in ("HYDRA_FULL_ERROR", "LORALAB_VERBOSE", "LORALAB_PRECISION"):  # the default: precision=auto
        env.pop(key, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loralab",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "data.num_train=16",
            "data.num_val=8",
            "data.num_test=8",
            "data.generation_examples=4",
            "data.eval_batch_size=8",
            "callbacks.merge_check.probe_examples=2",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["merge_passed"] and summary["reload_max_abs_err"] < 1e-2
    # precision=auto: bf16 autocast where this CPU computes bf16 natively, else fp32, and why
    from loralab.distributed import cpu_has_bf16

    assert summary["precision"]["asked"] == "auto" and summary["precision"]["why"]
    assert summary["precision"]["used"] == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    # all-linear r=8 on 30 layers of q, o (576x576), k, v (192x576), gate, up (1536x576), down (576x1536)
    per_layer = 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert summary["trainable_params"] == 30 * per_layer == 2_442_240
    config = json.loads((run_dir / "merged" / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and "quantization_config" not in config
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"

    # the console shows loralab's own lines only: no library's warning, advert, start-up line or bar
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if not OWN_LINE.match(line)]
    assert not foreign, foreign[:10]
    printed = proc.stdout + proc.stderr
    for path in (run_dir / "adapter", run_dir / "merged", run_dir):
        assert f": {path}\n" in printed + "\n"  # whole, not cut at 80 columns
    # train.log keeps the per-validation lines and the summary with the same whole paths
    log = (run_dir / "train.log").read_text()
    assert re.search(r"step 2/2: train/loss [\d.]+, val/loss [\d.]+, val/exact_match", log), log[-2000:]
    assert "loralab run: completed" in log and f"adapter dir: {run_dir / 'adapter'}" in log
