"""Quantized bases (QLoRA): the compose-time refusals, and the dequantize-then-merge check on tiny
bitsandbytes models (bitsandbytes quantizes on the CPU too; those tests skip without it)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from loralab.callbacks import MergeCheck
from loralab.errors import ConfigError
from loralab.models import FromConfig, Pretrained
from loralab.models.quantized import check_available, dequantized_copy, quantization_of
from loralab.models.schema import QuantizationConfig
from loralab.module import LoraModule
from loralab.validation import validate
from loralab.variants import get_variant
from tests.conftest import TINY_CONFIG

PRESETS = ("nf4", "fp4", "int8")


def _batch(tokenizer) -> dict:
    """Four padded prompts: the probe batch the merge check compares logits on."""
    texts = [f"The date is May {i}, 2001" + " again" * i for i in range(1, 5)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda(monkeypatch):
    """What validate sees on a CUDA machine (nothing here touches a device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("preset", PRESETS)
def test_quantization_without_cuda_fails_at_validate(make_cfg, no_cuda, preset):
    cfg = make_cfg(f"model/quantization={preset}")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith("model.quantization needs a CUDA GPU") and "\n" not in message
    assert "drop model/quantization" in message


def test_presets_compose_typed(make_cfg):
    cfg = make_cfg("model/quantization=nf4", "model.quantization.double_quant=false")
    assert QuantizationConfig(**OmegaConf.to_container(cfg.model.quantization)) == QuantizationConfig(
        bits=4, quant_type="nf4", double_quant=False, compute_dtype="bfloat16"
    )
    assert make_cfg("model/quantization=int8").model.quantization.bits == 8
    assert make_cfg().model.get("quantization") is None  # a float base unless asked


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.quantization.bits=3", "model.quantization.bits must be 4 or 8"),
        ("model.quantization.quant_type=int4", "model.quantization.quant_type must be one of ['nf4', 'fp4']"),
        ("model.quantization.compute_dtype=float64", "model.quantization.compute_dtype must be one of"),
    ],
)
def test_bad_quantization_values(make_cfg, override, fragment):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("model/quantization=nf4", override))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_quantization_needs_a_gpu_trainer(make_cfg, cuda):
    with pytest.raises(ConfigError, match=r"trainer.accelerator=cpu: use trainer=gpu"):
        validate(make_cfg("model/quantization=nf4"))  # the default trainer is cpu
    with pytest.raises(ConfigError, match="does not shard.*FSDPStrategy: use trainer=gpu or trainer=ddp"):
        check_available({"accelerator": "gpu", "strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}})


def test_quantization_needs_bitsandbytes(monkeypatch, cuda):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r"needs bitsandbytes, which is not installed: pip install bitsandbytes"):
        check_available({"accelerator": "gpu"})


@pytest.mark.parametrize("variant", ["pissa", "delta_lora"])
def test_variants_that_rewrite_w0_refuse_quantization(make_cfg, variant):
    cfg = make_cfg(f"variant={variant}", "model/quantization=nf4")
    with pytest.raises(ConfigError, match="drop model/quantization, or use variant=lora"):
        get_variant(variant).check(None, cfg)


# --- bitsandbytes on the CPU: real k-bit layers, real dequantization ---------------------------


def _quantized_adapter(bits: int, task: str = "causal_lm", **variant):
    """A LoRA adapter with non-zero B on the tiny model loaded k-bit (compute in float32)."""
    pytest.importorskip("bitsandbytes")
    source = FromConfig(TINY_CONFIG, name="tiny", seed=0, quantization={"bits": bits, "compute_dtype": "float32"})
    labels = ["a", "b", "c"] if task == "seq_cls" else None
    torch.manual_seed(0)
    info = get_variant("lora").build(
        source.load_model(task, labels), get_variant("lora").schema(init_lora_weights=False, **variant), task
    )
    tokenizer = source.load_tokenizer()
    return info, tokenizer, LoraModule(info, tokenizer, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


def kernel_error(info, batch: dict) -> float:
    """How far this machine's bitsandbytes k-bit layers are from a float matmul with the weights
    they dequantize to, on the activations `batch` gives them: the max relative error over every
    k-bit layer of the base. 0 where bitsandbytes dequantizes and multiplies in float (seen on AVX2
    CPUs); about bf16's rounding where its CPU kernel takes another path (seen on AVX-512 with native
    bf16); LLM.int8 also quantizes activations. Tolerances on the dequantized model are taken from
    it, not from one machine's figures."""
    from loralab.tasks import get_task

    _logits = get_task("causal_lm").logits

    floats = dict(dequantized_copy(info.model).named_modules())
    errors: list[float] = []

    def compare(name: str):
        def hook(module, args, out) -> None:
            ref = floats[name](args[0]).float()
            errors.append(((out.float() - ref).abs().max() / ref.abs().max()).item())

        return hook

    kbit = [(n, m) for n, m in info.model.named_modules() if type(m).__module__.startswith("bitsandbytes")]
    hooks = [m.register_forward_hook(compare(n)) for n, m in kbit]
    try:
        info.model.eval()
        with info.model.disable_adapter():
            _logits(info.model, batch)
    finally:
        for h in hooks:
            h.remove()
    assert len(errors) == len(kbit) > 0
    return max(errors)


def tolerance(info, batch: dict) -> float:
    """The dequantized model's logits may differ from the k-bit model's by the kernel's own error,
    compounded over the model's layers (a few times the per-layer figure); float rounding where the
    kernel is exact."""
    return max(1e-6, 10 * kernel_error(info, batch))


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_quantized_merge_check(tmp_path, bits, layer):
    info, tok, module = _quantized_adapter(bits)
    base = info.model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == layer
    assert not any(p.requires_grad for n, p in info.model.named_parameters() if "lora_" not in n)
    report = MergeCheck(run_dir=str(tmp_path), merged_dir=str(tmp_path / "merged")).check(module, _batch(tok))
    assert report["passed"] and not report["vacuous"], report["message"]
    assert report["tolerance_name"] == f"quantized_{bits}bit" and report["error_includes_dequantization"]
    assert report["quantized_base"]["bits"] == bits and report["quantized_base"]["compute_dtype"] == "float32"
    # the dequantized base computes what the k-bit base does, up to this machine's k-bit kernel
    assert report["dequantization"]["max_rel_err"] <= tolerance(info, _batch(tok))
    assert report["merged"]["max_rel_err"] <= report["tolerance_rel"]
    assert report["reloaded"]["top1_agreement"] == 1.0

    # the merged model is a float transformers model: no quantization config, plain nn.Linear
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(reloaded.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert quantization_of(info.model)["bits"] == bits  # the adapter model itself is untouched


def test_requantizing_merge_would_fail_the_check(tmp_path):
    """peft's own merge into a 4-bit base requantizes W0 + ΔW: the merge check must not do that."""
    from loralab.callbacks.merge_check import compare_logits
    from loralab.tasks import get_task

    _logits = get_task("causal_lm").logits

    info, tok, _ = _quantized_adapter(4)
    batch = _batch(tok)
    info.model.eval()
    ref = _logits(info.model, batch)
    requantized = MergeCheck(run_dir=str(tmp_path), merged_dir=str(tmp_path / "m")).merge(info.model)
    dequantized = dequantized_copy(info.model).merge_and_unload()
    mask = batch["attention_mask"]
    requantized_err = compare_logits(ref, _logits(requantized, batch), mask)["max_rel_err"]
    dequantized_err = compare_logits(ref, _logits(dequantized, batch), mask)["max_rel_err"]
    assert dequantized_err <= tolerance(info, batch)
    # requantizing W0 + ΔW loses the adapter: an error far beyond the kernel's own
    assert requantized_err > 0.1 and requantized_err > 10 * dequantized_err


def test_quantized_classifier_head_is_restored_for_the_base(tmp_path):
    """modules_to_save: the dequantized base carries the original head, the merged one the trained head."""
    info, tok, module = _quantized_adapter(4, task="seq_cls", modules_to_save=["score"])
    with torch.no_grad():
        for name, param in info.model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param))
    report = MergeCheck(run_dir=str(tmp_path), merged_dir=str(tmp_path / "m"), save_merged=False).check(
        module, _batch(tok)
    )
    # the float base's head is the original, bit for bit; the trained copy is the adapter's
    original = info.model.base_model.model.score.original_module.weight
    float_model = dequantized_copy(info.model)
    with float_model.disable_adapter():
        assert torch.equal(float_model.base_model.model.score.original_module.weight, original)
    assert report["passed"] and report["dequantization"]["max_rel_err"] <= tolerance(info, _batch(tok))
    assert report["adapter_effect"]["max_abs_err"] > 0.1


def test_pretrained_loads_quantized(tmp_path):
    """The from_pretrained path (hub ids, local dirs, the GGUF cache) quantizes and prepares."""
    pytest.importorskip("bitsandbytes")
    FromConfig(TINY_CONFIG, name="tiny", seed=0).load_model("causal_lm").save_pretrained(tmp_path / "tiny")
    FromConfig(TINY_CONFIG).load_tokenizer().save_pretrained(tmp_path / "tiny")
    fp4 = {"bits": 4, "quant_type": "fp4", "compute_dtype": "float32"}
    source = Pretrained(str(tmp_path / "tiny"), quantization=fp4)
    model = source.load_model("causal_lm")
    assert quantization_of(model) == {**fp4, "double_quant": True}
    assert model.is_activation_checkpointing and not any(p.requires_grad for p in model.parameters())
    assert source.describe()["quantization"]["quant_type"] == "fp4"
