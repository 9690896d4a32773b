"""LoRA on the tiny model: target matching, parameter counts, bad targets."""

from __future__ import annotations

import pytest
from torch import nn

from loralab.errors import FreezeError
from loralab.variants.targets import layer_of, match_targets


def _expected(info, r):
    base = info.model.get_base_model()
    total = 0
    for names in info.target_matches.values():
        for name in names:
            layer = base.get_submodule(name).get_base_layer()
            total += r * (layer.in_features + layer.out_features)
    return total


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], r".*\.mlp\.(up|down)_proj"])
def test_trainable_count_is_the_formula(tiny_adapter, targets):
    info, _ = tiny_adapter(r=4, target_modules=targets)
    trainable = sum(p.numel() for p in info.model.parameters() if p.requires_grad)
    assert trainable == _expected(info, 4) > 0
    names = [n for n, p in info.model.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n in names)


def test_all_linear_skips_output_head(tiny_adapter):
    info, _ = tiny_adapter(target_modules="all-linear")
    matched = info.target_matches["all-linear"]
    assert len(matched) == 14 and not any("lm_head" in n for n in matched)
    # q: 64x64, k and v: 32x64 under grouped-query attention: different shapes in one adapter
    shapes = {tuple(info.model.get_base_model().get_submodule(n).get_base_layer().weight.shape) for n in matched}
    assert (32, 64) in shapes and (64, 64) in shapes


def test_explicit_targets_match_by_suffix(tiny_adapter):
    info, _ = tiny_adapter(target_modules=["q_proj"])
    assert info.target_matches["q_proj"] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    assert [layer_of(n) for n in info.target_matches["q_proj"]] == ["0", "1"]


@pytest.mark.parametrize(
    "variant, fragment",
    [
        ({"target_modules": ["q_proj", "qq_proj"]}, "'qq_proj' matches no module"),
        ({"target_modules": "nothing.*"}, "matches no module"),
        ({"modules_to_save": ["score_head"]}, "modules_to_save entry 'score_head'"),
    ],
)
def test_unmatched_patterns_fail(tiny_adapter, variant, fragment):
    with pytest.raises(FreezeError, match=fragment):
        tiny_adapter(**variant)


def test_classification_head_is_trained(tiny_adapter):
    info, _ = tiny_adapter(task="seq_cls", labels=["a", "b", "c"], target_modules=["q_proj"])
    trainable = [n for n, p in info.model.named_parameters() if p.requires_grad]
    assert any(".modules_to_save." in n and "score" in n for n in trainable)
    assert all(info.is_trainable(n) for n in trainable)


def test_match_targets_regex_is_full_match():
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(2, 2))
    model.add_module("q_proj_extra", nn.Linear(2, 2))
    assert match_targets(model, "q_proj") == {"q_proj": ["q_proj"]}
