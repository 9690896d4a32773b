"""Sequence to sequence, end to end: a tiny T5-style encoder-decoder (model=tiny_t5) fine-tuned with
LoRA on the built-in prompt -> completion task through `loralab-train`, as users run it. The task is
chosen from the model (data.task unset). Then, on its own: adapter/ in plain peft on the saved base
against merged/, and greedy answers that loralab scores are the answers plain transformers gives.
Every variant's run on an encoder-decoder is in test_architectures.py (t5 and bart families)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loralab.errors import ConfigError
from loralab.tasks import TASKS, choose_task
from loralab.tasks.base import Item

SEQ2SEQ = ["model=tiny_t5", "debug=fast", "logger=csv", "~callbacks.progress"]


def _loralab_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).with_name("loralab-train")
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run(
        [str(command), *overrides], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("seq2seq")
    run = tmp / "run"
    steps = ["trainer.max_steps=12", "trainer.val_check_interval=6", "optimizer.lr=1e-2"]
    proc = _loralab_train(tmp, *SEQ2SEQ, *steps, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_seq2seq_trains_through_loralab_train(seq2seq_run):
    run = seq2seq_run
    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads((run / "run_meta.json").read_text())
    assert summary["status"] == "completed" and summary["merge_passed"] is True
    assert meta["data"]["task"] == "seq2seq"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    # exact match is measured at every validation, on greedy answers
    assert sum(1 for r in rows if r.get("val/exact_match")) == len(losses) >= 2
    assert losses[-1] < losses[0]
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    report = json.loads((run / "merge_report.json").read_text())
    assert report["passed"] and not report["vacuous"]
    assert report["saved_adapter"]["missing_keys"] == report["saved_adapter"]["unexpected_keys"] == []


def test_seq2seq_adapter_round_trips_through_plain_peft(seq2seq_run):
    """adapter/ on the base it names, in plain peft, against merged/: the decoder's logits on the
    answers agree within the run's tolerance, and greedy generation writes the same answers."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run = seq2seq_run
    base_dir = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), run / "adapter").eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(run / "merged").eval()
    prompts = ["Convert to ISO: March 7, 1984", "Convert to ISO: 2 Jan 2001"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    answers = tokenizer(["1984-03-07", "2001-01-02"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        ref = merged(**batch, labels=answers).logits
        got = loaded(**batch, labels=answers).logits
        tol = json.loads((run / "merge_report.json").read_text())["tolerance_rel"]
        assert ((ref - got).abs().max() / ref.abs().max()).item() <= tol
        outs = [m.generate(**batch, max_new_tokens=8, do_sample=False) for m in (merged, loaded)]
    assert tokenizer.batch_decode(outs[0], skip_special_tokens=True) == tokenizer.batch_decode(
        outs[1], skip_special_tokens=True
    )


@pytest.mark.matrix  # a second check of what make test covers: make test-matrix
def test_exact_match_scores_the_answers_transformers_generates(make_cfg):
    """The answers loralab compares with the references are the decoder's greedy output, prompt not
    included: set as references, they score 1.0; one changed, 1 - 1/n."""
    from loralab.train import train

    cfg = make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2", base=SEQ2SEQ)
    _, objects = train(cfg)
    module, rows = objects["module"], objects["datamodule"].generation_set
    assert rows
    model = module.model.eval()
    answers = module.generate_answers([r["prompt_ids"] for r in rows])
    for row, answer in zip(rows, answers, strict=True):
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([row["prompt_ids"]]), max_new_tokens=module.max_new_tokens, do_sample=False
            )
        assert module.tokenizer.decode(out[0], skip_special_tokens=True).strip() == answer
    # greedy, whatever the checkpoint's generation_config asks for (transformers fills unset settings from it)
    defaults = model.get_base_model().generation_config
    defaults.num_beams, defaults.min_length, defaults.no_repeat_ngram_size, defaults.repetition_penalty = 4, 6, 1, 3.0
    assert module.generate_answers([r["prompt_ids"] for r in rows]) == answers
    mine = [{**row, "reference": answer} for row, answer in zip(rows, answers, strict=True)]
    assert module.exact_match(mine) == 1.0
    mine[0]["reference"] += "x"
    assert module.exact_match(mine) == pytest.approx(1 - 1 / len(mine))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            [*SEQ2SEQ, "data.task=causal_lm"],
            "model tiny_t5 is an encoder-decoder: it cannot train as data.task=causal_lm",
        ),
        (["model=tiny", "data.task=seq2seq"], "model tiny is not an encoder-decoder"),
        (
            [*SEQ2SEQ, "data=topics", "data.task=seq2seq"],
            "data.task=seq2seq cannot train on data.format=classification",
        ),
        ([*SEQ2SEQ, "data.task=seq2sq"], "unknown task 'seq2sq'"),
    ],
    ids=["causal-on-t5", "seq2seq-on-decoder", "seq2seq-on-labels", "typo"],
)
def test_a_task_the_model_or_data_cannot_do_is_refused_in_one_line(tmp_path, overrides, message):
    """Refused before Hydra writes anything, before torch loads: one line, exit 2."""
    run = tmp_path / "run"
    proc = _loralab_train(tmp_path, *overrides, f"hydra.run.dir={run}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not run.exists()


def test_the_task_is_chosen_from_the_format_and_the_model():
    assert choose_task(None, "prompt_completion", True, "m").name == "seq2seq"
    assert choose_task(None, "chat", False, "m").name == "causal_lm"
    assert choose_task(None, "classification", True, "m").name == "seq_cls"
    assert choose_task("seq_cls", "classification", False, "m").name == "seq_cls"
    with pytest.raises(ConfigError, match="data.task=causal_lm cannot train on data.format=classification"):
        choose_task("causal_lm", "classification", False, "m")
    # every task names the formats it reads, its peft task type and its model class
    assert {t.peft_type for t in TASKS.values()} == {"CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM"}


def test_classification_on_an_encoder_decoder_ends_every_text_with_eos(tiny_tokenizer):
    """BART and T5 classify from the state at the text's end token: every text ends with one,
    a truncated text too; on a decoder or encoder the text stays as the tokenizer gives it."""
    eos, labels = tiny_tokenizer.eos_token_id, {"x": 0}
    task = choose_task(None, "classification", True, "m")
    short = task.encode(tiny_tokenizer, Item(text="a short text", label="x"), 64, labels)
    long = task.encode(tiny_tokenizer, Item(text="word " * 100, label="x"), 16, labels)
    assert short["input_ids"] == [*tiny_tokenizer("a short text")["input_ids"], eos] and not short["truncated"]
    assert long["input_ids"][-1] == eos and len(long["input_ids"]) == 16 and long["truncated"]
    decoder = choose_task(None, "classification", False, "m")
    plain = decoder.encode(tiny_tokenizer, Item(text="a short text", label="x"), 64, labels)
    assert plain["input_ids"] == tiny_tokenizer("a short text")["input_ids"]
    assert task.cache_key != decoder.cache_key  # the token cache tells the two encodings apart
