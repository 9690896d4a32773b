"""Bad config values fail at compose/validate time with a one-line message naming the fix."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from loralab.config import validate
from loralab.errors import ConfigError


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("variant.r=0", "variant.r must be an integer >= 1"),
        ("variant.alpha=0", "variant.alpha must be > 0"),
        ("variant.alpha=-2", "variant.alpha must be > 0"),
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
