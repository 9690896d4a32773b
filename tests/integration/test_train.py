"""train(cfg) end to end on the tiny model: artefacts, plain peft / transformers loading, resume."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from loralab.train import run, train


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One completed tiny run shared by the tests below."""
    from tests.conftest import TINY, compose_config

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = compose_config(
        [*TINY, "variant.r=4", "trainer.max_steps=6", "trainer.val_check_interval=3"],
        tmp / "run",
        tmp / "cache",
    )
    summary, objects = train(cfg)
    return cfg, summary, objects, Path(cfg.paths.run_dir)


def test_run_directory_contents(finished):
    cfg, summary, _, run_dir = finished
    for name in (
        "run_meta.json",
        "summary.json",
        "merge_report.json",
        "freeze_manifest.json",
        "metrics.csv",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "merged/model.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["global_step"] == 6
    assert saved["merge_passed"] and saved["trainable_params"] == 8192 // 2 * 2  # r=4 on 14 linears
    assert saved["before"]["val/loss"] > saved["after"]["val/loss"]
    assert saved["after_step"] == 6 and saved["adapter_bytes"] > 0 and saved["peak_rss_mb"] > 0
    # where the wall time went: every phase this run had took some, and they add up to the total
    spent = saved["time"]
    assert spent["train"] == saved["train_seconds"] and spent["total"] == saved["wall_time_s"]
    assert all(spent[k] > 0 for k in ("train", "validate", "test", "forgetting", "merge_check", "save"))
    assert sum(v for k, v in spent.items() if k != "total") == pytest.approx(spent["total"])
    # compute.shared_prefix_train=auto (the default) came to on, on this CPU, and says why
    choice = saved["compute"]["shared_prefix_train"]
    assert choice["asked"] == "auto" and choice["used"] is True and "CPU" in choice["why"]
    meta = json.loads((run_dir / "run_meta.json").read_text())
    assert meta["seed"] == cfg.seed and len(meta["data"]["fingerprint"]) == 16
    assert meta["packages"]["torch"] and meta["packages"]["peft"] and "commit" in meta["git"]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    for key in (
        "train/loss",
        "val/loss",
        "val/ppl",
        "val/exact_match",
        "train/tokens_per_s",
        "train/lr",
    ):
        assert key in header


def test_checkpoints_keep_last_and_best(finished):
    *_, run_dir = finished
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-0000003", "step-0000006"]
    state = torch.load(run_dir / "checkpoints/step-0000006/training_state.ckpt", weights_only=True)
    assert state["global_step"] == 6 and state["optimizer_states"] and state["lr_schedulers"]
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])  # no frozen base


def test_adapter_loads_in_plain_peft(finished):
    from peft import PeftModel

    _, _, objects, run_dir = finished
    module = objects["module"]
    batch = next(iter(objects["datamodule"].val_dataloader()))
    module.model.eval()
    with torch.no_grad():
        ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # the tiny base has random weights: take them from the trained model with the adapter removed
    clean = copy.deepcopy(module.model).unload()
    loaded = PeftModel.from_pretrained(clean, run_dir / "adapter").eval()
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ref, got, atol=1e-5)


def test_merged_model_loads_in_plain_transformers(finished):
    from transformers import AutoModelForCausalLM

    _, _, objects, run_dir = finished
    module = objects["module"]
    batch = next(iter(objects["datamodule"].val_dataloader()))
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged").eval()
    module.model.eval()
    with torch.no_grad():
        ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    assert (ref[mask] - got[mask]).abs().max() < 1e-4


def test_resume_continues_at_the_right_step(make_cfg, finished):
    cfg0, *_, run_dir = finished
    ckpt = run_dir / "checkpoints" / "step-0000003"
    cfg = make_cfg(
        "variant.r=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        f"ckpt_path={ckpt}",
        run="resumed",
    )
    summary, objects = train(cfg)
    assert summary["global_step"] == 6 and summary["status"] == "completed"
    # no new "before" validation when continuing: the checkpoint carries the original's
    original_before = json.loads((run_dir / "summary.json").read_text())["before"]
    assert original_before and summary["before"] == original_before
    # same data order, optimizer, scheduler and RNG as the uninterrupted run: the same adapter, bit for bit
    resumed = load_file(Path(cfg.paths.run_dir) / "adapter" / "adapter_model.safetensors")
    original = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == original.keys()
    assert all(torch.equal(resumed[k], original[k]) for k in original)
    assert sorted(p.name for p in (Path(cfg.paths.run_dir) / "checkpoints").iterdir()) == ["step-0000006"]


