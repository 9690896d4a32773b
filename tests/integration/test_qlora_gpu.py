"""QLoRA end to end on a CUDA GPU: a k-bit base trains, the merge check merges into a dequantized
copy, and merged/ is a float model that plain transformers loads (`make test-all` on a GPU machine)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _qlora_run(tmp_path, *overrides: str):
    pytest.importorskip("bitsandbytes")
    from loralab.train import train
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "trainer=gpu", *overrides], tmp_path / "run", tmp_path / "cache")
    summary, objects = train(cfg)
    return cfg, summary, objects


@pytest.mark.parametrize("preset, bits, layer", [("nf4", 4, "Linear4bit"), ("int8", 8, "Linear8bitLt")])
def test_qlora_tiny(tmp_path, preset, bits, layer):
    cfg, summary, objects = _qlora_run(
        tmp_path, f"model/quantization={preset}", "variant.init_lora_weights=false", "trainer.max_steps=8"
    )
    run_dir = tmp_path / "run"
    base = objects["module"].model.get_base_model()
    q_proj = base.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == layer and q_proj.weight.device.type == "cuda"
    assert summary["status"] == "completed" and summary["merge_passed"]
    assert summary["after"]["val/loss"] < summary["before"]["val/loss"]

    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["quantized_base"]["bits"] == bits and report["error_includes_dequantization"]
    assert report["tolerance_name"] == f"quantized_{bits}bit" and report["dtype"] == "bfloat16"
    assert report["merged"]["max_rel_err"] <= report["tolerance_rel"]
    assert "dequantization" in report and not report["vacuous"]

    from transformers import AutoModelForCausalLM

    assert "quantization_config" not in json.loads((run_dir / "merged" / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert json.loads((run_dir / "run_meta.json").read_text())["model"]["quantization"]["bits"] == bits


@pytest.mark.slow
def test_qlora_default_model(tmp_path):
    """The packaged SmolLM2-135M, quantized from its cached safetensors, on the dates task."""
    _, summary, _ = _qlora_run(tmp_path, "model=smollm2_135m", "model/quantization=nf4", "trainer.max_steps=20")
    assert summary["status"] == "completed" and summary["merge_passed"]
    assert summary["after"]["val/loss"] < summary["before"]["val/loss"]
