"""After the run: forgetting measured on the shipped general-text probe, loralab-eval,
loralab-generate (one prompt, and a chat through a pseudo-terminal) and loralab-export (merged in
another dtype, and GGUF read back by transformers), on a finished tiny run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loralab.forgetting import load_probe, probe_blocks
from tests.conftest import compose_config
from tests.wandb_records import records

BASE = ["model=tiny", "debug=fast", "logger=default", "~callbacks.progress"]


@pytest.fixture(scope="module")
def wb_run(tmp_path_factory):
    """A finished tiny run that logged to W&B (offline) and csv: (run directory, config, summary)."""
    from loralab.train import run

    tmp = tmp_path_factory.mktemp("after")
    cfg = compose_config([*BASE, "trainer.max_steps=40", "trainer.val_check_interval=20"], tmp / "run", tmp / "cache")
    summary = run(cfg)
    return tmp / "run", cfg, summary


def files(root: Path) -> dict[str, bytes]:
    """The run directory's files (not W&B's links to its service's own log, outside the run)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


def probe_ce(model, tokenizer, block: int = 256) -> float:
    """The mean next-token cross-entropy on the probe's blocks, computed here from the logits."""
    text, _ = load_probe("general_text")
    blocks = torch.tensor(probe_blocks(tokenizer, text, block))
    with torch.no_grad():
        logits = model(input_ids=blocks).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1)).item()


# ---- forgetting ----------------------------------------------------------------------------------
def test_the_probe_is_prose_in_equal_blocks_without_special_tokens(tiny_tokenizer):
    text, digest = load_probe("general_text")
    assert len(text.split()) > 2000 and len(digest) == 64
    blocks = probe_blocks(tiny_tokenizer, text, 128)
    assert len(blocks) > 10 and {len(b) for b in blocks} == {128}
    specials = set(tiny_tokenizer.all_special_ids)
    assert not specials & {t for b in blocks for t in b}


def test_forgetting_is_the_base_before_and_the_final_adapter_after(wb_run):
    """ce_before is the base's cross-entropy (the model loaded afresh, no adapter) and ce_after the
    base with adapter/ in plain peft, both computed here from logits; forgetting is their difference."""
    from hydra.utils import instantiate
    from peft import PeftModel

    run_dir, cfg, summary = wb_run
    found = summary["forgetting"]
    source = instantiate(cfg.model)
    tok = source.load_tokenizer()
    base = source.load_model("causal_lm").eval()
    before = probe_ce(base, tok, found["block_tokens"])
    tuned = PeftModel.from_pretrained(source.load_model("causal_lm"), str(run_dir / "adapter")).eval()
    after = probe_ce(tuned, tok, found["block_tokens"])
    # the same sums in another order: float32 rounding of a ~6-nat mean over thousands of tokens
    assert found["forgetting/ce_before"] == pytest.approx(before, rel=1e-4)
    assert found["forgetting/ce_after"] == pytest.approx(after, rel=1e-4)
    assert abs(after - before) > 1e-3  # training moved it: the two figures are different models
    assert found["forgetting/delta"] == pytest.approx(found["forgetting/ce_after"] - found["forgetting/ce_before"])
    assert found["tokens"] > 1000 and found["probe"] == "general_text"


def test_forgetting_goes_to_wandb_the_metrics_file_and_compare(wb_run, tmp_path):
    from loralab.compare import compare
    from tests.wandb_records import run_facts

    run_dir, _, summary = wb_run
    wb = run_facts(run_dir)["summary"]
    assert wb["final/forgetting/delta"] == pytest.approx(summary["forgetting"]["forgetting/delta"])
    # the cost figures beside it (issue 19): training time and the per-step memory peaks
    assert wb["final/train_seconds"] == pytest.approx(summary["train_seconds"])
    assert wb["final/memory/rss_mb/p99"] == pytest.approx(summary["memory"]["rss_mb"]["p99"])
    assert "forgetting/delta" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    compare([str(run_dir)], out=tmp_path, plots=False, echo=False)
    table = (tmp_path / "compare.md").read_text()
    assert "forgetting (CE delta)" in table and f"{summary['forgetting']['forgetting/delta']:.4g}" in table


def test_a_classification_run_says_why_forgetting_is_not_measured(tiny_runs):
    summary = json.loads((tiny_runs["topics"] / "summary.json").read_text())
    assert "forgetting" not in summary and "language-model head" in summary["forgetting_skipped"]


def test_a_resumed_run_keeps_the_bases_measure():
    from loralab.callbacks import Forgetting

    first = Forgetting(block_tokens=64)
    first.before, first.tokens = 5.5, 999
    later = Forgetting(block_tokens=64)
    later.load_state_dict(first.state_dict())
    assert (later.before, later.tokens) == (5.5, 999)
    other = Forgetting(probe=__file__, block_tokens=64)  # another probe: the measure does not carry over
    other.load_state_dict(first.state_dict())
    assert other.before is None


