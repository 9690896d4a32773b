"""The catalogue of bad inputs: what a user gets wrong, what loralab answers (exit code and the
exact last line of stderr), and a way to make each one. tests/integration/test_bad_inputs.py runs
every case; docs/bad-inputs.md is this catalogue as a table, written by

    .venv/bin/python -m tests.integration.bad_inputs > docs/bad-inputs.md

and a test checks that the file matches. In messages, {tmp} stands for the case's directory."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE = ["model=tiny", "debug=fast", "logger=csv", "~callbacks.progress"]
SECRET = "hf_" + "Q7x" * 12  # the shape of a Hugging Face token


@dataclass
class Case:
    name: str
    area: str  # config, data, model, resume, CLI, rerun, compare
    command: str  # loralab-train, loralab-rerun, loralab-compare
    args: list[str]
    message: str  # the exact last line of stderr; {tmp} is the case's directory
    code: int = 2
    setup: Callable[[Path, dict[str, Path]], None] | None = None
    # refused before Hydra makes a run directory: nothing at all is written
    writes_nothing: bool = True
    needs: list[str] = field(default_factory=list)  # finished runs copied into {tmp} first (see conftest)
    cpu_only: bool = False  # the refusal is for machines without CUDA


# ---- what the setups write ---------------------------------------------------------------------
def jsonl(name: str, rows: list) -> Callable[[Path, dict], None]:
    def write(tmp: Path, runs: dict) -> None:
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    return write


def raw(name: str, data: bytes) -> Callable[[Path, dict], None]:
    def write(tmp: Path, runs: dict) -> None:
        (tmp / name).write_bytes(data)

    return write


QA = [{"prompt": f"Q{i}?", "completion": f"A{i}"} for i in range(8)]
TOPICS = [{"text": f"text {i}", "label": ["sports", "science"][i % 2]} for i in range(8)]


def _malformed(tmp: Path, runs: dict) -> None:
    lines = [json.dumps(r) for r in QA]
    lines[6] = '{"prompt": "Q6?" "completion": "A6"}'
    (tmp / "qa.jsonl").write_text("\n".join(lines) + "\n")


def _latin1(tmp: Path, runs: dict) -> None:
    lines = [json.dumps(r).encode() for r in QA]
    lines[2] = '{"prompt": "Caf\u00e9?", "completion": "yes"}'.encode("latin-1")
    (tmp / "qa.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def _model_dir(tmp: Path, pad: bool, eos: bool, safetensors: bool) -> None:
    """A tiny Llama in transformers' layout, its tokenizer with or without pad / eos tokens, its
    weights as safetensors or as a pickled pytorch_model.bin."""
    import torch

    from loralab.models import FromConfig
    from tests.conftest import TINY_CONFIG

    out = tmp / "model"
    model = FromConfig(dict(TINY_CONFIG), name="tiny").load_model("causal_lm")
    model.config.save_pretrained(out)
    if safetensors:
        model.save_pretrained(out)
    else:
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    tokenizer = FromConfig({"model_type": "llama"}).load_tokenizer()
    if not pad:
        tokenizer.pad_token = None
    if not eos:
        tokenizer.eos_token = None
    tokenizer.save_pretrained(out)


def _custom_code(tmp: Path, runs: dict) -> None:
    """A model directory whose config names code of its own; importing that code leaves a mark."""
    out = tmp / "model"
    out.mkdir()
    (out / "config.json").write_text(
        json.dumps({"model_type": "custom_llama", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}})
    )
    (out / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp / 'code-ran')!r}).touch()\n"
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
    )


def _flip_bit(tmp: Path, runs: dict) -> None:
    ckpt = sorted((tmp / "a" / "checkpoints").glob("step-*"))[-1]
    data = bytearray((ckpt / "adapter_model.safetensors").read_bytes())
    data[-3] ^= 0x01
    (ckpt / "adapter_model.safetensors").write_bytes(bytes(data))


def _newer_format(tmp: Path, runs: dict) -> None:
    meta = json.loads((tmp / "a" / "run_meta.json").read_text())
    (tmp / "a" / "run_meta.json").write_text(json.dumps({**meta, "format_version": 99}))


def _older_format(tmp: Path, runs: dict) -> None:
    (tmp / "old").mkdir()
    (tmp / "old" / "run_meta.json").write_text(json.dumps({"overrides": ["variant.r=4"]}))


def _failed_original(tmp: Path, runs: dict) -> None:
    summary = json.loads((tmp / "a" / "summary.json").read_text())
    (tmp / "a" / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "x"}))


# ---- the catalogue -----------------------------------------------------------------------------
T, R, C = "loralab-train", "loralab-rerun", "loralab-compare"
CASES: list[Case] = [
    # config values: refused in about a second, before Hydra makes the run directory
    Case(
        "rank below one",
        "config",
        T,
        ["variant.r=0"],
        "loralab: error: variant.r must be an integer >= 1, got 0: set e.g. variant.r=8",
    ),
    Case(
        "alpha not positive",
        "config",
        T,
        ["variant.alpha=0"],
        "loralab: error: variant.alpha must be > 0, got 0.0: set e.g. variant.alpha=16",
    ),
    Case(
        "dropout out of range",
        "config",
        T,
        ["variant.dropout=1.5"],
        "loralab: error: variant.dropout must be in [0, 1), got 1.5: set e.g. variant.dropout=0.05",
    ),
    Case(
        "unknown variant",
        "config",
        T,
        ["variant=lorra"],
        "loralab: error: In 'train': Could not find 'variant/lorra'; Available options in 'variant': delta_lora, dora, lora, lora_drop, lora_fa, loraplus, pissa, rslora, vera",
    ),
    Case(
        "unknown key",
        "config",
        T,
        ["variant.rank=4"],
        "loralab: error: Could not override 'variant.rank'; To append to your config use +variant.rank=4; Key 'rank' not in 'LoraVariantConfig'",
    ),
    Case(
        "value of the wrong type",
        "config",
        T,
        ["variant.r=abc"],
        "loralab: error: Error merging override variant.r=abc; Value 'abc' of type 'str' could not be converted to Integer",
    ),
    Case(
        "invalid target regex",
        "config",
        T,
        ["variant.target_modules='.*(q_proj'"],
        "loralab: error: variant.target_modules='.*(q_proj' is not a valid regex (missing ), unterminated subpattern at position 2): fix the pattern",
    ),
    Case(
        "LoRA-FA optimizer with DoRA",
        "config",
        T,
        ["variant=dora", "optimizer=lorafa"],
        "loralab: error: optimizer=lorafa trains B with A frozen and pairs each lora_A with its lora_B; it does not fit variant=dora: use variant=lora_fa, or optimizer=adamw",
    ),
    Case(
        "Delta-LoRA with dropout",
        "config",
        T,
        ["variant=delta_lora", "variant.dropout=0.1"],
        "loralab: error: Delta-LoRA needs the LoRA branch without dropout (its W update assumes it): set variant.dropout=0 (got 0.1)",
    ),
    Case(
        "precision as a number",
        "config",
        T,
        ["precision=32"],
        "loralab: error: Config group override must be a string or a list. Got int: a config group takes an option name (for precision: 32-true, bf16-mixed, 16-mixed)",
    ),
    Case(
        "fp16 on CPU",
        "config",
        T,
        ["precision=16-mixed"],
        "loralab: error: trainer.precision=16-mixed needs a GPU (fp16 with loss scaling): on CPU use precision=bf16-mixed or precision=32-true",
        cpu_only=True,
    ),
    Case(
        "GPU trainer without CUDA",
        "config",
        T,
        ["trainer=gpu"],
        "loralab: error: trainer.accelerator=gpu needs a CUDA GPU and this machine has none (torch sees no CUDA device): use trainer=cpu, or trainer=ddp_cpu for several CPU processes",
        cpu_only=True,
    ),
    Case(
        "k-bit base without CUDA",
        "config",
        T,
        ["model/quantization=nf4"],
        "loralab: error: model.quantization needs a CUDA GPU (bitsandbytes k-bit bases): this machine has none; drop model/quantization or run with trainer=gpu on a GPU machine",
        cpu_only=True,
    ),
    Case(
        "no CPU processes",
        "config",
        T,
        ["trainer=ddp_cpu", "trainer.devices=0"],
        "loralab: error: trainer.devices must be a number of processes >= 1 on CPU, got 0",
    ),
    Case(
        "several nodes without a cluster",
        "config",
        T,
        ["trainer.num_nodes=2"],
        "loralab: error: trainer.num_nodes=2 needs a multi-node launch: run under SLURM (srun, or hydra/launcher=slurm with nodes set), or start the same command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set (or torchrun --nnodes)",
    ),
    Case(
        "FSDP on CPU",
        "config",
        T,
        ["trainer=fsdp", "trainer.accelerator=cpu", "precision=32-true"],
        "loralab: error: trainer.strategy FSDPStrategy runs on CUDA GPUs only: on CPU use trainer=ddp_cpu",
    ),
    Case(
        "quantization bits",
        "config",
        T,
        ["model/quantization=nf4", "model.quantization.bits=3"],
        "loralab: error: model.quantization.bits must be 4 or 8, got 3: use model/quantization=nf4 or =int8",
    ),
    Case(
        "unknown quantization preset",
        "config",
        T,
        ["model/quantization=int4"],
        "loralab: error: In 'train': Could not find 'model/quantization/int4'; Available options in 'model/quantization': fp4, int8, nf4",
    ),
    Case(
        "required value missing",
        "config",
        T,
        ["model=hub"],
        "loralab: error: model.name_or_path is required and not set: pass model.name_or_path=...",
    ),
    Case(
        "hub data without an id",
        "config",
        T,
        ["data=hub"],
        "loralab: error: data.hub_id is not set: pass data.hub_id=org/dataset",
    ),
    Case(
        "resume with a path",
        "config",
        T,
        ["resume=last"],
        "loralab: error: resume must be auto or null, got 'last': use ckpt_path=... for a path",
    ),
    Case("seed not an integer", "config", T, ["seed=1.5"], "loralab: error: seed must be an integer, got 1.5"),
    Case(
        "missing model path",
        "model",
        T,
        ["model=hub", "model.name_or_path={tmp}/no-model"],
        "loralab: error: model path not found: {tmp}/no-model: pass an existing directory or a hub id (org/name) as model.name_or_path",
    ),
    Case(
        "missing data file",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/no.jsonl"],
        "loralab: error: data.train_file not found: {tmp}/no.jsonl: check the path",
    ),
    Case(
        "unsupported data file",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.txt"],
        "loralab: error: data.train_file {tmp}/qa.txt has an unsupported suffix: use one of ['.csv', '.json', '.jsonl', '.parquet']",
        setup=raw("qa.txt", b"Q? A\n"),
    ),
    Case(
        "secret on the command line",
        "CLI",
        T,
        [f"+model.token={SECRET}"],
        "loralab: error: the command line holds a secret (model.token=...); command lines are saved with the run: pass credentials through the environment instead (WANDB_API_KEY, HF_TOKEN)",
    ),
    # the model's module tree (no weights loaded yet): after Hydra starts, before data and weights
    Case(
        "target matches nothing",
        "config",
        T,
        ["variant.target_modules=[q_proj,nope_proj]"],
        "loralab: error: target module pattern 'nope_proj' matches no module in the model: fix variant.target_modules (list the model's modules with model.named_modules())",
        writes_nothing=False,
    ),
    Case(
        "modules_to_save matches nothing",
        "config",
        T,
        ["variant.modules_to_save=[headx]"],
        "loralab: error: modules_to_save entry 'headx' matches no module in the model: fix variant.modules_to_save",
        writes_nothing=False,
    ),
    Case(
        "VeRA on a non-linear layer",
        "config",
        T,
        ["variant=vera", "variant.target_modules=[q_proj,embed_tokens]"],
        "loralab: error: VeRA adapts linear layers only, but 'embed_tokens' selects model.embed_tokens (Embedding): remove it from variant.target_modules",
        writes_nothing=False,
    ),
    # data: read and checked before the model's weights load
    Case(
        "malformed JSONL line",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl line 7 is not valid JSON (Expecting ',' delimiter at column 18): fix or remove that line",
        setup=_malformed,
        writes_nothing=False,
    ),
    Case(
        "text that is not UTF-8",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl line 3 is not UTF-8 text (byte 0xe9 at column 16): save the file as UTF-8",
        setup=_latin1,
        writes_nothing=False,
    ),
    Case(
        "a line that is not an object",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        'loralab: error: {tmp}/qa.jsonl line 4 is a list, not an object: each example must be {"column": value, ...}',
        setup=jsonl("qa.jsonl", [*QA[:3], ["Q?", "A"], *QA[3:]]),
        writes_nothing=False,
    ),
    Case(
        "mixed label types",
        "data",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: {tmp}/topics.jsonl: column 'label' is a string on line 1 but a number on line 5: write every label the same way (all strings, e.g. \"1\", or all numbers)",
        setup=jsonl("topics.jsonl", [*TOPICS[:4], {"text": "t", "label": 1}, *TOPICS[4:]]),
        writes_nothing=False,
    ),
    Case(
        "labels missing from the label set",
        "data",
        T,
        [
            "data=local",
            "data.format=classification",
            "data.train_file={tmp}/topics.jsonl",
            "data.labels=[sports,science]",
        ],
        "loralab: error: train labels ['politics'] are not in the label set ['sports', 'science']: add them to data.labels or fix the data",
        setup=jsonl("topics.jsonl", [*TOPICS, {"text": "t", "label": "politics"}]),
        writes_nothing=False,
    ),
    Case(
        "a single label",
        "data",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: classification needs at least 2 labels, found ['sports'] in column 'label': check the data, or data.label_column",
        setup=jsonl("topics.jsonl", [{"text": f"t{i}", "label": "sports"} for i in range(8)]),
        writes_nothing=False,
    ),
    Case(
        "columns the format does not have",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: train data has columns ['question', 'answer'] but format prompt_completion needs ['prompt', 'completion']: rename them in the data or set data.<kind>_column (e.g. data.prompt_column=question)",
        setup=jsonl("qa.jsonl", [{"question": "q", "answer": "a"}] * 4),
        writes_nothing=False,
    ),
    Case(
        "empty data file",
        "data",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl holds no examples (it is empty): point the data config at the data",
        setup=raw("qa.jsonl", b""),
        writes_nothing=False,
    ),
    Case(
        "max length below every example",
        "data",
        T,
        ["data.max_length=4"],
        "loralab: error: all 64 training examples are longer than data.max_length=4 (the shortest is 45 tokens): raise data.max_length",
        writes_nothing=False,
    ),
    # models on disk
    Case(
        "tokenizer with neither pad nor eos token",
        "model",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: the tokenizer has neither a pad nor an eos token: use a tokenizer that defines one",
        setup=lambda tmp, runs: _model_dir(tmp, pad=False, eos=False, safetensors=True),
        writes_nothing=False,
    ),
    Case(
        "pickled weights only",
        "model",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: model '{tmp}/model' has no safetensors weights: loralab does not load pickled weights (pytorch_model.bin can run code when read); convert them to safetensors first",
        setup=lambda tmp, runs: _model_dir(tmp, pad=True, eos=True, safetensors=False),
        writes_nothing=False,
    ),
    Case(
        "model with code of its own",
        "model",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: model '{tmp}/model' comes with its own Python code (auto_map in its config.json), which loralab runs only when told: read that code, then set model.trust_remote_code=true",
        setup=_custom_code,
        writes_nothing=False,
    ),
    # resuming
    Case(
        "checkpoint path not found",
        "resume",
        T,
        ["ckpt_path={tmp}/nowhere"],
        "loralab: error: ckpt_path not found: {tmp}/nowhere: pass a checkpoint directory or its training_state.ckpt",
    ),
    Case(
        "damaged checkpoint",
        "resume",
        T,
        ["ckpt_path={tmp}/a/checkpoints/step-0000004"],
        "loralab: error: {tmp}/a/checkpoints/step-0000004/adapter_model.safetensors does not hold the tensors its checkpoint.json records: it is damaged",
        setup=_flip_bit,
        needs=["a"],
        writes_nothing=False,
    ),
    # loralab-rerun
    Case(
        "rerun of a missing directory",
        "rerun",
        R,
        ["{tmp}/nowhere"],
        "loralab-rerun: error: {tmp}/nowhere is not a directory: pass the run directory a training run wrote",
    ),
    Case(
        "rerun of a directory that is not a run",
        "rerun",
        R,
        ["{tmp}/empty"],
        "loralab-rerun: error: {tmp}/empty has no run_meta.json: pass the run directory a training run wrote (it holds run_meta.json)",
        setup=lambda t, r: (t / "empty").mkdir(),
    ),
    Case(
        "rerun of a run from an older loralab",
        "rerun",
        R,
        ["{tmp}/old"],
        "loralab-rerun: error: {tmp}/old was written by an older loralab (no saved resolved config): rerun it by hand with its overrides: loralab-train variant.r=4",
        setup=_older_format,
    ),
    Case(
        "rerun of a run from a newer loralab",
        "rerun",
        R,
        ["{tmp}/a"],
        "loralab-rerun: error: {tmp}/a was written by a newer loralab (format 99); upgrade loralab to rerun it",
        setup=_newer_format,
        needs=["a"],
    ),
    Case(
        "rerun override of an unknown key",
        "rerun",
        R,
        ["{tmp}/a", "variant.rank=3"],
        "loralab-rerun: error: override 'variant.rank=3': the saved config has no key 'variant.rank'",
        needs=["a"],
    ),
    Case(
        "rerun override with a bad value",
        "rerun",
        R,
        ["{tmp}/a", "variant.r=0"],
        "loralab-rerun: error: variant.r must be an integer >= 1, got 0: set e.g. variant.r=8",
        needs=["a"],
    ),
    Case(
        "rerun override of a config group",
        "rerun",
        R,
        ["{tmp}/a", "variant=vera"],
        "loralab-rerun: error: override 'variant=vera': variant is a config section; a rerun changes values (e.g. variant.<field>=...), not config groups: for another variant, run loralab-train variant=... with the original overrides",
        needs=["a"],
    ),
    Case(
        "malformed rerun override",
        "rerun",
        R,
        ["{tmp}/a", "variant.r=[1,"],
        "loralab-rerun: error: override 'variant.r=[1,' is not a valid value (while parsing a flow node): check its brackets and quotes, e.g. 'variant.target_modules=[q_proj,v_proj]'",
        needs=["a"],
    ),
    Case(
        "verify against a failed run",
        "rerun",
        R,
        ["{tmp}/a", "--verify"],
        "loralab-rerun: error: {tmp}/a did not complete (see its summary.json): there is nothing to verify against",
        setup=_failed_original,
        needs=["a"],
    ),
    Case(
        "secret in a rerun override",
        "CLI",
        R,
        ["{tmp}/a", f"+model.token={SECRET}"],
        "loralab-rerun: error: the command line holds a secret (model.token=...); command lines are saved with the run: pass credentials through the environment instead (WANDB_API_KEY, HF_TOKEN)",
        needs=["a"],
    ),
    # loralab-compare
    Case(
        "compare runs with different metrics",
        "compare",
        C,
        ["{tmp}/a", "{tmp}/topics"],
        "loralab-compare: error: the runs measured different metrics (a: val/exact_match, val/loss, val/ppl; topics: val/accuracy, val/loss, val/ppl): pass --metric with one they all have",
        needs=["a", "topics"],
    ),
    Case(
        "compare on a metric a run lacks",
        "compare",
        C,
        ["{tmp}/a", "--metric", "val/accuracy"],
        "loralab-compare: error: --metric val/accuracy was not measured by 1 run(s) (a); measured metrics: val/exact_match, val/loss, val/ppl",
        needs=["a"],
    ),
    Case(
        "filter that leaves no run",
        "compare",
        C,
        ["{tmp}/a", "--filter", "variant=vera"],
        "loralab-compare: error: no run is left after the filters variant=vera",
        needs=["a"],
    ),
    Case(
        "filter on an unknown key",
        "compare",
        C,
        ["{tmp}/a", "--filter", "rank=8"],
        "loralab-compare: error: --filter 'rank=8': no run has 'rank'; columns: run, status, variant, r, alpha, targets, seed, trainable, adapter_bytes, peak_mb, tokens_per_s, val_loss, metric, merge_err",
        needs=["a"],
    ),
    Case(
        "compare a missing path",
        "compare",
        C,
        ["{tmp}/missing"],
        "loralab-compare: error: {tmp}/missing is not a directory: pass run directories or sweep directories",
    ),
    Case(
        "compare a run from a newer loralab",
        "compare",
        C,
        ["{tmp}/a"],
        "loralab-compare: error: {tmp}/a was written by a newer loralab (format 99, this one reads 1): upgrade loralab to compare it",
        setup=_newer_format,
        needs=["a"],
    ),
]


# ---- running one -------------------------------------------------------------------------------
def prepare(case: Case, tmp: Path, runs: dict[str, Path]) -> None:
    """Make the case's inputs under `tmp`: copies of finished runs, then the bad file or change."""
    for name in case.needs:
        shutil.copytree(runs[name], tmp / name, symlinks=True)
    if case.setup is not None:
        case.setup(tmp, runs)


