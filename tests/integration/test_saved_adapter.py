"""What is saved is what is verified: a checkpoint or final adapter that lacks a tensor the run
trains is refused when written; the merge check loads adapter/ with plain peft onto a fresh base and
fails the run, in one line, when a key is missing or its logits differ from merged/; a merge that
cannot run fails in one line with the adapter kept; the trainable set survives every callback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loralab.callbacks.adapter_checkpoint import AdapterCheckpoint
from loralab.callbacks.merge_check import MergeCheck
from loralab.errors import CheckpointError, MergeCheckError
from loralab.train import train

CLS = ["data=topics", "trainer.max_steps=2", "trainer.val_check_interval=2", "optimizer.lr=1e-2"]
HEAD_KEY = "base_model.model.score.weight"


def _rewrite_adapter(directory: Path, change) -> None:
    path = directory / "adapter_model.safetensors"
    save_file(change(load_file(str(path))), str(path), metadata={"format": "pt"})


def test_lora_fa_keeps_a_frozen_in_the_model_train_returns(make_cfg):
    """The merge check's disable_adapter() used to switch every adapter tensor back to trainable."""
    cfg = make_cfg("variant=lora_fa", "variant.r=4", "trainer.max_steps=2", "trainer.val_check_interval=2")
    summary, objects = train(cfg)
    model = objects["module"].model
    a = [p for n, p in model.named_parameters() if ".lora_A." in n]
    assert a and not any(p.requires_grad for p in a)
    # B only: r x d_out summed over q, k, v, o (64, 32, 32, 64), gate, up, down (128, 128, 64), 2 layers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == summary["trainable_params"] == 2 * 4 * 512


def test_classification_head_is_listed_as_trained_in_full(make_cfg):
    cfg = make_cfg(*CLS)
    train(cfg)
    manifest = json.loads((Path(cfg.paths.run_dir) / "freeze_manifest.json").read_text())
    assert manifest["head"] == ["score"]
    entry = manifest["modules_to_save"]["score"]
    assert entry["modules"] == 1 and entry["trainable_params"] == 64 * 4
    assert entry["why"] == "classification head (trained in full)"


def test_pissa_saves_the_classification_head(make_cfg):
    """peft's PiSSA conversion keeps only lora_A/lora_B: the head used to be lost from every save."""
    cfg = make_cfg(*CLS, "variant=pissa", "variant.r=4")
    train(cfg)
    run = Path(cfg.paths.run_dir)
    for directory in (run / "adapter", run / "checkpoints" / "step-0000002"):
        assert HEAD_KEY in load_file(str(directory / "adapter_model.safetensors"))


def test_a_checkpoint_without_the_head_is_refused_when_written(make_cfg, monkeypatch):
    """PiSSA as it was before the fix (the conversion's output kept as is): the first checkpoint
    fails its key check, names the key, and nothing is left as a checkpoint."""
    monkeypatch.setattr("loralab.variants.pissa.keep_trained_copies", lambda model, directory: None)
    cfg = make_cfg(*CLS, "variant=pissa", "variant.r=4")
    with pytest.raises(CheckpointError, match=rf"1 missing \(e\.g\. {HEAD_KEY}\)") as caught:
        train(cfg)
    assert "\n" not in str(caught.value)
    assert not list((Path(cfg.paths.run_dir) / "checkpoints").glob("step-*"))


def _after_final_save(monkeypatch, change) -> None:
    """Change adapter/ once AdapterCheckpoint has written and checked it: what the merge check
    then loads is not what the run holds."""
    original = AdapterCheckpoint.on_fit_end

    def on_fit_end(self, trainer, pl_module):
        original(self, trainer, pl_module)
        _rewrite_adapter(self.final_dir, change)

    monkeypatch.setattr(AdapterCheckpoint, "on_fit_end", on_fit_end)


def test_a_saved_adapter_lacking_a_key_fails_the_run(make_cfg, monkeypatch):
    _after_final_save(monkeypatch, lambda tensors: {k: v for k, v in tensors.items() if k != HEAD_KEY})
    cfg = make_cfg(*CLS)
    with pytest.raises(MergeCheckError, match=HEAD_KEY) as caught:
        train(cfg)
    assert "\n" not in str(caught.value)
    report = json.loads((Path(cfg.paths.run_dir) / "merge_report.json").read_text())
    assert not report["passed"] and HEAD_KEY in report["saved_adapter"]["missing_keys"]
    assert report["merged"]["max_rel_err"] <= report["tolerance_rel"]  # the live merge itself was fine