def test_resume_from_the_last_checkpoint_keeps_the_final_metrics(make_cfg, finished):
    """Killed after the last checkpoint (during the merge check, say): the resumed run trains no
    further, and its summary still has the final validation's metrics, from the checkpoint."""
    *_, run_dir = finished
    cfg = make_cfg(
        "variant.r=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        f"ckpt_path={run_dir / 'checkpoints' / 'step-0000006'}",
        run="resumed_last",
    )
    summary, _ = train(cfg)
    original = json.loads((run_dir / "summary.json").read_text())
    assert summary["after"] and summary["after"] == original["after"]
    assert summary["after_step"] == original["after_step"] == 6
    # every validation's figures, from the checkpoint: the curves loralab-compare draws
    assert summary["validations"] == original["validations"] and original["validations"][-1]["step"] == 6


def test_resume_auto_in_the_same_run_dir(make_cfg):
    cfg = make_cfg("variant.r=4", "trainer.max_steps=3", "trainer.val_check_interval=3", run="auto")
    first, _ = train(cfg)
    cfg2 = make_cfg(
        "variant.r=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "resume=auto",
        run="auto",
    )
    summary, _ = train(cfg2)
    assert summary["global_step"] == 6
    # forgetting's base measure is the first start's (read from the checkpoint), not the resumed weights'
    assert summary["forgetting"]["forgetting/ce_before"] == first["forgetting"]["forgetting/ce_before"]
    assert summary["forgetting"]["forgetting/ce_after"] != first["forgetting"]["forgetting/ce_after"]
    run_dir = Path(cfg2.paths.run_dir)

    def steps(name: str) -> set[int]:
        with open(run_dir / name) as f:
            return {int(row["step"]) for row in csv.DictReader(f)}

    # the curve continues across the restart: the first part's validations, then the second's
    assert [v["step"] for v in summary["validations"]] == [v["step"] for v in first["validations"]] + [6]
    assert summary["validations"][: len(first["validations"])] == first["validations"]
    # the first part's metrics are kept beside the second part's
    assert steps("metrics.1.csv") and max(steps("metrics.1.csv")) <= 3
    assert min(steps("metrics.csv")) >= 3 and max(steps("metrics.csv")) >= 5


def test_classification_end_to_end(make_cfg):
    cfg = make_cfg("data=topics", "variant.r=2", run="cls")
    summary, _ = train(cfg)
    assert summary["status"] == "completed" and summary["merge_passed"]
    assert "val/accuracy" in summary["after"] and "val/exact_match" not in summary["after"]


