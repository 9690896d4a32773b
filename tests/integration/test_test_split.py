"""The held-out test split: drawn disjoint from train and val (which stay as they were without it),
evaluated once after training on the best checkpoint by the monitored metric, not the last step,
reported in summary.json, the metrics file and loralab-compare, with the final weights put back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from loralab.data.builtin import BUILTIN_TASKS, generate
from loralab.data.datamodule import LoraDataModule
from loralab.data.schema import DataConfig
from loralab.errors import ConfigError, DataError
from loralab.train import train


@pytest.mark.parametrize("task", sorted(BUILTIN_TASKS))
def test_a_test_split_leaves_train_and_val_as_they_were(task):
    train, val = generate(task, 300, 50, seed=3)
    train2, val2, test = generate(task, 300, 50, seed=3, num_test=40)
    assert (train2, val2) == (train, val) and len(test) == 40
    if "prompt" in train[0]:  # the generative tasks: no test prompt was seen in train or val
        assert not {e["prompt"] for e in test} & {e["prompt"] for e in train + val}


def test_the_data_fingerprint_is_train_and_vals_and_the_test_split_has_its_own(tiny_tokenizer, tmp_path):
    plain = LoraDataModule(DataConfig(num_train=40, num_val=10), tiny_tokenizer)
    held = LoraDataModule(DataConfig(num_train=40, num_val=10, num_test=12), tiny_tokenizer)
    plain.setup(), held.setup()
    assert plain.fingerprint == held.fingerprint and plain.test_set is None
    assert len(held.test_set) == len(held.test_generation_set) == 12 and held.test_fingerprint


def _tiny(make_cfg, *extra: str, run: str = "run"):
    return make_cfg("trainer.max_steps=6", "trainer.val_check_interval=2", *extra, run=run)


def test_the_best_checkpoint_is_evaluated_not_the_last(make_cfg):
    """The monitor picks step 2 (mode=max on val/loss: the highest); the test figures are that
    checkpoint's, measured again here with plain peft; adapter/ and the returned model are the last
    step's."""
    from peft import PeftModel
    from safetensors.torch import load_file

    cfg = _tiny(make_cfg, "callbacks.adapter_checkpoint.mode=max", "callbacks.adapter_checkpoint.save_top_k=3")
    summary, objects = train(cfg)
    run = Path(cfg.paths.run_dir)
    assert summary["best_checkpoint"].endswith("step-0000002") and summary["last_checkpoint"].endswith("0006")
    assert summary["test_step"] == 2 and summary["test_checkpoint"] == summary["best_checkpoint"]
    assert set(summary["test"]) == {"test/loss", "test/ppl", "test/exact_match"}

    dm, module = objects["datamodule"], objects["module"]
    from hydra.utils import instantiate

    base = instantiate(cfg.model).load_model("causal_lm")
    best = PeftModel.from_pretrained(base, summary["best_checkpoint"]).eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            n = (batch["labels"][:, 1:] != -100).sum().item()
            total += best(**batch).loss.item() * n
            count += n
    assert total / count == pytest.approx(summary["test"]["test/loss"], rel=1e-5)

    # the final weights are back: the live model holds adapter/'s tensors, not the best checkpoint's
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    live = {k: v for k, v in module.model.state_dict().items() if "lora_" in k}
    key = next(k for k in saved if "lora_B" in k)
    live_key = next(
        k for k in live if k.endswith(key.split("base_model.model.", 1)[1].replace(".weight", ".default.weight"))
    )
    torch.testing.assert_close(live[live_key], saved[key])

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("test/loss") for r in rows)
    assert json.loads((run / "summary.json").read_text())["test"] == summary["test"]


def test_checkpoint_last_evaluates_the_final_weights(make_cfg):
    cfg = _tiny(make_cfg, "callbacks.adapter_checkpoint.mode=max", "callbacks.test_split.checkpoint=last")
    summary, _ = train(cfg)
    assert summary["test_checkpoint"] == "last" and summary["test_step"] == 6


