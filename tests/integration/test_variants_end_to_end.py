"""Every variant end to end on the tiny model: trainable count against its formula, the exact
trainable set, a merge check with non-trivial weights, the saved adapter in plain peft against the
original base, resume from a checkpoint, and the variant's own facts in summary.json."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from loralab.train import train
from loralab.variants.registry import _REGISTRY
from tests.conftest import TINY, compose_config

COMMON = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "optimizer.lr=1e-2",
    "callbacks.adapter_checkpoint.save_top_k=5",
]
CASES = {
    "lora": ["variant=lora", "variant.r=4"],
    "lora_fa": ["variant=lora_fa", "variant.r=4"],
    "lora_fa+lorafa_optimizer": ["variant=lora_fa", "variant.r=4", "optimizer=lorafa"],
    "vera": ["variant=vera", "variant.r=16"],
    "lora_drop": ["variant=lora_drop", "variant.r=4", "variant.stage1_steps=4", "variant.sample_fraction=0.25"],
    "dora": ["variant=dora", "variant.r=4"],
    "rslora": ["variant=rslora", "variant.r=4"],
    # dropout on: resume must still be bitwise although saving converts through fresh LoRA layers
    "pissa": ["variant=pissa", "variant.r=4", "variant.dropout=0.1"],
    "loraplus": ["variant=loraplus", "variant.r=4", "variant.lr_ratio=4"],
    "delta_lora": ["variant=delta_lora", "variant.r=4", "variant.update_start=1"],
}
TRAINABLE = {
    "lora_fa": r"\.lora_B\.default\.weight$",
    "lora_fa+lorafa_optimizer": r"\.lora_B\.default\.weight$",
    "vera": r"\.vera_lambda_[bd]\.default$",
    "dora": r"\.(lora_[AB]\.default\.weight|lora_magnitude_vector\.default\.weight)$",
}
TENSORS_PER_MODULE = {"lora_fa": 1, "lora_fa+lorafa_optimizer": 1, "dora": 3}


@pytest.fixture(scope="module", params=list(CASES))
def variant_run(request, tmp_path_factory):
    """One 4-step run per variant (checkpoints at steps 2 and 4); LoRA-FA's A recorded at build."""
    from loralab.variants import get_variant

    case = request.param
    tmp = tmp_path_factory.mktemp(case.replace("+", "_"))
    cfg = compose_config([*TINY, *COMMON, *CASES[case]], tmp / "run", tmp / "cache")
    spec = get_variant(cfg.variant.name)
    initial: dict[str, torch.Tensor] = {}
    original_build = spec.build

    def recording_build(*args, **kwargs):
        info = original_build(*args, **kwargs)
        initial.update({n: p.detach().clone() for n, p in info.model.named_parameters()})
        return info

    with pytest.MonkeyPatch.context() as mp:  # specs are frozen: the registry gets a recording copy
        mp.setitem(_REGISTRY, spec.name, dataclasses.replace(spec, build=recording_build))
        summary, objects = train(cfg)
    return case, cfg, summary, objects, Path(cfg.paths.run_dir), initial


def _adapted(info) -> list[tuple[str, int, int]]:
    """(name, d_in, d_out) of every adapted module."""
    base = info.model.get_base_model()
    out = []
    for names in info.target_matches.values():
        for name in names:
            layer = base.get_submodule(name).get_base_layer()
            out.append((name, layer.in_features, layer.out_features))
    return out


