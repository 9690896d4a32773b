"""Each callback on its own: freezing and its manifest, the merge check (with non-zero B),
checkpoint lookup."""

from __future__ import annotations

import pytest
import torch

from loralab.callbacks import (
    MergeCheck,
    build_manifest,
    compare_logits,
    find_checkpoint,
    verify_frozen,
)
from loralab.errors import ConfigError, FreezeError
from loralab.module import LoraModule


def _batch(tokenizer, n=4):
    ids = [tokenizer(f"The date is May {i}, 2001")["input_ids"] for i in range(1, n + 1)]
    width = max(map(len, ids))
    input_ids = torch.full((n, width), tokenizer.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _module(info, tokenizer):
    return LoraModule(info, tokenizer, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


def test_trainable_base_weight_is_caught(tiny_adapter):
    info, _ = tiny_adapter()
    verify_frozen(info)
    info.model.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    with pytest.raises(FreezeError, match="embed_tokens"):
        verify_frozen(info)


def test_base_weight_in_optimizer_is_caught(tiny_adapter):
    info, _ = tiny_adapter()
    base_weight = info.model.get_base_model().model.norm.weight
    optimizer = torch.optim.SGD([base_weight], lr=0.1)
    with pytest.raises(FreezeError, match="norm.weight"):
        verify_frozen(info, [optimizer])


def test_manifest_per_layer(tiny_adapter):
    info, _ = tiny_adapter(r=2, target_modules=["q_proj", "down_proj"])
    manifest = build_manifest(info)
    q = manifest["targets"]["q_proj"]
    assert q["modules"] == 2 and set(q["layers"]) == {"0", "1"}
    assert q["trainable_params"] == 2 * 2 * (64 + 64)
    assert manifest["targets"]["down_proj"]["trainable_params"] == 2 * 2 * (128 + 64)
    assert manifest["trainable_params"] == sum(manifest["trainable_tensors"].values())


def test_merge_check_passes_with_nonzero_b(tiny_adapter, tmp_path):
    info, tok = tiny_adapter(init_lora_weights=False)  # peft: random, non-zero B
    b = [p for n, p in info.model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in b)
    check = MergeCheck(run_dir=str(tmp_path), merged_dir=str(tmp_path / "merged"))
    report = check.check(_module(info, tok), _batch(tok))
    assert report["passed"], report["message"]
    assert not report["vacuous"] and report["adapter_effect"]["max_abs_err"] > 1e-3
    assert report["merged"]["max_rel_err"] < 1e-5 and report["reloaded"]["top1_agreement"] == 1.0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_corrupted_merge_is_caught(tiny_adapter, tmp_path):
    class CorruptMerge(MergeCheck):
        def merge(self, peft_model):
            merged = super().merge(peft_model)
            with torch.no_grad():
                merged.model.layers[0].self_attn.q_proj.weight.add_(0.5)
            return merged

    info, tok = tiny_adapter(init_lora_weights=False)
    report = CorruptMerge(run_dir=str(tmp_path), merged_dir=str(tmp_path / "m"), save_merged=False).check(
        _module(info, tok), _batch(tok)
    )
    assert not report["passed"] and "merge check failed" in report["message"]


def test_zero_b_merge_is_flagged_vacuous(tiny_adapter, tmp_path):
    info, tok = tiny_adapter()  # B = 0: merged equals base, so the check alone proves nothing
    report = MergeCheck(run_dir=str(tmp_path), merged_dir=str(tmp_path / "m"), save_merged=False).check(
        _module(info, tok), _batch(tok)
    )
    assert report["passed"] and report["vacuous"]


def test_compare_logits_ignores_padding():
    ref = torch.zeros(1, 3, 5)
    got = ref.clone()
    got[0, 2] += 10.0  # a padded position
    mask = torch.tensor([[1, 1, 0]])
    assert compare_logits(ref, got, mask)["max_abs_err"] == 0.0
    assert compare_logits(ref, got)["max_abs_err"] == 10.0


def test_find_checkpoint(tmp_path):
    assert find_checkpoint(None, "auto", tmp_path / "checkpoints") is None
    assert find_checkpoint(None, None, tmp_path) is None
    with pytest.raises(ConfigError, match="ckpt_path not found"):
        find_checkpoint(str(tmp_path / "missing"), None, tmp_path)
    for step in (5, 10):
        d = tmp_path / "checkpoints" / f"step-{step:07d}"
        d.mkdir(parents=True)
        (d / "training_state.ckpt").write_bytes(b"x")
        (d / "checkpoint.json").write_text(f'{{"step": {step}, "value": 1.0}}')
    (tmp_path / "checkpoints" / ".tmp-step-0000015").mkdir()  # incomplete: never picked
    found = find_checkpoint(None, "auto", tmp_path / "checkpoints")
    assert found.endswith("step-0000010/training_state.ckpt")


def test_the_finite_guard_finds_the_first_nan_or_inf_in_one_reduction():
    """NonFiniteGuard's check over many tensors (one multi-tensor reduction): the first tensor holding
    a nan or an inf is named, in any float dtype, and the check records no autograd graph."""
    from loralab.callbacks.guards import _first_bad, _peaks

    torch.manual_seed(0)
    named = [(f"t{i}", torch.randn(3, 5, dtype=dtype)) for i, dtype in enumerate([torch.float32, torch.bfloat16] * 3)]
    weight = torch.nn.Parameter(torch.randn(4, 4))
    named.append(("weight", weight))
    assert _first_bad(named) is None
    peaks = _peaks([t for _, t in named])
    assert peaks.dtype == torch.float32 and not peaks.requires_grad
    assert torch.equal(peaks, torch.stack([t.detach().abs().amax().float() for _, t in named]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        named[3][1][2, 4] = bad
        named[5][1][0, 0] = float("nan")
        assert _first_bad(named) == "t3", bad
        named[3][1][2, 4] = 0.0
        assert _first_bad(named) == "t5"
        named[5][1][0, 0] = 0.0
    with torch.no_grad():
        weight[1, 1] = float("nan")
    assert _first_bad(named) == "weight"
    assert _first_bad([]) is None
