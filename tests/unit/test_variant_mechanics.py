"""The variants' own mechanics on the tiny model: LoRA-drop's importance, selection and sharing
on hand-set weights; VeRA's trainable vectors and refusals; LoRA+ groups; bad combinations."""

from __future__ import annotations

import pytest
import torch

from loralab.errors import ConfigError
from loralab.validation import validate
from loralab.variants import get_variant
from loralab.variants.lora import lora_layers
from loralab.variants.lora_drop import (
    expected_trainable,
    module_importance,
    rank_units,
    sample_indices,
    select_units,
    share_pairs,
)
from tests.conftest import build_tiny_adapter

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
UP1 = "base_model.model.model.layers.1.mlp.up_proj"


def _batch() -> dict:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 500, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding positions must not count
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hand_set(model) -> dict[str, torch.Tensor]:
    """B = 0 everywhere except q_proj of layer 0 and up_proj of layer 1, set by hand; returns ΔW."""
    deltas = {}
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if name in (Q0, UP1):
                a.copy_(torch.randn(a.shape, generator=gen))
                b.copy_(torch.randn(b.shape, generator=gen) * (3.0 if name == Q0 else 1.0))
                deltas[name] = layer.scaling["default"] * b @ a
            else:
                b.zero_()
    return deltas


def test_lora_drop_importance_selection_and_sharing():
    info, _ = build_tiny_adapter(r=4, dropout=0.0)
    model = info.model
    deltas = _hand_set(model)
    batch = _batch()
    # the inputs each adapted module sees, captured at the frozen base layer
    inputs = {}
    hooks = [
        lora_layers(model)[n].get_base_layer().register_forward_hook(lambda m, a, o, n=n: inputs.__setitem__(n, a[0]))
        for n in deltas
    ]
    g = module_importance(model, [batch])
    for h in hooks:
        h.remove()
    mask = batch["attention_mask"].bool()
    for name, delta in deltas.items():
        expected = (inputs[name] @ delta.T)[mask].pow(2).sum().item()  # Σ over real tokens of ‖ΔW·x‖²
        assert g[name] == pytest.approx(expected, rel=1e-5)
    assert all(v == 0.0 for n, v in g.items() if n not in deltas)

    table = rank_units(g, "module")
    total = g[Q0] + g[UP1]
    importance = {row["unit"]: row["importance"] for row in table}
    assert importance[Q0] == pytest.approx(g[Q0] / total) and importance[UP1] == pytest.approx(g[UP1] / total)
    top, other = sorted((Q0, UP1), key=lambda n: -g[n])
    assert select_units(table, importance[top]) == [top]  # T reached by the top unit alone
    assert select_units(table, min(1.0, importance[top] + 1e-3)) == [top, other]

    per_layer = {row["unit"]: row["g"] for row in rank_units(g, "layer")}
    assert per_layer == {"layer.0": pytest.approx(g[Q0]), "layer.1": pytest.approx(g[UP1])}

    kept = [top]
    sets = share_pairs(model, kept)
    layers = lora_layers(model)
    for s in sets:
        ptrs_a = {layers[n].lora_A["default"].weight.data_ptr() for n in s["modules"]}
        ptrs_b = {layers[n].lora_B["default"].weight.data_ptr() for n in s["modules"]}
        assert len(ptrs_a) == len(ptrs_b) == 1  # one storage per shared set
        assert all(tuple(layers[n].get_base_layer().weight.shape) == tuple(s["shape"]) for n in s["modules"])
    assert layers[top].lora_A["default"].weight.data_ptr() not in {
        layers[s["modules"][0]].lora_A["default"].weight.data_ptr() for s in sets
    }
    # q/o (64x64), k/v (32x64), gate/up (128x64), down (64x128): one set per shape among the rest
    assert sorted(tuple(s["shape"]) for s in sets) == [(32, 64), (64, 64), (64, 128), (128, 64)]
    # parameters() lists a shared Parameter once: the count is the formula's
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    top_layer = layers[top].get_base_layer()
    own = 4 * (top_layer.in_features + top_layer.out_features)
    assert counted == expected_trainable(model, kept, sets, 4) == own + 4 * (96 + 128 + 192 + 192)


