"""cache_before: the untrained model's figures (validation before training, forgetting's ce_before)
are read from an earlier run only where the adapter adds exactly zero at init, and are then the
figures a run measuring them again gets, bit for bit; the run trains the same adapter (as does one
without the validation before training)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from loralab.before_cache import BeforeCache, adds_nothing, inputs_digest, weights_digest
from loralab.rundir import METRICS_CSV, SUMMARY_FILE
from tests.conftest import tiny_llama, train_process


def summary(run_dir):
    return json.loads((run_dir / SUMMARY_FILE).read_text())


def test_a_second_run_reads_what_the_first_measured_and_trains_the_same(tiny_runs, tmp_path):
    # the session's tiny runs share a cache: "a" (seed 1) measured, then "b" (seed 2, r=4: other
    # A matrices, but B = 0, so the same function before training) read
    first, read = tiny_runs["a"], tiny_runs["b"]
    measured = train_process(tmp_path, "c", "seed=2", "variant.r=4", "cache_before=false")
    skipped = train_process(tmp_path, "d", "seed=2", "variant.r=4", "validate_before=false")
    a, b, c, d = summary(first), summary(read), summary(measured), summary(skipped)
    assert "before_cached" not in a and "before_cached" not in c
    assert b["before_cached"] == {"validate": str(first)}
    assert b["forgetting"]["ce_before_cached_from"] == str(first)
    assert "ce_before_cached_from" not in c["forgetting"]
    # what a run measuring again gets, bit for bit; and the validations' curve starts with it
    assert b["before"] == c["before"] == a["before"] and b["before"]["val/loss"] > 0
    assert b["validations"][0] == c["validations"][0] == {"step": 0, **c["before"]}
    assert b["forgetting"]["forgetting/ce_before"] == c["forgetting"]["forgetting/ce_before"]
    assert b["forgetting"]["tokens"] == c["forgetting"]["tokens"] > 0
    # the validation before training, read, measured or skipped, leaves the training's random
    # stream alone (a DataLoader draws its seed from it): the same training, the same adapter
    assert b["adapter_sha256"] == c["adapter_sha256"] == d["adapter_sha256"] and b["after"] == c["after"]
    # the loggers get the figures at step 0 as from a validation
    with open(read / METRICS_CSV) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    assert float(rows[0]["val/loss"]) == b["before"]["val/loss"] and int(rows[0]["step"]) == 0
    assert "kept from an identical model" in (read / "train.log").read_text()


def _peft(config, model=None):
    from peft import get_peft_model

    return get_peft_model(model or tiny_llama(), config)


def test_only_adapters_that_add_exactly_zero_are_cached():
    from peft import LoraConfig, VeraConfig

    ids = torch.randint(0, 300, (2, 9))
    cases = {
        "lora": (LoraConfig(r=4, target_modules="all-linear"), True),
        "lora gaussian": (LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="gaussian"), True),
        "vera": (VeraConfig(r=4, target_modules=["q_proj", "v_proj"]), True),
        "dora": (LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), False),
        "pissa": (LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"), False),
        "new head": (LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), False),
    }
    for name, (config, expected) in cases.items():
        model = _peft(config).eval()
        assert adds_nothing(model) is expected, name
        with torch.no_grad():
            out = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
        if expected:  # the claim the cache rests on: the base's own output, bit for bit
            assert torch.equal(out, base), name
    model = _peft(LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = 1e-3
    assert not adds_nothing(model)  # a trained B: measured
    assert not adds_nothing(tiny_llama())  # no adapter at all: nothing to reason about


def test_the_key_is_the_base_weights_not_the_adapters():
    from peft import LoraConfig

    torch.manual_seed(1)
    one = _peft(LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(2)
    other = _peft(LoraConfig(r=8, target_modules=["q_proj"]))  # the same base: another adapter
    assert weights_digest(one) == weights_digest(other)
    with torch.no_grad():
        one.get_base_model().model.layers[1].mlp.down_proj.weight[3, 5] += 1e-6
    assert weights_digest(one) != weights_digest(other)  # one base element changed: another key


def test_the_cache_keeps_figures_by_inputs_and_tolerates_damage(tmp_path):
    from peft import LoraConfig

    model = _peft(LoraConfig(r=4, target_modules=["q_proj"]))
    cache = BeforeCache.for_model(model, tmp_path, "32-true", "cpu", run_dir="/runs/a")
    assert cache is not None
    inputs = inputs_digest("causal_lm", [torch.arange(6)], 8)
    assert cache.get("validate", inputs) is None
    cache.put("validate", inputs, {"val/loss": 1.5})
    assert cache.get("validate", inputs)["figures"] == {"val/loss": 1.5}
    assert cache.get("validate", inputs)["measured_by"] == "/runs/a"
    assert cache.get("validate", inputs_digest("causal_lm", [torch.arange(7)], 8)) is None  # other data
    assert cache.get("forgetting", inputs) is None  # another kind of figure
    bf16 = BeforeCache.for_model(model, tmp_path, "bf16-mixed", "cpu")
    assert bf16.get("validate", inputs) is None  # another precision
    for path in (tmp_path / "before").iterdir():
        path.write_text("{not json")  # a damaged file: measured again, not a failure
    assert cache.get("validate", inputs) is None


@pytest.mark.matrix  # two more runs; which adapters are read is checked above: make test-matrix
@pytest.mark.parametrize("variant", ["dora"])
def test_a_variant_that_changes_the_model_at_init_measures_every_time(tmp_path, variant):
    train_process(tmp_path, "a", f"variant={variant}")
    again = train_process(tmp_path, "b", f"variant={variant}", "seed=3")
    s = summary(again)
    assert "before_cached" not in s and "ce_before_cached_from" not in s["forgetting"]
    assert not (tmp_path / "cache" / "before").exists() or not any((tmp_path / "cache" / "before").iterdir())