def test_failed_merge_marks_summary_failed(make_cfg):
    from loralab.errors import MergeCheckError

    cfg = make_cfg(
        "variant.init_lora_weights=false",
        "trainer.max_steps=1",
        "callbacks.merge_check.tolerance.float32=1e-12",
        "optimizer.lr=0.5",
        run="merge_fail",
    )
    with pytest.raises(MergeCheckError):
        run(cfg)
    summary = json.loads((Path(cfg.paths.run_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and "merge check failed" in summary["error"]
    assert (Path(cfg.paths.run_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_wandb_offline_run_is_written_and_finished(make_cfg):
    cfg = make_cfg(
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        run="wb",
        base=["model=tiny", "debug=fast", "logger=default", "~callbacks.progress"],
    )
    with open_dict(cfg):
        cfg.tags = ["test"]
    run(cfg)
    import wandb

    assert wandb.run is None  # finished
    runs = list((Path(cfg.paths.run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    files = {p.name for p in (runs[0] / "files").iterdir()}
    assert {"freeze_manifest.json", "merge_report.json"} <= files


def test_merged_dir_is_a_model_source(finished, monkeypatch):
    from loralab.models import Pretrained

    _, _, objects, run_dir = finished
    monkeypatch.setenv("HOME", str(run_dir))
    source = Pretrained("~/merged")  # a local directory, written the way users write paths
    model = source.load_model("causal_lm").eval()
    batch = next(iter(objects["datamodule"].val_dataloader()))
    module = objects["module"].eval()
    with torch.no_grad():
        ref = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    assert (ref[mask] - got[mask]).abs().max() < 1e-4
    assert source.load_tokenizer().pad_token_id == model.config.pad_token_id


def test_merge_check_on_a_model_rebuilt_from_the_saved_adapter(tmp_path, finished):
    """The path sharded runs (FSDP, ZeRO-3) take: the check rebuilds the trained model from the
    base and the saved final adapter. On one process it must agree with the in-memory check."""
    from tests.conftest import TINY, compose_config

    cfg = compose_config(
        [
            *TINY,
            "variant.r=4",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "callbacks.merge_check.rebuild=always",
        ],
        tmp_path / "run",
        tmp_path / "cache",
    )
    summary, _ = train(cfg)
    report = json.loads((tmp_path / "run/merge_report.json").read_text())
    assert report["rebuilt_from"] == str(tmp_path / "run/adapter") and report["passed"]
    live = json.loads((finished[3] / "merge_report.json").read_text())
    # the same adapter (same config and seed), so the same effect on the logits, to float noise
    assert report["adapter_effect"]["max_abs_err"] == pytest.approx(live["adapter_effect"]["max_abs_err"], rel=1e-4)
    assert report["adapter_effect"]["max_abs_err"] > 100 * report["merged"]["max_abs_err"]
    assert summary["merge_passed"]


def test_precision_auto_runs_in_what_the_machine_computes_natively(make_cfg):
    """The presets' precision=auto, end to end on this machine: bf16 autocast where the CPU
    computes bf16 natively (else fp32), recorded with why in run_meta.json, summary.json and the
    saved config (which a rerun reads: it computes in the same precision), and the merge check
    passes at the tolerance of the weights' dtype."""
    from omegaconf import OmegaConf

    from loralab.distributed import cpu_has_bf16

    cfg = make_cfg("precision=auto", "variant.r=4", "trainer.max_steps=4", run="auto_precision")
    summary, objects = train(cfg)
    used = "bf16-mixed" if cpu_has_bf16() else "32-true"
    assert summary["status"] == "completed" and summary["merge_passed"]
    assert summary["precision"] == {"asked": "auto", "used": used, "why": summary["precision"]["why"]}
    assert objects["trainer"].precision == used
    run_dir = Path(cfg.paths.run_dir)
    meta = json.loads((run_dir / "run_meta.json").read_text())
    assert meta["precision"] == summary["precision"]
    assert OmegaConf.load(run_dir / "config.yaml").trainer.precision == used
    # the check runs outside the autocast: the weights' own dtype, and its tolerance
    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["dtype"] == "float32" and report["tolerance_rel"] == 1e-4


def test_validation_answers_come_from_the_loss_batches(make_cfg):
    """compute.prompt_once (the default): validation and the test split answer their rows from the
    loss batches' pass; the same figures as computing them apart, and the same answers."""
    from loralab.tasks.causal_lm import HEAD_CHECK_TOLERANCE

    on, on_objects = train(make_cfg(run="on"))
    off, off_objects = train(make_cfg("compute.prompt_once=false", run="off"))
    module, dm = on_objects["module"], on_objects["datamodule"]
    # every validation measured (the one before training too: a fresh cache here) and the test
    # split, every generation row of each
    validations = [v for v in on["validations"] if v["step"] > 0 or not on.get("before_cached")]
    assert len(validations) == 3
    assert module.answered_in_loss == len(validations) * len(dm.generation_set) + len(dm.test_generation_set)
    assert off_objects["module"].answered_in_loss == 0
    tolerance = HEAD_CHECK_TOLERANCE["float32"]
    for a, b in zip(on["validations"], off["validations"], strict=True):
        assert a["val/exact_match"] == b["val/exact_match"]
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=tolerance)
    assert on["test"]["test/loss"] == pytest.approx(off["test"]["test/loss"], rel=tolerance)
    rows = dm.generation_set
    answering = module.answering(rows)
    module.model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            answering.batch_sums(module.model, module.task, batch, True, True)
        apart = module.generate_answers([r["prompt_ids"] for r in rows])
    # (the tiny base answers these prompts with nothing much; tests/unit/test_prompt_once.py
    # compares answers that differ from prompt to prompt)
    assert answering.collected() == apart and len(apart) == len(rows)