def test_no_test_split_reports_none(make_cfg):
    summary, _ = train(_tiny(make_cfg, "data.num_test=0"))
    assert "test" not in summary


def test_compare_shows_the_test_figure_beside_val(make_cfg, tmp_path):
    from loralab.compare import compare

    train(_tiny(make_cfg, run="a"))
    train(_tiny(make_cfg, "data.num_test=0", run="b"))
    result = compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "cmp", plots=False, echo=False)
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "test/exact_match (test split)" in text
    header = next(csv.reader((tmp_path / "cmp" / "compare.csv").open()))
    assert "test/exact_match" in header and result["metric"] == "val/exact_match"


def test_a_test_file_that_is_the_training_file_is_refused(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(ConfigError, match="data.test_file is data.train_file"):
        DataConfig(source="local", train_file=str(data), test_file=str(data))
    with pytest.raises(ConfigError, match="data.num_test must be >= 0"):
        DataConfig(num_test=-1)


def test_a_test_file_copied_from_training_is_refused(tiny_tokenizer, tmp_path):
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    rows = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(20)]
    train_file.write_text("\n".join(rows) + "\n")
    test_file.write_text("\n".join(rows[:5]) + "\n")
    cfg = DataConfig(source="local", train_file=str(train_file), test_file=str(test_file), num_train=None, num_val=None)
    with pytest.raises(DataError, match="all 5 test examples also appear in the training or validation data"):
        LoraDataModule(cfg, tiny_tokenizer).setup()


def test_every_chosen_metric_is_scored_on_val_and_test_from_one_generation(make_cfg):
    names = ["exact_match", "normalized_exact_match", "token_f1"]
    summary, objects = train(_tiny(make_cfg, f"data.metrics=[{','.join(names)}]"))
    assert {f"val/{n}" for n in names} <= set(summary["after"])
    assert {f"test/{n}" for n in names} <= set(summary["test"])
    module, rows = objects["module"], objects["datamodule"].generation_set
    answers = module.generate_answers([r["prompt_ids"] for r in rows])
    # the references are the model's own answers, shouted: only the normalising metrics forgive it
    shouted = [{**row, "reference": answer.upper() + "!"} for row, answer in zip(rows, answers, strict=True)]
    assert module.answer_scores(shouted) == {"exact_match": 0.0, "normalized_exact_match": 1.0, "token_f1": 1.0}


def test_a_built_in_test_split_that_repeats_training_examples_is_counted(tiny_tokenizer, caplog):
    """topics' sentence space is small on purpose (it has no test split by default): one asked for
    repeats training examples, and the run says how many."""
    cfg = DataConfig(
        name="topics", builtin_task="topics", format="classification", num_train=500, num_val=20, num_test=20
    )
    dm = LoraDataModule(cfg, tiny_tokenizer)
    dm.setup()
    assert dm.test_in_train > 0 and dm.describe()["test_examples_in_train_or_val"] == dm.test_in_train
    assert "test examples also appear in the training or validation data" in caplog.text


def test_a_changed_test_file_is_tokenized_again(tiny_tokenizer, tmp_path):
    """The token cache keys the test split by its own rows: the same train and val files with another
    test file give the new test rows, not the cached ones."""
    import json as _json

    def rows(name: str, n: int, start: int) -> str:
        path = tmp_path / name
        path.write_text(
            "".join(_json.dumps({"prompt": f"Q{i}?", "completion": f"A{i}"}) + "\n" for i in range(start, start + n))
        )
        return str(path)

    train, val = rows("train.jsonl", 20, 0), rows("val.jsonl", 5, 100)
    sizes = []
    for n in (4, 7):
        cfg = DataConfig(
            name="local",
            source="local",
            builtin_task=None,
            train_file=train,
            val_file=val,
            test_file=rows("test.jsonl", n, 200),
            num_train=None,
            num_val=None,
        )
        dm = LoraDataModule(cfg, tiny_tokenizer, cache_dir=tmp_path / "cache")
        dm.setup()
        sizes.append(len(dm.test_set))
    assert sizes == [4, 7]