# ---- loralab-eval --------------------------------------------------------------------------------
def test_eval_repeats_the_runs_test_figures_and_writes_only_its_own_directory(wb_run):
    from loralab.commands.eval import evaluate_run

    run_dir, _, summary = wb_run
    assert summary["test_step"] == summary["global_step"]  # the best checkpoint is the last: adapter/
    before = {k: v for k, v in files(run_dir).items() if not k.startswith("eval/")}
    result = evaluate_run(run_dir, progress=False)
    for key, value in summary["test"].items():
        assert result["figures"][key] == pytest.approx(value, rel=1e-4), key
    out = run_dir / "eval" / "test"
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == result["examples"] == 8
    assert set(rows[0]) == {"prompt", "reference", "output", "correct"}
    mean = sum(r["correct"]["exact_match"] for r in rows) / len(rows)
    assert mean == pytest.approx(result["figures"]["test/exact_match"])
    after = files(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    assert json.loads((out / "eval.json").read_text())["figures"] == result["figures"]

    # the same run id in W&B, resumed (offline: under eval/test/wandb/, to sync)
    trained = next(run_dir.glob("wandb/offline-run-*")).name.rsplit("-", 1)[-1]
    assert result["wandb"]["run_id"] == trained
    found = {}
    for record in records(next(out.glob("wandb/offline-run-*/run-*.wandb"))):
        if record.WhichOneof("record_type") == "run":
            assert record.run.run_id == trained
        if record.WhichOneof("record_type") == "summary":
            found.update({i.key: json.loads(i.value_json) for i in record.summary.update})
    assert found["eval/test/test/loss"] == pytest.approx(result["figures"]["test/loss"])


def test_eval_of_the_merged_model_agrees_with_the_adapter(wb_run):
    from loralab.commands.eval import evaluate_run

    run_dir, _, _ = wb_run
    adapter = evaluate_run(run_dir, split="val", name="val-adapter", progress=False)
    merged = evaluate_run(run_dir, split="val", merged=True, name="val-merged", progress=False)
    assert merged["evaluated"] == "merged/"
    assert merged["figures"]["val/loss"] == pytest.approx(adapter["figures"]["val/loss"], rel=1e-3)


def test_eval_on_a_file_of_the_users(wb_run, tmp_path):
    from loralab.commands.eval import evaluate_run

    run_dir, _, _ = wb_run
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(5)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_run(
        run_dir,
        ["data=local", f"data.test_file={tmp_path / 'mine.jsonl'}", "data.metrics=[exact_match,token_f1]"],
        name="mine",
        progress=False,
    )
    assert result["examples"] == 5 and set(result["figures"]) >= {"test/exact_match", "test/token_f1"}
    lines = (run_dir / "eval/mine/generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["reference"] for line in lines] == [r["completion"] for r in rows]


def test_eval_of_a_classification_run_records_each_prediction(tiny_runs, tmp_path):
    from loralab.commands.eval import evaluate_run

    run_dir = tmp_path / "topics"
    shutil.copytree(tiny_runs["topics"], run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    result = evaluate_run(run_dir, split="val", progress=False)
    assert result["figures"]["val/accuracy"] == pytest.approx(summary["after"]["val/accuracy"])
    rows = [json.loads(line) for line in (run_dir / "eval/val/generations.jsonl").read_text().splitlines()]
    assert len(rows) == result["examples"]
    assert sum(r["correct"]["accuracy"] for r in rows) / len(rows) == pytest.approx(result["figures"]["val/accuracy"])


# ---- loralab-generate ----------------------------------------------------------------------------
def _generator(run_dir: Path):
    from loralab.commands.generate import Generator
    from loralab.finished import FinishedRun

    run = FinishedRun.open(run_dir, "test")
    model, tok = run.load()
    settings = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    return Generator(run, model, tok, settings, 400)


def _prompt() -> str:
    from loralab.data.builtin import generate

    return generate("dates", 1, 1, seed=123)[1][0]["prompt"]


def _test_row(run_dir: Path, cfg) -> tuple[str, str]:
    """(the first test prompt's text, the answer loralab-eval generated for it): what the run's
    test split holds, drawn again from its data config, and eval's greedy answer."""
    from loralab.commands.eval import evaluate_run
    from loralab.data.builtin import generate

    d = cfg.data
    prompt = generate(d.builtin_task, d.num_train, d.num_val, d.seed, d.num_test)[2][0]["prompt"]
    evaluate_run(run_dir, name="first", progress=False)
    first = json.loads((run_dir / "eval/first/generations.jsonl").read_text().splitlines()[0])
    assert (
        first["reference"] == generate(d.builtin_task, d.num_train, d.num_val, d.seed, d.num_test)[2][0]["completion"]
    )
    return prompt, first["output"]


def test_one_prompt_is_answered_as_evaluation_answers_it(wb_run):
    """The streamed answer to a test prompt typed as text is the answer loralab-eval generated for
    that test row (formatted by the data pipeline)."""
    run_dir, cfg, _ = wb_run
    prompt, expected = _test_row(run_dir, cfg)
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "loralab.commands.generate", str(run_dir), prompt, "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected and proc.stdout.strip() == expected


@pytest.mark.matrix  # the second architecture through loralab-generate: make test-matrix
def test_a_seq2seq_run_is_prompted_as_it_was_trained(tmp_path):
    """T5 read plain prompts in training (no chat template for prompt_completion data): generate
    answers a typed test prompt as eval answered that row, and keeps no history."""
    from loralab.train import train

    cfg = compose_config(
        ["model=tiny_t5", "debug=fast", "logger=csv", "~callbacks.progress", "trainer.max_steps=30"],
        tmp_path / "t5",
        tmp_path / "cache",
    )
    train(cfg)
    prompt, expected = _test_row(tmp_path / "t5", cfg)
    gen = _generator(tmp_path / "t5")
    assert not gen.keeps_history and expected
    assert gen.answer(prompt) == expected and gen.history == []


def test_a_chat_keeps_its_history_until_reset(wb_run):
    import io

    from loralab.commands.generate import chat

    gen = _generator(wb_run[0])
    first = len(gen.prompt_ids(_prompt()))
    out = io.StringIO()
    chat(gen, io.StringIO(f"{_prompt()}\n"), out)
    assert len(gen.history) == 2 and len(gen.prompt_ids(_prompt())) > first + 5  # the earlier turn is in it
    chat(gen, io.StringIO("/reset\n/what\n"), out)
    assert gen.history == [] and len(gen.prompt_ids(_prompt())) == first
    assert "(conversation forgotten)" in out.getvalue() and "unknown command /what" in out.getvalue()


def _read_until(fd: int, marker: bytes, timeout: float = 120.0) -> bytes:
    import select
    import time

    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {got[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_a_scripted_chat_through_a_pseudo_terminal(wb_run):
    """loralab-generate with no prompt, on a terminal: the greeting, a prompt answered (streamed)
    with the greedy answer, /reset, /quit, exit 0."""
    import pty

    run_dir, cfg, _ = wb_run
    prompt, expected = _test_row(run_dir, cfg)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loralab.commands.generate", str(run_dir), "--max-new-tokens", "16"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    os.close(slave)
    try:
        greeting = _read_until(master, b"> ")
        assert b"history kept" in greeting and b"/reset" in greeting
        os.write(master, prompt.encode() + b"\n")
        answer = _read_until(master, b"> ").decode().replace("\r\n", "\n")
        assert f"\n{expected}\n" in answer
        os.write(master, b"/reset\n")
        assert b"(conversation forgotten)" in _read_until(master, b"> ")
        os.write(master, b"/quit\n")
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        proc.kill()
        os.close(master)


# ---- loralab-export ------------------------------------------------------------------------------
def test_export_merged_in_half_precision(wb_run, tmp_path):
    from safetensors import safe_open

    from loralab.commands.export import export_run

    run_dir, _, _ = wb_run
    report, out = export_run(run_dir, "merged", "bf16", tmp_path / "m")
    assert report["passed"] and report["source"] == "merged/"
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    fp32 = (run_dir / "merged/model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.6 * fp32
    # the logit error is what rounding to bf16 costs, not more
    assert 0 < report["logits"]["max_rel_err"] <= report["logits"]["tolerance"]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_export_gguf_reads_back_in_transformers(wb_run, tmp_path, dtype):
    """Checked here again, apart from the report: the GGUF file alone (model and tokenizer) loaded
    by transformers gives merged/'s logits and tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralab.commands.export import export_run

    run_dir, _, _ = wb_run
    before = {k: v for k, v in files(run_dir).items() if not k.startswith("export/")}
    report, out = export_run(run_dir, "gguf", dtype)
    assert out == run_dir / "export" / f"gguf-{dtype}" and report["passed"], report
    assert {k: v for k, v in files(run_dir).items() if not k.startswith("export/")} == before
    name = report["gguf"]["path"]
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    ref_tok = (
        AutoTokenizer.from_pretrained(run_dir / "merged") if (run_dir / "merged/tokenizer.json").is_file() else None
    )
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([tok(_prompt())["input_ids"]])
    if ref_tok is not None:
        assert ref_tok(_prompt())["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        ref, got = merged(input_ids=ids).logits, model(input_ids=ids).logits
    rel = ((ref - got).abs().max() / ref.abs().max()).item()
    assert rel <= report["logits"]["tolerance"]
    if dtype == "f16":  # the file is half the float32 one's size
        assert report["bytes"] < 0.6 * (run_dir / "merged/model.safetensors").stat().st_size
