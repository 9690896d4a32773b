"""Architecture families x variants: a tiny random model of each family (tests/families.py), saved in
transformers' format and trained through `model=hub model.name_or_path=<dir>` as a user would, with
every registered variant. Each case trains a few steps and passes the merge check; then this test,
on its own, loads adapter/ with plain peft onto a base loaded afresh from the model directory and
compares it with merged/, and checks that the classification head is saved, listed and trained, and
that the model train() returns trains exactly what it trained at the start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.data.builtin import TOPICS
from loralab.tasks import TASKS, get_task
from loralab.train import train
from loralab.variants.registry import registered_variants
from tests.conftest import compose_config
from tests.families import FAMILIES, save_family

# what each variant needs to train in three steps on a width-64 model (the rest is its config's default)
VARIANT_ARGS = {
    "vera": ["variant.r=16"],
    "lora_drop": ["variant.stage1_steps=2", "variant.sample_fraction=0.25"],
    "delta_lora": ["variant.update_start=1"],
}
VARIANTS = sorted(spec.name for spec in registered_variants())
# `make test` runs every family once (vanilla LoRA) and every variant on the structural extremes: a head
# nested in a module (RoBERTa), Conv1D (GPT-2), fused projections (Phi-3). The rest of the matrix is
# marked `matrix`: `make test-matrix` runs it, and so does .ci/run after `make test`.
EVERY_VARIANT_ON = {("roberta", "seq_cls"), ("gpt2", "causal_lm"), ("phi3", "causal_lm")}
CASES = [
    pytest.param(family, task, variant, id=f"{family}-{task}-{variant}", marks=[] if core else [pytest.mark.matrix])
    for family, (_, tasks, _) in FAMILIES.items()
    for task in tasks
    for variant in VARIANTS
    for core in [variant == "lora" or (family, task) in EVERY_VARIANT_ON]
]
STEPS = ["trainer.max_steps=3", "trainer.val_check_interval=3", "optimizer.lr=1e-2"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> Path:
    """Where the families' models are saved (each once, when a case first needs it)."""
    return tmp_path_factory.mktemp("families")


def _model(task: str, path: Path) -> torch.nn.Module:
    return get_task(task).model_class().from_pretrained(path).eval()


def test_the_matrix_covers_the_structures():
    """At least 8 families, decoders, encoders and encoder-decoders, every task, and every registered
    variant."""
    assert len(FAMILIES) >= 8
    tasks = {task for _, tasks, _ in FAMILIES.values() for task in tasks}
    assert tasks == set(TASKS)
    assert set(VARIANT_ARGS) <= set(VARIANTS) and len(VARIANTS) >= 9


@pytest.mark.parametrize("family, task, variant", CASES)
def test_family_variant(family, task, variant, family_dirs, tmp_path):
    from peft import PeftModel

    labels = sorted(TOPICS) if task == "seq_cls" else None
    model_dir = save_family(family, task, family_dirs, labels=labels)
    data = "data=topics" if task == "seq_cls" else "data=dates"
    overrides = ["model=hub", f"model.name_or_path={model_dir}", data, "debug=fast", "logger=csv"]
    overrides += ["~callbacks.progress", *STEPS, f"variant={variant}", *VARIANT_ARGS.get(variant, [])]
    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "cache")
    summary, objects = train(cfg)
    run = Path(cfg.paths.run_dir)
    assert summary["status"] == "completed"

    report = json.loads((run / "merge_report.json").read_text())
    tol = report["tolerance_rel"]
    assert report["passed"] and not report["vacuous"], report
    saved = report["saved_adapter"]
    assert saved["missing_keys"] == saved["unexpected_keys"] == [] and saved["max_rel_err"] <= tol

    # on its own: adapter/ in plain peft on a fresh base against merged/
    batch = next(iter(objects["datamodule"].val_dataloader()))
    loaded = PeftModel.from_pretrained(_model(task, model_dir), run / "adapter").eval()
    merged = get_task(task).logits(_model(task, run / "merged"), batch)
    assert ((get_task(task).logits(loaded, batch) - merged).abs().max() / merged.abs().max()).item() <= tol

    manifest = json.loads((run / "freeze_manifest.json").read_text())
    adapted = {n for entry in manifest["targets"].values() for layer in entry["layers"].values() for n in layer}
    live = objects["module"].model
    # what train() returns trains exactly what it trained at the start (merge check and saving included)
    assert {n for n, p in live.named_parameters() if p.requires_grad} == set(manifest["trainable_tensors"])
    if task == "seq_cls":
        heads = manifest["head"]
        assert heads and all(manifest["modules_to_save"][h]["trainable_params"] > 0 for h in heads)
        # nothing inside the head gets an adapter; every head tensor is saved, in adapter/ and checkpoints
        assert not any(n.split(".")[0] in heads for n in adapted)
        for directory in [run / "adapter", *sorted((run / "checkpoints").glob("step-*"))]:
            keys = load_file(directory / "adapter_model.safetensors").keys()
            for head in heads:
                assert any(k.startswith(f"base_model.model.{head}.") for k in keys), (directory, head)


def test_vera_merges_a_head_that_is_a_module(family_dirs, tmp_path):
    """peft's VeRA merge fails on RoBERTa's classification head (a module holding two Linear
    layers, trained in full): loralab's merge puts the trained copy in place first."""
    model_dir = save_family("roberta", "seq_cls", family_dirs, labels=sorted(TOPICS))
    overrides = ["model=hub", f"model.name_or_path={model_dir}", "data=topics", "debug=fast", "logger=csv"]
    overrides += ["~callbacks.progress", *STEPS, "variant=vera", "variant.r=16", "variant.target_modules=[query,value]"]
    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "cache")
    summary, _ = train(cfg)
    run = Path(cfg.paths.run_dir)
    assert summary["merge_passed"] and (run / "merged" / "config.json").is_file()
    merged = load_file(run / "merged" / "model.safetensors")
    trained = load_file(run / "adapter" / "adapter_model.safetensors")
    # merged/ holds the trained head, not the one the base started with
    assert torch.equal(merged["classifier.dense.weight"], trained["base_model.model.classifier.dense.weight"])
