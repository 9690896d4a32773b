"""Bad config values fail at compose/validate time with a one-line message naming the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from loralab.errors import ConfigError
from loralab.validation import validate


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("variant.r=0", "variant.r must be an integer >= 1"),
        ("variant.alpha=0", "variant.alpha must be a finite number > 0"),
        ("variant.alpha=-2", "variant.alpha must be a finite number > 0"),
        ("variant.alpha=inf", "variant.alpha must be a finite number, got inf"),
        ("variant.alpha=nan", "variant.alpha must be a finite number, got nan"),
        ("variant.dropout=nan", "variant.dropout must be a finite number"),
        ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
        ("seed=4294967296", "seed must be an integer in [0, 4294967295]"),
        ("data.seed=-3", "data.seed must be an integer in [0, 4294967295]"),
        ("experiment_name=../x", "experiment_name='../x' must be a plain directory name"),
        ("experiment_name=.hidden", "experiment_name='.hidden' must be a plain directory name"),
        ("tags=solo", "tags must be a list, got 'solo'"),
        ("optimizer.lr=0", "optimizer.lr must be a finite number > 0"),
        ("optimizer.lr=inf", "optimizer.lr must be a finite number > 0"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be a finite number >= 0"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas must be two numbers in [0, 1)"),
        ("scheduler.warmup_ratio=1.0", "scheduler.warmup_ratio must be in [0, 1)"),
        ("trainer.max_steps=0", "trainer.max_steps must be an integer >= 1, got 0"),
        ("trainer.max_steps=-1", "trainer.max_steps=-1 trains until trainer.max_epochs, which is not set"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be an integer >= 1"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval must be a number of steps >= 1"),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval must be a number of steps >= 1"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be a finite number >= 0"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be an integer >= 1"),
        ("trainer.precision=bf17", "trainer.precision=bf17 is not a precision Lightning knows"),
        ("variant.dropout=1.0", "variant.dropout must be in [0, 1)"),
        ("variant.dropout=-0.1", "variant.dropout must be in [0, 1)"),
        ("variant.bias=some", "variant.bias must be one of"),
        ("variant.target_modules=[]", "variant.target_modules must be"),
        ("data.max_length=0", "data.max_length must be >= 1"),
        ("data.builtin_task=nope", "unknown built-in task 'nope'"),
        ("data.format=essay", "data.format must be one of"),
        ("resume=sometimes", "resume must be auto or null"),
    ],
)
def test_bad_values(make_cfg, override, fragment):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(override))
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_data_file(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="data.train_file not found"):
        validate(make_cfg("data=local", f"data.train_file={tmp_path / 'absent.jsonl'}"))


def test_unknown_key_and_option_fail_at_compose(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg("variant.rank=4")
    with pytest.raises(ConfigCompositionException):
        make_cfg("variant=lorra")


def test_type_is_checked_by_schema(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg("variant.r=abc")


def test_good_config_normalises_targets(make_cfg):
    typed = validate(make_cfg("variant.target_modules=[q_proj,v_proj]", "variant.modules_to_save=lm_head"))
    assert typed.variant.target_modules == ["q_proj", "v_proj"]
    assert typed.variant.modules_to_save == ["lm_head"]
    assert typed.variant.scaling == pytest.approx(16 / 8)


# what a bad config must be refused without: importing these takes seconds
HEAVY_MODULES = ("torch", "lightning", "peft", "transformers", "datasets", "safetensors")
REFUSE_IN_FRESH_PROCESS = f"""
import sys
from hydra import compose, initialize_config_dir
from loralab.cli import main
from loralab.config.paths import CONF_DIR
from loralab.errors import ConfigError
from loralab.validation import register_schemas, validate

register_schemas()
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = compose("train", overrides=["variant.r=0", "paths.run_dir=" + sys.argv[1]])
try:
    validate(cfg)
except ConfigError as exc:
    print("refused:", exc)
sys.argv = ["loralab-train", "variant.r=0", "hydra.run.dir=" + sys.argv[1]]
try:
    main()
except SystemExit as exc:
    print("exit:", exc.code)
print("imported:", sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))
"""


def test_bad_config_is_refused_before_torch_loads(tmp_path):
    # a fresh interpreter: this test process has torch loaded already
    proc = subprocess.run(
        [sys.executable, "-c", REFUSE_IN_FRESH_PROCESS, str(tmp_path / "run")],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the library's validate() and the command line alike
    assert "refused: variant.r must be an integer >= 1" in proc.stdout
    assert "exit: 2" in proc.stdout and "loralab: error: variant.r must be an integer >= 1" in proc.stderr
    assert "imported: []" in proc.stdout
