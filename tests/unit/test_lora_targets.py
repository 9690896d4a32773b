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


def _skeleton(family: str, task: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from tests.families import FAMILIES

    values = dict(FAMILIES[family][0])
    config = AutoConfig.for_model(values.pop("model_type"), vocab_size=512, pad_token_id=0, **values)
    cls = AutoModelForSequenceClassification if task == "seq_cls" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config)


@pytest.mark.parametrize(
    "family, heads",
    [
        ("roberta", ["classifier"]),  # a module holding dense and out_proj
        ("distilbert", ["pre_classifier", "classifier"]),
        ("deberta_v2", ["pooler", "classifier"]),
        ("xlnet", ["sequence_summary", "logits_proj"]),  # named neither classifier nor score
        ("llama", ["score"]),
    ],
)
def test_all_linear_leaves_the_classification_head_to_train_in_full(family, heads):
    """all-linear on a classifier: every module outside the base model trains in full, and no
    layer inside it is a target (peft puts no adapter inside modules_to_save)."""
    from types import SimpleNamespace

    from loralab.variants.targets import resolve_targets

    found = resolve_targets(
        _skeleton(family, "seq_cls"), SimpleNamespace(target_modules="all-linear", modules_to_save=None), "seq_cls"
    )
    assert found.heads == heads
    assert {h: found.saves[h] for h in heads} == {h: [h] for h in heads}
    assert found.targets["all-linear"] and not any(n.split(".")[0] in heads for n in found.targets["all-linear"])


def test_resolution_agrees_with_what_peft_builds():
    """The modules loralab resolves before loading are the ones peft wraps (RoBERTa classifier)."""
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from loralab.variants.lora import lora_config
    from loralab.variants.schema import LoraVariantConfig
    from loralab.variants.targets import resolve_targets
    from tests.families import FAMILIES

    values = dict(FAMILIES["distilbert"][0])
    model = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(values.pop("model_type"), vocab_size=512, **values)
    )
    cfg = LoraVariantConfig()
    found = resolve_targets(model, cfg, "seq_cls")
    peft_model = get_peft_model(model, lora_config(cfg, "seq_cls", found))
    modules = dict(peft_model.get_base_model().named_modules())
    wrapped = {n for n, m in modules.items() if isinstance(m, ModulesToSaveWrapper)}
    adapted = {n for n, m in modules.items() if isinstance(m, BaseTunerLayer) and not n.startswith(tuple(wrapped))}
    assert adapted == set(found.targets["all-linear"])
    assert wrapped == {"pre_classifier", "classifier"}


def test_a_target_inside_the_head_only_is_refused():
    from types import SimpleNamespace

    from loralab.variants.targets import check_targets

    with pytest.raises(
        FreezeError, match=r"'out_proj' selects only modules that train in full .*\(classifier\.out_proj\)"
    ):
        check_targets(
            _skeleton("roberta", "seq_cls"),
            SimpleNamespace(target_modules=["out_proj"], modules_to_save=None),
            "seq_cls",
        )


@pytest.mark.parametrize("family, task", [("gpt2", "causal_lm"), ("phi3", "causal_lm"), ("gpt_neox", "causal_lm")])
def test_all_linear_on_conv1d_and_fused_projections(family, task):
    """GPT-2's Conv1D layers and Phi-3's / GPT-NeoX's fused projections are targets; the output head is not."""
    from types import SimpleNamespace

    from loralab.variants.targets import resolve_targets

    model = _skeleton(family, task)
    cfg = SimpleNamespace(target_modules="all-linear", modules_to_save=None)
    found = resolve_targets(model, cfg, task).targets["all-linear"]
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    assert head not in found
    leaf = {n.rsplit(".", 1)[-1] for n in found}
    expected = {"gpt2": {"c_attn", "c_proj", "c_fc"}, "phi3": {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"}}
    assert expected.get(family, {"query_key_value"}) <= leaf