def _formula(case: str, info, r: int) -> int:
    dims = _adapted(info)
    if case.startswith("lora_fa"):
        return sum(r * o for _, _, o in dims)
    if case == "vera":
        return sum(o + r for _, _, o in dims)
    if case == "dora":
        return sum(r * (i + o) + o for _, i, o in dims)
    if case == "lora_drop":
        facts = info.facts
        kept = {n.removeprefix("base_model.model.") for n in facts["kept_modules"]}
        shapes = {(o, i) for n, i, o in dims if n not in kept}
        assert sorted(tuple(s["shape"]) for s in facts["shared_sets"]) == sorted(shapes)
        return sum(r * (i + o) for n, i, o in dims if n in kept) + sum(r * (i + o) for o, i in shapes)
    return sum(r * (i + o) for _, i, o in dims)


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_trainable_count_and_set(variant_run):
    case, cfg, summary, objects, run_dir, _ = variant_run
    info = objects["module"].adapter
    expected = _formula(case, info, cfg.variant.r)
    manifest = json.loads((run_dir / "freeze_manifest.json").read_text())
    assert summary["trainable_params"] == manifest["trainable_params"] == expected > 0
    # per target pattern too (a shared LoRA-drop pair counts once)
    assert sum(entry["trainable_params"] for entry in manifest["targets"].values()) == expected
    tensors = manifest["trainable_tensors"]
    pattern = re.compile(TRAINABLE.get(case, r"\.lora_[AB]\.default\.weight$"))
    assert all(pattern.search(name) for name in tensors), [n for n in tensors if not pattern.search(n)]
    modules = len(_adapted(info))
    if case == "lora_drop":
        # each shared pair counts once: kept modules plus one pair per shared set
        modules = len(info.facts["kept_modules"]) + len(info.facts["shared_sets"])
    assert len(tensors) == modules * TENSORS_PER_MODULE.get(case, 2)


def test_merge_check_passes_with_nontrivial_weights(variant_run):
    *_, run_dir, _ = variant_run
    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["passed"] and not report["vacuous"], report
    assert report["adapter_effect"]["max_rel_err"] > 10 * report["tolerance_rel"]
    assert report["merged"]["max_rel_err"] <= report["tolerance_rel"]
    assert report["reloaded"]["max_rel_err"] <= report["tolerance_rel"]


def test_saved_adapter_in_plain_peft_on_the_original_base(variant_run):
    from peft import PeftModel

    case, cfg, _, objects, run_dir, _ = variant_run
    batch = next(iter(objects["datamodule"].val_dataloader()))
    ref = _logits(objects["module"].model, batch)
    # the untouched base, rebuilt from the config: PiSSA and Delta-LoRA changed the live one
    base = instantiate(cfg.model).load_model("causal_lm")
    loaded = PeftModel.from_pretrained(base, run_dir / "adapter")
    got = _logits(loaded, batch)
    scale = ref.abs().max()
    assert ((ref - got).abs().max() / scale) < 1e-5, case


def _stage1_must_not_run(*args, **kwargs):
    raise AssertionError("LoRA-drop ran stage 1 again on resume")