def test_lora_drop_selection_threshold():
    table = [{"unit": u, "importance": i} for u, i in [("a", 0.05), ("b", 0.5), ("c", 0.15), ("d", 0.3)]]
    assert select_units(table, 0.9) == ["b", "d", "c"]  # 0.5 + 0.3 = 0.8 < 0.9 <= 0.95
    assert select_units(table, 0.5) == ["b"]
    assert select_units(table, 1.0) == ["b", "d", "c", "a"]


def test_lora_drop_sample_is_stratified_and_seeded():
    labels = [0] * 80 + [1] * 20
    picked = sample_indices(100, 0.1, seed=5, labels=labels)
    assert sum(labels[i] == 0 for i in picked) == 8 and sum(labels[i] == 1 for i in picked) == 2
    assert picked == sample_indices(100, 0.1, seed=5, labels=labels) != sample_indices(100, 0.1, 6, labels)
    assert len(sample_indices(100, 0.25, seed=1)) == 25


def _vera(model, **cfg):
    from loralab.variants.vera import VeraVariantConfig

    return get_variant("vera").build(model, VeraVariantConfig(**cfg), "causal_lm")


def _tiny_base():
    info, _ = build_tiny_adapter(r=2)
    return info.model.unload()


def test_vera_trains_b_and_d_only_with_d_initial():
    info = _vera(_tiny_base(), r=16, d_initial=0.25)
    named = dict(info.model.named_parameters())
    trainable = [n for n in named if info.is_trainable(n)]
    assert trainable and all(".vera_lambda_b." in n or ".vera_lambda_d." in n for n in trainable)
    for n in trainable:
        value = named[n]
        assert torch.all(value == (0.25 if ".vera_lambda_d." in n else 0.0)), n
    # one shared pair sliced per layer, even with k/v (32x64) beside q (64x64)
    assert info.facts["vera_A_shape"] == [16, 128] and info.facts["vera_B_shape"] == [128, 16]


def test_vera_refuses_non_linear_targets_and_a_second_adapter_of_another_r():
    with pytest.raises(ConfigError, match=r"VeRA adapts linear layers only.*embed_tokens \(Embedding\)"):
        _vera(_tiny_base(), r=16, target_modules=["q_proj", "embed_tokens"])
    first = _vera(_tiny_base(), r=16)
    with pytest.raises(ConfigError, match=r"already has VeRA adapter 'default' with r=16.*variant.r=16"):
        _vera(first.model, r=8)