def test_a_saved_adapter_with_an_extra_key_fails_the_run(make_cfg, monkeypatch):
    extra = "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"
    _after_final_save(monkeypatch, lambda tensors: {**tensors, extra: torch.zeros(2, 2)})
    with pytest.raises(MergeCheckError, match=r"1 unexpected keys \(base_model\.model\.model\.layers\.0"):
        train(make_cfg(*CLS))


def test_a_saved_adapter_that_does_not_reproduce_merged_fails_the_run(make_cfg, monkeypatch):
    _after_final_save(monkeypatch, lambda tensors: {k: v * 2 if ".lora_B." in k else v for k, v in tensors.items()})
    cfg = make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2", "optimizer.lr=1e-2")
    with pytest.raises(MergeCheckError, match=r"saved_adapter: max relative logit error"):
        train(cfg)
    report = json.loads((Path(cfg.paths.run_dir) / "merge_report.json").read_text())
    assert report["saved_adapter"]["max_rel_err"] > report["tolerance_rel"] >= report["reloaded"]["max_rel_err"]


def test_a_merge_that_cannot_run_is_one_line_and_keeps_the_adapter(make_cfg, monkeypatch):
    """peft's VeRA merge raised a raw AttributeError on a head that is not a Linear: whatever a
    merge raises ends the run with one line, a merge_report.json, and adapter/ kept."""

    def broken(self, peft_model):
        raise AttributeError("'RobertaClassificationHead' object has no attribute 'weight'")

    monkeypatch.setattr(MergeCheck, "merge", broken)
    cfg = make_cfg(*CLS, "variant=vera", "variant.r=16")
    with pytest.raises(MergeCheckError) as caught:
        train(cfg)
    message = str(caught.value)
    assert "\n" not in message and "AttributeError: 'RobertaClassificationHead'" in message
    run = Path(cfg.paths.run_dir)
    assert f"the trained adapter is saved in {run / 'adapter'}" in message
    assert HEAD_KEY in load_file(str(run / "adapter" / "adapter_model.safetensors"))
    report = json.loads((run / "merge_report.json").read_text())
    assert report["passed"] is False and report["error"].startswith("AttributeError")
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_a_variant_whose_saving_fails_ends_in_one_line(make_cfg, monkeypatch):
    """An error inside a variant's own saving code (peft's PiSSA conversion with trained biases
    raised ValueError) is the run's one-line error, with what was kept."""
    from loralab.variants.registry import AdapterInfo

    def failing(self, directory):
        raise ValueError("Adapter pissa_init does not exist")

    monkeypatch.setattr(AdapterInfo, "save", failing)
    cfg = make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2")
    with pytest.raises(CheckpointError) as caught:
        train(cfg)
    assert str(caught.value) == (
        "saving checkpoint step 2 failed (ValueError: Adapter pissa_init does not exist); no checkpoint had been "
        "saved yet; the traceback is in train.log"
    )
    assert not list((Path(cfg.paths.run_dir) / "checkpoints").iterdir())


def test_a_merge_failure_through_the_cli_is_one_line_with_the_traceback_in_train_log(tmp_path, monkeypatch):
    import sys

    from loralab.cli import main
    from tests.conftest import TINY
    from tests.integration.bad_inputs import last_line, run_captured

    def broken(self, peft_model):
        raise AttributeError("'RobertaClassificationHead' object has no attribute 'weight'")

    monkeypatch.setattr(MergeCheck, "merge", broken)
    monkeypatch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["loralab-train", *TINY, *CLS, f"hydra.run.dir={run}"])
    code, stderr = run_captured(main)
    assert code == 2 and "Traceback" not in stderr
    assert last_line(stderr) == (
        "loralab: error: merge check could not merge or compare the model (AttributeError: "
        "'RobertaClassificationHead' object has no attribute 'weight'); the trained adapter is saved in "
        f"{run / 'adapter'}; the traceback is in train.log"
    )
    log = (run / "train.log").read_text()
    assert "the merge check failed:\nTraceback (most recent call last):" in log and "def broken" not in stderr