def test_resume_from_a_checkpoint(variant_run, tmp_path):
    case, cfg0, summary0, objects0, run_dir, _ = variant_run
    ckpt = run_dir / "checkpoints" / "step-0000002"
    cfg = compose_config([*TINY, *COMMON, *CASES[case], f"ckpt_path={ckpt}"], tmp_path / "resumed", tmp_path / "cache")
    with pytest.MonkeyPatch.context() as mp:
        # the selection must come from the checkpoint, not from running stage 1 again
        mp.setattr("loralab.variants.lora_drop._stage1", _stage1_must_not_run)
        summary, objects = train(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 4
    resumed = load_file(Path(cfg.paths.run_dir) / "adapter" / "adapter_model.safetensors")
    original = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == original.keys()
    if case == "delta_lora":
        # W is rebuilt from W_0 + λ·s·(B_t·A_t − B_K·A_K) (K=1, resumed at step 2: a real rebuild):
        # equal to the in-place updates up to rounding, in the adapter and in W itself
        assert all(torch.allclose(resumed[k], original[k], atol=1e-6, rtol=1e-5) for k in original)
        base = instantiate(cfg.model).load_model("causal_lm")
        live = dict(objects["module"].model.named_parameters())
        moved = 0
        for name, w in objects0["module"].model.named_parameters():
            if name.endswith(".base_layer.weight"):
                assert torch.allclose(live[name], w, atol=1e-6), name
                original_w = base.get_parameter(name.removeprefix("base_model.model.").replace(".base_layer", ""))
                moved += not torch.equal(w, original_w)
        assert moved == 14
    else:
        assert all(torch.equal(resumed[k], original[k]) for k in original), case
    if case == "lora_drop":
        # the selection came from the checkpoint: stage 1 did not run again
        assert summary["variant"]["kept_modules"] == summary0["variant"]["kept_modules"]
        assert summary["variant"]["shared_sets"] == summary0["variant"]["shared_sets"]
        assert summary["variant"]["selection_from"] == str(ckpt / "variant.json")


def test_variant_facts_in_summary(variant_run):
    case, cfg, summary, objects, run_dir, initial = variant_run
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["adapter_bytes"] > 0 and saved["trainable_params"] > 0
    facts = saved["variant"]
    if case == "vera":
        assert facts["projection_prng_key"] == cfg.variant.projection_prng_key
        keys = load_file(run_dir / "adapter" / "adapter_model.safetensors").keys()
        # the shared projections travel with the adapter (save_projection)
        assert any("vera_A" in k for k in keys) and any("vera_B" in k for k in keys)
    elif case == "lora_drop":
        assert (run_dir / "lora_drop_importance.png").stat().st_size > 1000
        table = facts["importance"]
        assert abs(sum(row["importance"] for row in table) - 1) < 1e-9
        assert {row["unit"] for row in table if row["kept"]} == set(facts["kept_units"])
        assert facts["expected_trainable_params"] == saved["trainable_params"]
    elif case == "delta_lora":
        assert facts["updates_applied"] == 3 and (run_dir / "delta_w" / "adapter_config.json").is_file()
    elif case.startswith("lora_fa"):
        model = objects["module"].model
        a_names = [n for n in initial if ".lora_A." in n]
        b_names = [n for n in initial if ".lora_B." in n]
        params = dict(model.named_parameters())
        assert a_names and all(torch.equal(params[n], initial[n]) for n in a_names)  # A never moved
        assert all(not torch.equal(params[n], initial[n]) for n in b_names)  # B trained
    elif case == "loraplus":
        header = (run_dir / "metrics.csv").read_text().splitlines()
        rows = [dict(zip(header[0].split(","), line.split(","), strict=True)) for line in header[1:]]
        rates = [(float(r["train/lr/lora_A"]), float(r["train/lr/lora_B"])) for r in rows if r["train/lr/lora_A"]]
        assert rates and all(abs(b - 4 * a) <= 1e-12 + 1e-9 * b for a, b in rates)
    elif case == "pissa":
        config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        # converted against the original base: rank 2r, initialised as plain LoRA
        assert config["r"] == 2 * cfg.variant.r and config["init_lora_weights"] is True


def test_delta_lora_telescopes(tmp_path):
    """W_T = W_K + λ·s·(B_T·A_T − B_K·A_K), with W_K = W_0 (no update before K)."""
    cfg = compose_config(
        [*TINY, *COMMON, *CASES["delta_lora"], "variant.update_start=2", "trainer.max_steps=6"],
        tmp_path / "run",
        tmp_path / "cache",
    )
    _, objects = train(cfg)
    model = objects["module"].model
    state = torch.load(Path(cfg.paths.run_dir) / "checkpoints/step-0000002/training_state.ckpt", weights_only=True)
    base = instantiate(cfg.model).load_model("causal_lm")
    lam, s = cfg.variant.delta_lambda, cfg.variant.alpha / cfg.variant.r
    checked = 0
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        a_t, b_t = module.lora_A["default"].weight, module.lora_B["default"].weight
        a_k = state["state_dict"][f"model.{name}.lora_A.default.weight"]
        b_k = state["state_dict"][f"model.{name}.lora_B.default.weight"]
        w_0 = base.get_submodule(name.removeprefix("base_model.model.")).weight
        expected = w_0 + lam * s * (b_t @ a_t - b_k @ a_k)
        w_t = module.get_base_layer().weight
        assert not torch.equal(w_t, w_0)
        assert torch.allclose(w_t, expected, atol=1e-6), name
        checked += 1
    assert checked == 14