def test_loraplus_groups_learning_rates():
    from functools import partial

    from loralab.variants.loraplus import LoraPlusConfig

    model = _tiny_base()
    info = get_variant("loraplus").build(model, LoraPlusConfig(r=4, lr_ratio=16.0), "causal_lm")
    for name, p in info.model.named_parameters():
        p.requires_grad_(info.is_trainable(name))
    optimizer = info.make_optimizer(partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["lora_A"]["lr"] == pytest.approx(1e-3) and groups["lora_B"]["lr"] == pytest.approx(16e-3)
    owner = {id(p): n for n, p in info.model.named_parameters()}
    assert all(".lora_A." in owner[id(p)] for p in groups["lora_A"]["params"])
    assert all(".lora_B." in owner[id(p)] for p in groups["lora_B"]["params"])
    assert len(groups["lora_A"]["params"]) == len(groups["lora_B"]["params"]) == 14


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["variant=dora", "optimizer=lorafa"], "optimizer=lorafa .* does not fit variant=dora"),
        (["variant=loraplus", "optimizer=lorafa"], "does not fit variant=loraplus"),
        (["variant=delta_lora", "variant.dropout=0.1"], "Delta-LoRA needs the LoRA branch without dropout"),
        (["variant=delta_lora", "variant.update_start=-1"], "update_start must be >= 0"),
        (["variant=vera", "variant.save_projection=false"], "keep variant.save_projection=true"),
        (["variant=lora_drop", "variant.threshold=0"], r"threshold must be in \(0, 1\]"),
        (["variant=lora_drop", "variant.granularity=block"], "granularity must be one of"),
        (["variant=pissa", "variant.init_lora_weights=gaussian"], "PiSSA sets its own initialisation"),
        (["variant=loraplus", "variant.lr_ratio=0"], "lr_ratio must be > 0"),
    ],
)
def test_bad_combinations_are_refused_before_loading(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


@pytest.mark.parametrize(
    "variant", ["lora", "lora_fa", "vera", "lora_drop", "dora", "rslora", "pissa", "loraplus", "delta_lora"]
)
def test_every_variant_yaml_validates(make_cfg, variant):
    typed = validate(make_cfg(f"variant={variant}"))
    assert typed.variant.name == variant and type(typed.variant) is get_variant(variant).schema


def test_rslora_scaling_reaches_peft(make_cfg):
    typed = validate(make_cfg("variant=rslora", "variant.r=16", "variant.alpha=8"))
    assert typed.variant.scaling == pytest.approx(8 / 4)
    info = get_variant("rslora").build(_tiny_base(), typed.variant, "causal_lm")
    layer = lora_layers(info.model)[Q0]
    assert layer.scaling["default"] == pytest.approx(2.0)


def test_lora_drop_stage2_starts_from_the_untouched_base(tmp_path, tiny_tokenizer):
    """Stage 1 trains the classification head (peft's modules_to_save) and biases too; stage 2
    must start from the loaded ones, not from what stage 1 made of them."""
    from loralab.data.datamodule import LoraDataModule
    from loralab.data.schema import DataConfig
    from loralab.models import FromConfig
    from loralab.variants.lora_drop import LoraDropConfig
    from loralab.variants.registry import BuildContext

    dm = LoraDataModule(
        DataConfig(name="topics", builtin_task="topics", format="classification", num_train=64, num_val=8),
        tiny_tokenizer,
        cache_dir=tmp_path / "cache",
    )
    dm.setup("fit")
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    model = FromConfig({**config, "num_attention_heads": 4, "num_key_value_heads": 2}, seed=0).load_model(
        "seq_cls", dm.labels
    )
    head = model.score.weight.detach().clone()
    cfg = LoraDropConfig(r=4, stage1_steps=3, stage1_lr=0.05, sample_fraction=0.5)
    info = get_variant("lora_drop").build(model, cfg, "seq_cls", BuildContext(datamodule=dm, seed=1))
    assert info.facts["stage1_loss_first"] != info.facts["stage1_loss_last"]  # stage 1 trained
    wrapped = info.model.base_model.model.score
    assert torch.equal(wrapped.original_module.weight, head)
    assert torch.equal(wrapped.modules_to_save["default"].weight, head)


def test_lorafa_optimizer_projects_b_gradient():
    """peft's LoRA-FA step on B follows (1/s²)·∇B·(A·Aᵀ)⁻¹, not ∇B: on Adam's first step the update
    is -lr·sign(g), so the signs tell the two apart."""
    from functools import partial

    from loralab.variants.lora_fa import LoraFAConfig
    from loralab.variants.lora_fa import lorafa_optimizer as lorafa

    batch = _batch()
    updates = {}
    for name, factory in {"lorafa": partial(lorafa, lr=1e-3), "adamw": partial(torch.optim.AdamW, lr=1e-3)}.items():
        torch.manual_seed(0)
        info = get_variant("lora_fa").build(_tiny_base(), LoraFAConfig(r=4, dropout=0.0), "causal_lm")
        for n, p in info.model.named_parameters():
            p.requires_grad_(info.is_trainable(n))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in lora_layers(info.model).values():
                a = layer.lora_A["default"].weight
                # rows of A nearly parallel: A·Aᵀ far from a multiple of I, so the projection shows
                a.copy_(torch.randn(1, a.shape[1], generator=gen) + 0.3 * torch.randn(a.shape, generator=gen))
                layer.lora_B["default"].weight.normal_(0, 0.02, generator=gen)
        optimizer = info.make_optimizer(factory)
        layer = lora_layers(info.model)[Q0]
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        before = b.detach().clone()
        info.model(**batch, labels=batch["input_ids"]).loss.backward()
        grad, s = b.grad.detach().clone(), layer.scaling["default"]
        optimizer.step()
        updates[name] = (b.detach() - before, grad, a.detach(), s)
    delta, grad, a, s = updates["lorafa"]
    projected = grad @ torch.linalg.pinv(a @ a.T) / s**2
    agree = (torch.sign(delta) == -torch.sign(projected)).float().mean().item()
    plain = (torch.sign(delta) == -torch.sign(grad)).float().mean().item()
    assert agree > 0.99 and plain < 0.8, (agree, plain)
    adam_delta, adam_grad, *_ = updates["adamw"]
    assert (torch.sign(adam_delta) == -torch.sign(adam_grad)).float().mean().item() > 0.95