def run_case(case: Case, tmp: Path, monkeypatch) -> tuple[int, str]:
    """Run the case's command in this process, as its console script would: the exit code and
    everything written to stderr (log records included)."""
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    monkeypatch.setenv("LORALAB_CACHE", str(tmp.parent / f"{tmp.name}-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if case.command == T:
        from loralab.train import main

        monkeypatch.setattr(sys, "argv", [T, *BASE, f"hydra.run.dir={tmp / 'run'}", *args])
        call = main
    elif case.command == R:
        from loralab.rerun import main as rerun_main

        args = [*args, "--out", str(tmp / "rerun")]
        call = lambda: rerun_main(args)  # noqa: E731
    else:
        from loralab.compare import main as compare_main

        args = [*args, "--out", str(tmp / "report")]
        call = lambda: compare_main(args)  # noqa: E731
    return run_captured(call)


def run_captured(call: Callable[[], None]) -> tuple[int, str]:
    """A console script's main() in this process: its exit code, and its stderr with every log
    record (so a logged traceback shows as a subprocess's would)."""
    from hydra.core.global_hydra import GlobalHydra

    err = io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            call()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # what an interpreter would print before exiting 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        logging.getLogger().removeHandler(handler)
        GlobalHydra.instance().clear()
    return code, err.getvalue()


def last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


# ---- the table ---------------------------------------------------------------------------------
def render() -> str:
    head = [
        "# Bad inputs and what loralab answers",
        "",
        "Every row is a test (`tests/integration/test_bad_inputs.py`): it makes the bad input, runs the",
        "command, and checks the exit code, that the message below is stderr's last line, word for word,",
        "and that no file that existed before (data, earlier runs, checkpoints) changed. Rows marked",
        "*nothing written* are refused before Hydra makes a run directory; the others stop before the",
        "model's weights load (pickled weights: when they would load) and leave a new run directory",
        "holding `summary.json` (`failed`, with the message) and `train.log`. `{tmp}` stands for the",
        "directory the input lies in.",
        "",
        "`loralab-rerun` runs are given `--out {tmp}/rerun`, `loralab-compare` runs `--out {tmp}/report`.",
        "Regenerate this file with `.venv/bin/python -m tests.integration.bad_inputs > docs/bad-inputs.md`.",
        "",
        "| # | area | input | command | exit | message |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for i, case in enumerate(CASES, 1):
        args = " ".join(case.args).replace("|", "\\|")
        note = " (*nothing written*)" if case.writes_nothing else ""
        message = case.message.replace("|", "\\|")
        rows.append(f"| {i} | {case.area} | {case.name}{note} | `{case.command} {args}` | {case.code} | {message} |")
    return "\n".join([*head, *rows]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
