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
    area: str  # the class of mistake (CLASSES)
    command: str  # loralab-train, loralab-rerun, loralab-compare
    args: list[str]
    message: str  # the exact last line of stderr; {tmp} is the case's directory
    code: int = 2
    setup: Callable[[Path, dict[str, Path]], None] | None = None
    # refused before Hydra makes a run directory: nothing at all is written
    writes_nothing: bool = True
    needs: list[str] = field(default_factory=list)  # finished runs copied into {tmp} first (see conftest)
    cpu_only: bool = False  # the refusal is for machines without CUDA
    env: dict[str, str] = field(default_factory=dict)  # environment for the command ({tmp} substituted)
    run_dir: str = "run"  # loralab-train's hydra.run.dir, under {tmp}
    # a directory made read-only for the case (root writes into a directory without write permission,
    # so for root it is also made immutable)
    read_only: str | None = None
    # a signal sent while the run loads its data (the command then runs as a process of its own)
    interrupt: str | None = None
    status: str = "failed"  # summary.json's status, for a case that leaves a run directory
    matrix: bool = False  # a second case of a path another row covers: run by make test-matrix


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


def _family(family: str, task: str) -> Callable[[Path, dict], None]:
    """A tiny model of another family (tests/families.py) saved under {tmp}/<family>-<task>."""

    def write(tmp: Path, runs: dict) -> None:
        from tests.families import save_family

        save_family(family, task, tmp)

    return write


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


def _flip_adapter_bit(tmp: Path, runs: dict) -> None:
    path = tmp / "a" / "adapter" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate_adapter(tmp: Path, runs: dict) -> None:
    path = tmp / "a" / "adapter" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _interrupted(tmp: Path, runs: dict) -> None:
    """Run "a" as a SIGTERM would have left it: checkpoints, no final adapter, status interrupted."""
    import shutil as sh

    sh.rmtree(tmp / "a" / "adapter")
    sh.rmtree(tmp / "a" / "merged")
    summary = json.loads((tmp / "a" / "summary.json").read_text())
    (tmp / "a" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted", "error": "x"}))


def _no_adapter_weights(tmp: Path, runs: dict) -> None:
    for name in ("a", "topics"):
        if (tmp / name).is_dir():
            (tmp / name / "adapter" / "adapter_model.safetensors").unlink()


def _no_merged(tmp: Path, runs: dict) -> None:
    shutil.rmtree(tmp / "a" / "merged")


def _running(tmp: Path, runs: dict) -> None:
    (tmp / "a" / "summary.json").unlink()


def _dir_with_a_file(name: str) -> Callable[[Path, dict], None]:
    def write(tmp: Path, runs: dict) -> None:
        (tmp / name).mkdir()
        (tmp / name / "notes.txt").write_text("mine\n")

    return write


def _file(name: str) -> Callable[[Path, dict], None]:
    def write(tmp: Path, runs: dict) -> None:
        (tmp / name).write_text("not a directory\n")

    return write


def make_read_only(path: Path) -> bool:
    """Make `path` a directory nobody writes into, root included (immutable where the filesystem
    allows it); False where this process could still write there."""
    import os
    import subprocess

    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return not os.access(path, os.W_OK)


def undo_read_only(path: Path) -> None:
    import os
    import subprocess

    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def _copies(tmp: Path, runs: dict) -> None:
    jsonl("qa.jsonl", QA)(tmp, runs)
    jsonl("val.jsonl", QA[:3])(tmp, runs)


def _split_files(tmp: Path, runs: dict) -> None:
    jsonl("qa.jsonl", QA)(tmp, runs)
    (tmp / "data").mkdir()


CHAT = [
    {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}"}]} for i in range(8)
]
CSV_GAP = b"prompt,completion\nQ1?,A1\nQ2?,A2\nQ3?,\nQ4?,A4\n"


# ---- the catalogue -----------------------------------------------------------------------------
T, R, C = "loralab-train", "loralab-rerun", "loralab-compare"
E, G, X = "loralab-eval", "loralab-generate", "loralab-export"
CASES: list[Case] = [
    # ---- config values: ranges, finiteness, kinds; refused in about a second, nothing written ----
    Case(
        "rank below one",
        "config values",
        T,
        ["variant.r=0"],
        "loralab: error: variant.r must be an integer >= 1, got 0: set e.g. variant.r=8",
    ),
    Case(
        "alpha not positive",
        "config values",
        T,
        ["variant.alpha=0"],
        "loralab: error: variant.alpha must be a finite number > 0, got 0.0: set e.g. variant.alpha=16",
    ),
    Case(
        "alpha infinite",
        "config values",
        T,
        ["variant.alpha=inf"],
        "loralab: error: variant.alpha must be a finite number, got inf",
    ),
    Case(
        "alpha not a number",
        "config values",
        T,
        ["variant.alpha=nan"],
        "loralab: error: variant.alpha must be a finite number, got nan",
    ),
    Case(
        "dropout out of range",
        "config values",
        T,
        ["variant.dropout=1.5"],
        "loralab: error: variant.dropout must be in [0, 1), got 1.5: set e.g. variant.dropout=0.05",
    ),
    Case(
        "LoRA+ ratio infinite",
        "config values",
        T,
        ["variant=loraplus", "variant.lr_ratio=inf"],
        "loralab: error: variant.lr_ratio must be a finite number, got inf",
    ),
    Case(
        "VeRA projection seed negative",
        "config values",
        T,
        ["variant=vera", "variant.r=16", "variant.projection_prng_key=-1"],
        "loralab: error: variant.projection_prng_key must be an integer in [0, 4294967295], got -1: set e.g. variant.projection_prng_key=42",
    ),
    Case(
        "value of the wrong type",
        "config values",
        T,
        ["variant.r=abc"],
        "loralab: error: Error merging override variant.r=abc; Value 'abc' of type 'str' could not be converted to Integer",
    ),
    Case(
        "seed not an integer",
        "config values",
        T,
        ["seed=1.5"],
        "loralab: error: seed must be an integer in [0, 4294967295], got 1.5: set e.g. seed=42",
    ),
    Case(
        "seed negative",
        "config values",
        T,
        ["seed=-1"],
        "loralab: error: seed must be an integer in [0, 4294967295], got -1: set e.g. seed=42",
    ),
    Case(
        "seed above 32 bits",
        "config values",
        T,
        ["seed=4294967296"],
        "loralab: error: seed must be an integer in [0, 4294967295], got 4294967296: set e.g. seed=42",
    ),
    Case(
        "data seed negative",
        "config values",
        T,
        ["data.seed=-1"],
        "loralab: error: data.seed must be an integer in [0, 4294967295], got -1: set e.g. data.seed=42",
    ),
    Case(
        "model seed negative",
        "config values",
        T,
        ["model.seed=-1"],
        "loralab: error: model.seed must be an integer in [0, 4294967295], got -1: set e.g. model.seed=42",
    ),
    Case(
        "learning rate negative",
        "config values",
        T,
        ["optimizer.lr=-1"],
        "loralab: error: optimizer.lr must be a finite number > 0, got -1: set e.g. optimizer.lr=2e-4",
    ),
    Case(
        "learning rate zero",
        "config values",
        T,
        ["optimizer.lr=0"],
        "loralab: error: optimizer.lr must be a finite number > 0, got 0: set e.g. optimizer.lr=2e-4",
    ),
    Case(
        "weight decay negative",
        "config values",
        T,
        ["optimizer.weight_decay=-0.1"],
        "loralab: error: optimizer.weight_decay must be a finite number >= 0, got -0.1",
    ),
    Case(
        "betas out of range",
        "config values",
        T,
        ["optimizer.betas=[0.9,1.5]"],
        "loralab: error: optimizer.betas must be two numbers in [0, 1), got [0.9, 1.5]: set e.g. optimizer.betas=[0.9,0.999]",
    ),
    Case(
        "warm-up longer than the run",
        "config values",
        T,
        ["scheduler.warmup_ratio=1.5"],
        "loralab: error: scheduler.warmup_ratio must be in [0, 1), got 1.5: it is the share of the steps spent warming up",
    ),
    Case(
        "zero training steps",
        "config values",
        T,
        ["trainer.max_steps=0"],
        "loralab: error: trainer.max_steps must be an integer >= 1, got 0: set e.g. trainer.max_steps=40 (0 would save an untrained adapter)",
    ),
    Case(
        "unbounded steps without epochs",
        "config values",
        T,
        ["trainer.max_steps=-1"],
        "loralab: error: trainer.max_steps=-1 trains until trainer.max_epochs, which is not set: set trainer.max_steps=N or trainer.max_epochs=N",
    ),
    Case(
        "no gradient accumulation steps",
        "config values",
        T,
        ["trainer.accumulate_grad_batches=0"],
        "loralab: error: trainer.accumulate_grad_batches must be an integer >= 1, got 0: set trainer.accumulate_grad_batches=1 for no accumulation",
    ),
    Case(
        "validation interval zero",
        "config values",
        T,
        ["trainer.val_check_interval=0"],
        "loralab: error: trainer.val_check_interval must be a number of steps >= 1 or a fraction of an epoch in (0, 1], got 0: set e.g. trainer.val_check_interval=20",
    ),
    Case(
        "logging interval zero",
        "config values",
        T,
        ["trainer.log_every_n_steps=0"],
        "loralab: error: trainer.log_every_n_steps must be an integer >= 1, got 0: set e.g. trainer.log_every_n_steps=5",
    ),
    Case(
        "negative gradient clipping",
        "config values",
        T,
        ["trainer.gradient_clip_val=-1"],
        "loralab: error: trainer.gradient_clip_val must be a finite number >= 0 (or null: no clipping), got -1: set e.g. trainer.gradient_clip_val=1.0",
    ),
    Case(
        "unknown precision",
        "config values",
        T,
        ["trainer.precision=bf17"],
        "loralab: error: trainer.precision=bf17 is not a precision Lightning knows: use precision=auto, precision=32-true, precision=bf16-mixed or precision=16-mixed",
    ),
    Case(
        "pack length shorter than max length",
        "config values",
        T,
        ["data.packing=true", "data.pack_length=64"],
        "loralab: error: data.pack_length=64 is shorter than data.max_length=128: an example may not fit a row; set data.pack_length >= data.max_length (or null: data.max_length)",
    ),
    Case(
        "packing and grouping by length",
        "config values",
        T,
        ["data.packing=true", "data.group_by_length=true"],
        "loralab: error: data.packing and data.group_by_length are both set: packing already leaves no padding to group away; set data.group_by_length=false",
    ),
    Case(
        "packing a classification task",
        "config values",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl", "data.packing=true"],
        "loralab: error: data.packing packs causal LM examples; this run's task is seq_cls: set data.packing=false",
        setup=jsonl("topics.jsonl", TOPICS),
        writes_nothing=False,
    ),
    Case(
        "negative data workers",
        "config values",
        T,
        ["data.num_workers=-1"],
        "loralab: error: data.num_workers must be >= 0, got -1",
    ),
    Case(
        "max length zero",
        "config values",
        T,
        ["data.max_length=0"],
        "loralab: error: data.max_length must be >= 1, got 0",
    ),
    Case(
        "validation fraction of one",
        "config values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl", "data.val_fraction=1.0"],
        "loralab: error: data.val_fraction must be in (0, 1), got 1.0",
        setup=jsonl("qa.jsonl", QA),
    ),
    Case(
        "experiment name leaving outputs/",
        "config values",
        T,
        ["experiment_name=../../x"],
        "loralab: error: experiment_name='../../x' must be a plain directory name (letters, digits and _ . + = , @ -, not starting with a dot, no '/'): it names the run's directory under outputs/, e.g. experiment_name=my_study",
    ),
    Case(
        "experiment name hidden",
        "config values",
        T,
        ["experiment_name=.x"],
        "loralab: error: experiment_name='.x' must be a plain directory name (letters, digits and _ . + = , @ -, not starting with a dot, no '/'): it names the run's directory under outputs/, e.g. experiment_name=my_study",
    ),
    Case(
        "switch not a boolean",
        "config values",
        T,
        ["compute.labelled_head=maybe"],
        "loralab: error: compute.labelled_head must be true or false, got 'maybe': write compute.labelled_head=true or compute.labelled_head=false",
    ),
    Case(
        "switch as a number",
        "config values",
        T,
        ["validate_before=1"],
        "loralab: error: validate_before must be true or false, got 1: write validate_before=true or validate_before=false",
    ),
    Case(
        "auto switch misspelt",
        "config values",
        T,
        ["compute.shared_prefix_train=atuo"],
        "loralab: error: compute.shared_prefix_train must be true, false or auto, got 'atuo': write compute.shared_prefix_train=auto (on on the CPU, off on a GPU), compute.shared_prefix_train=true or compute.shared_prefix_train=false",
    ),
    Case(
        "tags not a list",
        "config values",
        T,
        ["tags=baseline"],
        "loralab: error: tags must be a list, got 'baseline': write tags=[baseline]",
    ),
    Case(
        "invalid target regex",
        "config values",
        T,
        ["variant.target_modules='.*(q_proj'"],
        "loralab: error: variant.target_modules='.*(q_proj' is not a valid regex (missing ), unterminated subpattern at position 2): fix the pattern",
    ),
    Case(
        "empty target list",
        "config values",
        T,
        ["variant.target_modules=[]"],
        "loralab: error: variant.target_modules must be a module name list, a regex or all-linear, got []: e.g. variant.target_modules=[q_proj,v_proj]",
    ),
    # ---- config choices: options, keys and combinations ----
    Case(
        "unknown variant",
        "config choices",
        T,
        ["variant=lorra"],
        "loralab: error: In 'train': Could not find 'variant/lorra'; Available options in 'variant': delta_lora, dora, lora, lora_drop, lora_fa, loraplus, pissa, rslora, vera",
    ),
    Case(
        "PiSSA with trained biases",
        "config choices",
        T,
        ["variant=pissa", "variant.bias=all"],
        "loralab: error: PiSSA with variant.bias=all: its saved adapter is converted by peft into a plain LoRA against the original base, which peft cannot do when biases train: set variant.bias=none, or train biases with variant=lora",
    ),
    Case(
        "unknown key",
        "config choices",
        T,
        ["variant.rank=4"],
        "loralab: error: Could not override 'variant.rank'; To append to your config use +variant.rank=4; Key 'rank' not in 'LoraVariantConfig'",
    ),
    Case(
        "unknown data option",
        "config choices",
        T,
        ["data=dates2"],
        "loralab: error: In 'train': Could not find 'data/dates2'; Available options in 'data': dates, hub, local, topics, word_sort",
    ),
    Case(
        "unknown task",
        "config choices",
        T,
        ["data.task=seq2sq"],
        "loralab: error: unknown task 'seq2sq': set data.task to one of ['causal_lm', 'seq2seq', 'seq_cls'] (or leave it unset)",
    ),
    Case(
        "causal LM task on an encoder-decoder",
        "config choices",
        T,
        ["model=tiny_t5", "data.task=causal_lm"],
        "loralab: error: model tiny_t5 is an encoder-decoder: it cannot train as data.task=causal_lm; set data.task=seq2seq, or leave data.task unset to choose from the model",
    ),
    Case(
        "seq2seq task on labelled data",
        "config choices",
        T,
        ["data=topics", "data.task=seq2seq"],
        "loralab: error: data.task=seq2seq cannot train on data.format=classification (it reads prompt_completion, chat): set data.task to one of ['seq_cls'], or leave data.task unset",
    ),
    Case(
        "LoRA-FA optimizer with DoRA",
        "config choices",
        T,
        ["variant=dora", "optimizer=lorafa"],
        "loralab: error: optimizer=lorafa trains B with A frozen and pairs each lora_A with its lora_B; it does not fit variant=dora: use variant=lora_fa, or optimizer=adamw",
    ),
    Case(
        "Delta-LoRA with dropout",
        "config choices",
        T,
        ["variant=delta_lora", "variant.dropout=0.1"],
        "loralab: error: Delta-LoRA needs the LoRA branch without dropout (its W update assumes it): set variant.dropout=0 (got 0.1)",
    ),
    Case(
        "Delta-LoRA on 16-bit weights",
        "config choices",
        T,
        ["variant=delta_lora", "model.dtype=bfloat16"],
        "loralab: error: Delta-LoRA adds a small λ·s·Δ(B·A) to W every step, which rounds away in a bfloat16 weight: set model.dtype=float32 (trainer.precision=bf16-mixed still computes in bf16)",
    ),
    Case(
        "PiSSA with its own init",
        "config choices",
        T,
        ["variant=pissa", "variant.init_lora_weights=gaussian"],
        "loralab: error: PiSSA sets its own initialisation: leave variant.init_lora_weights at true",
    ),
    Case(
        "VeRA without saved projections",
        "config choices",
        T,
        ["variant=vera", "variant.r=16", "variant.save_projection=false"],
        "loralab: error: variant.save_projection=false makes the adapter depend on a random generator reproducing the projections bit for bit elsewhere: keep variant.save_projection=true",
    ),
    Case(
        "precision as a number",
        "config choices",
        T,
        ["precision=32"],
        "loralab: error: Config group override must be a string or a list. Got int: a config group takes an option name (for precision: 32-true, bf16-mixed, 16-mixed)",
    ),
    Case(
        "fp16 on CPU",
        "config choices",
        T,
        ["precision=16-mixed"],
        "loralab: error: trainer.precision=16-mixed needs a GPU (fp16 with loss scaling): on CPU use precision=bf16-mixed or precision=32-true",
        cpu_only=True,
    ),
    Case(
        "GPU trainer without CUDA",
        "config choices",
        T,
        ["trainer=gpu"],
        "loralab: error: trainer.accelerator=gpu needs a CUDA GPU and this machine has none (torch sees no CUDA device): use trainer=cpu, or trainer=ddp_cpu for several CPU processes",
        cpu_only=True,
    ),
    Case(
        "k-bit base without CUDA",
        "config choices",
        T,
        ["model/quantization=nf4"],
        "loralab: error: model.quantization needs a CUDA GPU (bitsandbytes k-bit bases): this machine has none; drop model/quantization or run with trainer=gpu on a GPU machine",
        cpu_only=True,
    ),
    Case(
        "no CPU processes",
        "config choices",
        T,
        ["trainer=ddp_cpu", "trainer.devices=0"],
        "loralab: error: trainer.devices must be a number of processes >= 1 on CPU, got 0",
    ),
    Case(
        "several nodes without a cluster",
        "config choices",
        T,
        ["trainer.num_nodes=2"],
        "loralab: error: trainer.num_nodes=2 needs a multi-node launch: run under SLURM (srun, or hydra/launcher=slurm with nodes set), or start the same command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set (or torchrun --nnodes)",
    ),
    Case(
        "FSDP on CPU",
        "config choices",
        T,
        ["trainer=fsdp", "trainer.accelerator=cpu", "precision=32-true"],
        "loralab: error: trainer.strategy FSDPStrategy runs on CUDA GPUs only: on CPU use trainer=ddp_cpu",
    ),
    Case(
        "quantization bits",
        "config choices",
        T,
        ["model/quantization=nf4", "model.quantization.bits=3"],
        "loralab: error: model.quantization.bits must be 4 or 8, got 3: use model/quantization=nf4 or =int8",
    ),
    Case(
        "unknown quantization preset",
        "config choices",
        T,
        ["model/quantization=int4"],
        "loralab: error: In 'train': Could not find 'model/quantization/int4'; Available options in 'model/quantization': fp4, int8, nf4",
    ),
    Case(
        "required value missing",
        "config choices",
        T,
        ["model=hub"],
        "loralab: error: model.name_or_path is required and not set: pass model.name_or_path=...",
    ),
    Case(
        "hub data without an id",
        "config choices",
        T,
        ["data=hub"],
        "loralab: error: data.hub_id is not set: pass data.hub_id=org/dataset",
    ),
    Case(
        "hub validation split is the training split",
        "config choices",
        T,
        ["data=hub", "data.hub_id=org/set", "data.val_split=train"],
        "loralab: error: data.val_split is the training split ('train'): validating on the training data measures memorisation; pass another split, or leave data.val_split unset to hold out data.val_fraction of the training split",
    ),
    Case(
        "hub test split is the validation split",
        "config choices",
        T,
        ["data=hub", "data.hub_id=org/set", "data.val_split=validation", "data.test_split=validation"],
        "loralab: error: data.test_split is data.val_split ('validation'): a test split must be held out from training and from model selection; pass another split",
    ),
    Case(
        "unknown metric",
        "config values",
        T,
        ["data.metrics=[exact_macth]"],
        "loralab: error: unknown metric 'exact_macth': data.metrics takes ['exact_match', 'normalized_exact_match', 'token_f1'] or a function's import path (package.module.function)",
    ),
    Case(
        "answer pattern that is not a regular expression",
        "config values",
        T,
        ["data.answer_regex='#### ('"],
        "loralab: error: data.answer_regex '#### (' is not a regular expression (missing ), unterminated subpattern at position 5): fix it",
    ),
    Case(
        "negative test split size",
        "config values",
        T,
        ["data.num_test=-5"],
        "loralab: error: data.num_test must be >= 0 (0: no test split), got -5",
    ),
    Case(
        "resume with a path",
        "config choices",
        T,
        ["resume=last"],
        "loralab: error: resume must be auto or null, got 'last': use ckpt_path=... for a path",
    ),
    Case(
        "resume=auto and a checkpoint path",
        "config choices",
        T,
        ["resume=auto", "ckpt_path={tmp}/a/checkpoints/step-0000004"],
        "loralab: error: resume=auto and ckpt_path both say where to continue from: pass one (resume=auto: the newest checkpoint of this run directory; ckpt_path: that checkpoint)",
        needs=["a"],
    ),
    # ---- the command line ----
    Case(
        "secret on the command line",
        "command line",
        T,
        [f"+model.token={SECRET}"],
        "loralab: error: the command line holds a secret (model.token=...); command lines are saved with the run: pass credentials through the environment instead (WANDB_API_KEY, HF_TOKEN)",
    ),
    Case(
        "unquoted emoji",
        "command line",
        T,
        ["tags=[🚀]"],
        "loralab: error: cannot parse the override 'tags=[🚀]': its value holds characters that Hydra accepts only in quotes: quote the value, e.g. \"tags='...'\" (a list: \"tags=['...']\")",
    ),
    Case(
        "one value where a list goes",
        "command line",
        T,
        ["data.metrics=token_f1"],
        "loralab: error: Error merging override data.metrics=token_f1; Invalid value assigned: str is not a ListConfig, list or tuple: pass a list, e.g. data.metrics=[token_f1]",
    ),
    Case(
        "unquoted regular expression",
        "command line",
        T,
        ["data.answer_regex=(\\d+)"],
        "loralab: error: Error parsing override 'data.answer_regex=(\\d+)'; extraneous input '(' expecting {<EOF>, ':', BRACKET_OPEN, BRACE_OPEN, FLOAT, INT, BOOL, NULL, UNQUOTED_CHAR, ID, ESC, WS, QUOTED_VALUE, INTERPOLATION}; See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details: quote a value with brackets, backslashes or spaces, e.g. \"data.answer_regex='...'\"",
    ),
    Case(
        "a list without brackets",
        "command line",
        T,
        ["variant.target_modules=q_proj,v_proj"],
        "loralab: error: Ambiguous value for argument 'variant.target_modules=q_proj,v_proj'; 1. To use it as a list, use key=[value1,value2]; 2. To use it as string, quote the value: key='value1,value2'; 3. To sweep over it, add --multirun to your command line",
    ),
    Case("a misspelt flag", "command line", T, ["--verbos"], "loralab-train: error: unrecognized arguments: --verbos"),
    Case(
        "an unquoted ~ in a path",
        "command line",
        T,
        ["data=local", "data.train_file=~/qa.jsonl"],
        "loralab: error: cannot parse the override 'data.train_file=~/qa.jsonl': its value holds characters that Hydra accepts only in quotes: quote the value, e.g. \"data.train_file='...'\" (a list: \"data.train_file=['...']\")",
    ),
    # ---- the model's module tree (built without weights): before Hydra makes the run directory ----
    Case(
        "target matches nothing",
        "module tree",
        T,
        ["variant.target_modules=[q_proj,nope_proj]"],
        "loralab: error: target module pattern 'nope_proj' matches no module in the model: fix variant.target_modules (list the model's modules with model.named_modules())",
    ),
    Case(
        "all-linear spelled with an underscore",
        "config values",
        T,
        ["variant.target_modules=all_linear"],
        "loralab: error: variant.target_modules='all_linear' is not all-linear: write variant.target_modules=all-linear (one string, with a hyphen) for every linear layer but the output head",
    ),
    Case(
        "a target only inside the classification head",
        "module tree",
        T,
        ["model=hub", "model.name_or_path={tmp}/roberta-seq_cls", "data=topics", "variant.target_modules=[out_proj]"],
        "loralab: error: target module pattern 'out_proj' selects only modules that train in full as modules_to_save (classifier.out_proj), and peft puts no adapter inside those: target other modules, or drop the entry from variant.modules_to_save",
        setup=_family("roberta", "seq_cls"),
    ),
    Case(
        "modules_to_save matches nothing",
        "module tree",
        T,
        ["variant.modules_to_save=[headx]"],
        "loralab: error: modules_to_save entry 'headx' matches no module in the model: fix variant.modules_to_save",
    ),
    Case(
        "a regex selecting the whole model",
        "module tree",
        T,
        ["variant.target_modules='.*'"],
        "loralab: error: variant.target_modules '.*' selects 16 module(s) an adapter cannot wrap: model (LlamaModel), model.layers (ModuleList) and 14 more; adapters go on Linear, Embedding and Conv layers: narrow the pattern, e.g. variant.target_modules='.*_proj'",
    ),
    Case(
        "a container as a target",
        "module tree",
        T,
        ["variant.target_modules=[self_attn]"],
        "loralab: error: variant.target_modules 'self_attn' selects 2 module(s) an adapter cannot wrap: model.layers.0.self_attn (LlamaAttention), model.layers.1.self_attn (LlamaAttention); adapters go on Linear, Embedding and Conv layers: narrow the pattern, e.g. variant.target_modules='.*_proj'",
    ),
    Case(
        "the tied output head as a target",
        "module tree",
        T,
        ["variant.target_modules=[lm_head]"],
        "loralab: error: variant.target_modules selects lm_head, whose weight is tied to model.embed_tokens (the model shares one tensor between them): merging the adapter into it would change both; remove lm_head from variant.target_modules",
    ),
    Case(
        "the tied embedding as a target",
        "module tree",
        T,
        ["variant.target_modules=[embed_tokens]"],
        "loralab: error: variant.target_modules selects model.embed_tokens, whose weight is tied to lm_head (the model shares one tensor between them): merging the adapter into it would change both; remove embed_tokens from variant.target_modules",
    ),
    Case(
        "the tied output head trained as a copy",
        "module tree",
        T,
        ["variant.modules_to_save=[lm_head]"],
        "loralab: error: variant.modules_to_save selects lm_head, whose weight is tied to model.embed_tokens (the model shares one tensor between them): a trained copy would untie them and the merged model would not reload as trained; remove lm_head from variant.modules_to_save",
    ),
    Case(
        "rank above a layer's width",
        "module tree",
        T,
        ["variant.r=64"],
        "loralab: error: variant.r=64 exceeds the rank a weight update of model.layers.0.self_attn.k_proj can have (min(d_in, d_out) = 32): above it B·A adds parameters, not rank; set variant.r <= 32, or leave that module out of variant.target_modules",
    ),
    Case(
        "PiSSA rank above a layer's width",
        "module tree",
        T,
        ["variant=pissa", "variant.r=40"],
        "loralab: error: variant.r=40 exceeds the rank a weight update of model.layers.0.self_attn.k_proj can have (min(d_in, d_out) = 32): above it B·A adds parameters, not rank; set variant.r <= 32, or leave that module out of variant.target_modules",
    ),
    Case(
        "VeRA on a non-linear layer",
        "module tree",
        T,
        ["variant=vera", "variant.target_modules=[q_proj,embed_tokens]"],
        "loralab: error: VeRA adapts linear layers only, but 'embed_tokens' selects model.embed_tokens (Embedding): remove it from variant.target_modules",
    ),
    # ---- where a run writes ----
    Case(
        "run directory holding a completed run",
        "run directories",
        T,
        [],
        "loralab: error: hydra.run.dir={tmp}/a holds an earlier run (status completed, last checkpoint step-0000004): continue it with resume=auto, or start a new run in a new directory (leave hydra.run.dir unset for a time-stamped one)",
        needs=["a"],
        run_dir="a",
    ),
    Case(
        "run directory holding an interrupted run",
        "run directories",
        T,
        [],
        "loralab: error: hydra.run.dir={tmp}/a holds an earlier run (status interrupted, last checkpoint step-0000004): continue it with resume=auto, or start a new run in a new directory (leave hydra.run.dir unset for a time-stamped one)",
        needs=["a"],
        run_dir="a",
        setup=_interrupted,
    ),
    Case(
        "run directory below a file",
        "run directories",
        T,
        [],
        "loralab: error: hydra.run.dir={tmp}/afile/run cannot be created: {tmp}/afile is a file, not a directory; choose another path",
        setup=_file("afile"),
        run_dir="afile/run",
    ),
    Case(
        "run directory read-only",
        "run directories",
        T,
        [],
        "loralab: error: hydra.run.dir={tmp}/ro/run cannot be created: {tmp}/ro is not writable (read-only, or owned by another user); choose another path",
        read_only="ro",
        run_dir="ro/run",
    ),
    Case(
        "cache directory below a file",
        "run directories",
        T,
        [],
        "loralab: error: paths.cache_dir (LORALAB_CACHE)={tmp}/afile/cache cannot be created: {tmp}/afile is a file, not a directory; choose another path",
        setup=_file("afile"),
        env={"LORALAB_CACHE": "{tmp}/afile/cache"},
    ),
    Case(
        "cache directory read-only",
        "run directories",
        T,
        [],
        "loralab: error: paths.cache_dir (LORALAB_CACHE)={tmp}/ro/cache cannot be created: {tmp}/ro is not writable (read-only, or owned by another user); choose another path",
        read_only="ro",
        env={"LORALAB_CACHE": "{tmp}/ro/cache"},
    ),
    Case(
        "sweep directory below a file",
        "run directories",
        T,
        ["-m", "variant.r=2,4", "hydra.sweep.dir={tmp}/afile/sweep"],
        "loralab: error: hydra.sweep.dir={tmp}/afile/sweep cannot be created: {tmp}/afile is a file, not a directory; choose another path",
        setup=_file("afile"),
    ),
    # ---- sweeps: every job checked before the first runs ----
    Case(
        "a bad value in one job of a sweep",
        "sweeps",
        T,
        ["-m", "variant.r=4,0", "hydra.sweep.dir={tmp}/sweep"],
        "loralab: error: sweep job 1 (model=tiny debug=fast logger=csv ~callbacks.progress=null variant.r=0): variant.r must be an integer >= 1, got 0: set e.g. variant.r=8; nothing was run",
    ),
    Case(
        "a bad target in one job of a sweep",
        "sweeps",
        T,
        ["-m", "variant.target_modules=[q_proj],[nope]", "hydra.sweep.dir={tmp}/sweep"],
        "loralab: error: sweep job 1 (model=tiny debug=fast logger=csv ~callbacks.progress=null variant.target_modules=[nope]): target module pattern 'nope' matches no module in the model: fix variant.target_modules (list the model's modules with model.named_modules()); nothing was run",
    ),
    Case(
        "a bad seed in one job of a sweep",
        "sweeps",
        T,
        ["-m", "seed=1,-1", "hydra.sweep.dir={tmp}/sweep"],
        "loralab: error: sweep job 1 (model=tiny debug=fast logger=csv ~callbacks.progress=null seed=-1): seed must be an integer in [0, 4294967295], got -1: set e.g. seed=42; nothing was run",
    ),
    # ---- paths: ~ is home, relative is relative to where the command runs, and said exactly ----
    Case(
        "missing data file",
        "paths",
        T,
        ["data=local", "data.train_file={tmp}/no.jsonl"],
        "loralab: error: data.train_file not found: {tmp}/no.jsonl: check the path",
    ),
    Case(
        "data file under ~ missing",
        "paths",
        T,
        ["data=local", "data.train_file='~/no.jsonl'"],
        "loralab: error: data.train_file not found: {tmp}/no.jsonl: check the path",
        env={"HOME": "{tmp}"},
    ),
    Case(
        "data path a directory",
        "paths",
        T,
        ["data=local", "data.train_file={tmp}/data"],
        "loralab: error: data.train_file {tmp}/data is a directory: pass a file (.csv, .json, .jsonl, .parquet)",
        setup=_split_files,
    ),
    Case(
        "validation file is the training file",
        "paths",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl", "data.val_file={tmp}/qa.jsonl"],
        "loralab: error: data.val_file is the training file ({tmp}/qa.jsonl): validating on the training data measures memorisation; pass a separate file, or leave data.val_file unset to hold out data.val_fraction of the training file",
        setup=jsonl("qa.jsonl", QA),
    ),
    Case(
        "test file is the training file",
        "paths",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl", "data.test_file={tmp}/qa.jsonl"],
        "loralab: error: data.test_file is data.train_file ({tmp}/qa.jsonl): a test split must be held out from training and from model selection; pass a separate file",
        setup=jsonl("qa.jsonl", QA),
    ),
    Case(
        "unsupported data file",
        "paths",
        T,
        ["data=local", "data.train_file={tmp}/qa.txt"],
        "loralab: error: data.train_file {tmp}/qa.txt has an unsupported suffix: use one of ['.csv', '.json', '.jsonl', '.parquet']",
        setup=raw("qa.txt", b"Q? A\n"),
    ),
    Case(
        "missing model path",
        "paths",
        T,
        ["model=hub", "model.name_or_path={tmp}/no-model"],
        "loralab: error: model path not found: {tmp}/no-model: pass an existing directory or a hub id (org/name) as model.name_or_path",
    ),
    Case(
        "model path a file",
        "paths",
        T,
        ["model=hub", "model.name_or_path={tmp}/afile"],
        "loralab: error: model.name_or_path {tmp}/afile is a file: pass the model's directory (the one holding config.json and the weights)",
        setup=_file("afile"),
    ),
    Case(
        "checkpoint path not found",
        "paths",
        T,
        ["ckpt_path={tmp}/nowhere"],
        "loralab: error: ckpt_path not found: {tmp}/nowhere: pass a checkpoint directory or its training_state.ckpt",
    ),
    Case(
        "checkpoint path under ~ missing",
        "paths",
        T,
        ["ckpt_path='~/nowhere'"],
        "loralab: error: ckpt_path not found: {tmp}/nowhere: pass a checkpoint directory or its training_state.ckpt",
        env={"HOME": "{tmp}"},
    ),
    Case(
        "checkpoint path an adapter",
        "paths",
        T,
        ["ckpt_path={tmp}/a/adapter"],
        "loralab: error: ckpt_path={tmp}/a/adapter is a saved adapter, which holds no training state (optimizer, step, data position): pass a checkpoint directory (<run>/checkpoints/step-N)",
        needs=["a"],
    ),
    Case(
        "checkpoint path a run directory",
        "paths",
        T,
        ["ckpt_path={tmp}/a"],
        "loralab: error: ckpt_path={tmp}/a is a run directory, not a checkpoint: continue it with resume=auto hydra.run.dir={tmp}/a, or pass one of its checkpoints ({tmp}/a/checkpoints/step-N)",
        needs=["a"],
    ),
    Case(
        "checkpoint path an empty directory",
        "paths",
        T,
        ["ckpt_path={tmp}/data"],
        "loralab: error: ckpt_path={tmp}/data is a directory without training_state.ckpt: pass a checkpoint directory (<run>/checkpoints/step-N) or its training_state.ckpt",
        setup=_split_files,
    ),
    # ---- data files: read line by line before datasets does ----
    Case(
        "malformed JSONL line",
        "data files",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl line 7 is not valid JSON (Expecting ',' delimiter at column 18): fix or remove that line",
        setup=_malformed,
        writes_nothing=False,
    ),
    Case(
        "text that is not UTF-8",
        "data files",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl line 3 is not UTF-8 text (byte 0xe9 at column 16): save the file as UTF-8",
        setup=_latin1,
        writes_nothing=False,
    ),
    Case(
        "a line that is not an object",
        "data files",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        'loralab: error: {tmp}/qa.jsonl line 4 is a list, not an object: each example must be {"column": value, ...}',
        setup=jsonl("qa.jsonl", [*QA[:3], ["Q?", "A"], *QA[3:]]),
        writes_nothing=False,
    ),
    Case(
        "mixed label types",
        "data files",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: {tmp}/topics.jsonl: column 'label' is a string on line 1 but a number on line 5: write every label the same way (all strings, e.g. \"1\", or all numbers)",
        setup=jsonl("topics.jsonl", [*TOPICS[:4], {"text": "t", "label": 1}, *TOPICS[4:]]),
        writes_nothing=False,
    ),
    Case(
        "empty data file",
        "data files",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl holds no examples (it is empty): point the data config at the data",
        setup=raw("qa.jsonl", b""),
        writes_nothing=False,
    ),
    Case(
        "one example",
        "data files",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl holds 1 example: too few to hold out data.val_fraction=0.1 of it for validation; add examples, or pass data.val_file",
        setup=jsonl("qa.jsonl", QA[:1]),
        writes_nothing=False,
    ),
    # ---- data values: what each example holds ----
    Case(
        "null prompt",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl: example 5: 'prompt' is missing (null or absent): fix that example or remove it",
        setup=jsonl("qa.jsonl", [*QA[:4], {"prompt": None, "completion": "A"}, *QA[4:]]),
        writes_nothing=False,
    ),
    Case(
        "example without a completion",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl: example 3: 'completion' is missing (null or absent): fix that example or remove it",
        setup=jsonl("qa.jsonl", [*QA[:2], {"prompt": "Q?"}, *QA[2:]]),
        writes_nothing=False,
    ),
    Case(
        "completion a list",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl: column 'completion' is a string on line 1 but a list on line 9: give the column one type in every example",
        setup=jsonl("qa.jsonl", [*QA, {"prompt": "Q?", "completion": ["A", "B"]}]),
        writes_nothing=False,
    ),
    Case(
        "every completion empty",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: {tmp}/qa.jsonl: every 'completion' is empty: there is nothing to learn; check the data, or data.completion_column",
        setup=jsonl("qa.jsonl", [{"prompt": f"Q{i}?", "completion": ""} for i in range(8)]),
        writes_nothing=False,
    ),
    Case(
        "empty cell in a CSV",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.csv"],
        "loralab: error: {tmp}/qa.csv: example 3: 'completion' is missing (null or absent): fix that example or remove it",
        setup=raw("qa.csv", CSV_GAP),
        writes_nothing=False,
    ),
    Case(
        "chat messages as a string",
        "data values",
        T,
        ["data=local", "data.format=chat", "data.train_file={tmp}/chat.jsonl"],
        "loralab: error: {tmp}/chat.jsonl: column 'messages' is a list on line 1 but a string on line 4: give the column one type in every example",
        setup=jsonl("chat.jsonl", [*CHAT[:3], {"messages": "hello"}, *CHAT[3:]]),
        writes_nothing=False,
    ),
    Case(
        "chat messages all strings",
        "data values",
        T,
        ["data=local", "data.format=chat", "data.train_file={tmp}/chat.jsonl"],
        'loralab: error: {tmp}/chat.jsonl: example 1: \'messages\' is a string, not a list of {"role": ..., "content": ...} messages: fix that example or remove it (or set data.format to the data\'s format)',
        setup=jsonl("chat.jsonl", [{"messages": f"hello {i}"} for i in range(8)]),
        writes_nothing=False,
    ),
    Case(
        "chat ending with the user",
        "data values",
        T,
        ["data=local", "data.format=chat", "data.train_file={tmp}/chat.jsonl"],
        "loralab: error: {tmp}/chat.jsonl: example 9: 'messages' ends with a 'user' message: the last message must be the assistant's answer the model learns: fix that example or remove it (or set data.format to the data's format)",
        setup=jsonl("chat.jsonl", [*CHAT, {"messages": [{"role": "user", "content": "Q?"}]}]),
        writes_nothing=False,
    ),
    Case(
        "chat message without a role",
        "data values",
        T,
        ["data=local", "data.format=chat", "data.train_file={tmp}/chat.jsonl"],
        'loralab: error: {tmp}/chat.jsonl: example 1: \'messages\' has message 1 without a "role": each message is {"role": ..., "content": ...}: fix that example or remove it (or set data.format to the data\'s format)',
        setup=jsonl("chat.jsonl", [{"messages": [{"content": "Q?"}, {"role": "assistant", "content": "A"}]}, *CHAT]),
        writes_nothing=False,
    ),
    Case(
        "classification label null",
        "data values",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: {tmp}/topics.jsonl: example 9: 'label' is missing (null or absent): fix that example or remove it",
        setup=jsonl("topics.jsonl", [*TOPICS, {"text": "t", "label": None}]),
        writes_nothing=False,
    ),
    Case(
        "validation file a copy of training examples",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl", "data.val_file={tmp}/val.jsonl"],
        "loralab: error: all 3 validation examples also appear in the training data: validation would measure memorisation; pass a separate data.val_file (or data.val_split), or remove the duplicates",
        setup=_copies,
        writes_nothing=False,
    ),
    Case(
        "columns the format does not have",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/qa.jsonl"],
        "loralab: error: train data has columns ['question', 'answer'] but format prompt_completion needs ['prompt', 'completion']: rename them in the data or set data.<kind>_column (e.g. data.prompt_column=question)",
        setup=jsonl("qa.jsonl", [{"question": "q", "answer": "a"}] * 4),
        writes_nothing=False,
    ),
    Case(
        "a chat file without the chat format",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/chat.jsonl"],
        "loralab: error: train data has columns ['messages'] but format prompt_completion needs ['prompt', 'completion']: its columns fit data.format=chat: set that",
        setup=jsonl("chat.jsonl", CHAT),
        writes_nothing=False,
    ),
    Case(
        "a classification file without the classification format",
        "data values",
        T,
        ["data=local", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: train data has columns ['text', 'label'] but format prompt_completion needs ['prompt', 'completion']: its columns fit data.format=classification: set that",
        setup=jsonl("topics.jsonl", TOPICS),
        writes_nothing=False,
    ),
    Case(
        "labels missing from the label set",
        "data values",
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
        "data values",
        T,
        ["data=local", "data.format=classification", "data.train_file={tmp}/topics.jsonl"],
        "loralab: error: classification needs at least 2 labels, found ['sports'] in column 'label': check the data, or data.label_column",
        setup=jsonl("topics.jsonl", [{"text": f"t{i}", "label": "sports"} for i in range(8)]),
        writes_nothing=False,
    ),
    Case(
        "max length below every example",
        "data values",
        T,
        ["data.max_length=4"],
        "loralab: error: all 64 training examples are longer than data.max_length=4 (the shortest is 45 tokens): raise data.max_length",
        writes_nothing=False,
    ),
    # ---- models on disk ----
    Case(
        "model dtype unknown",
        "models",
        T,
        ["model.dtype=float64"],
        "loralab: error: model.dtype must be one of ['bfloat16', 'float16', 'float32'], got 'float64'",
    ),
    Case(
        "model directory without a config",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/data"],
        "loralab: error: model directory {tmp}/data has no config.json: pass a transformers model directory (what save_pretrained writes: config.json, the weights, the tokenizer)",
        setup=_split_files,
    ),
    Case(
        "tokenizer with neither pad nor eos token",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: the tokenizer has neither a pad nor an eos token: use a tokenizer that defines one",
        setup=lambda tmp, runs: _model_dir(tmp, pad=False, eos=False, safetensors=True),
        writes_nothing=False,
    ),
    Case(
        "pickled weights only",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: model '{tmp}/model' has no safetensors weights: loralab does not load pickled weights (pytorch_model.bin can run code when read); convert them to safetensors first",
        setup=lambda tmp, runs: _model_dir(tmp, pad=True, eos=True, safetensors=False),
        writes_nothing=False,
    ),
    Case(
        "model with code of its own",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/model"],
        "loralab: error: model '{tmp}/model' comes with its own Python code (auto_map in its config.json), which loralab runs only when told: read that code, then set model.trust_remote_code=true",
        setup=_custom_code,
    ),
    Case(
        "an encoder trained as a causal LM",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/bert-causal_lm"],
        "loralab: error: model {tmp}/bert-causal_lm (BertLMHeadModel) lets each token see the tokens after it (changing later tokens changes the logits of earlier ones): as a causal LM it would learn from the answer it must predict; train it on a classification task (data.format=classification), or use a decoder model",
        setup=_family("bert", "causal_lm"),
        writes_nothing=False,
    ),
    Case(
        "a classification head for other labels",
        "models",
        T,
        ["model=hub", "model.name_or_path={tmp}/roberta-seq_cls", "data=topics"],
        "loralab: error: model {tmp}/roberta-seq_cls already has a classification head (RobertaForSequenceClassification) for 2 labels (label_0, label_1), and the data has 4 (food, sports, technology, weather): train on data with its labels, or start from the checkpoint without that head",
        setup=_family("roberta", "seq_cls"),
        writes_nothing=False,
    ),
    # ---- resuming ----
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
    Case(
        "checkpoint of another variant",
        "resume",
        T,
        ["variant=dora", "ckpt_path={tmp}/a/checkpoints/step-0000004"],
        "loralab: error: the checkpoint lacks 14 trainable tensor(s) (e.g. model.base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector.default.weight): it was saved with another variant or target_modules; resume with the same config",
        needs=["a"],
        writes_nothing=False,
    ),
    # ---- signals while the data and the model load ----
    Case(
        "Ctrl-C while the data is tokenized",
        "signals",
        T,
        ["data.num_train=200000"],
        "loralab: stopped by SIGINT before training started (while loading the data and the model): nothing was trained; run the command again",
        code=130,
        interrupt="SIGINT",
        matrix=True,  # the same path as SIGTERM's row
        writes_nothing=False,
        status="interrupted",
    ),
    Case(
        "SIGTERM while the data is tokenized",
        "signals",
        T,
        ["data.num_train=200000"],
        "loralab: stopped by SIGTERM before training started (while loading the data and the model): nothing was trained; run the command again",
        code=143,
        interrupt="SIGTERM",
        writes_nothing=False,
        status="interrupted",
    ),
    # ---- the environment ----
    Case(
        "WANDB_MODE W&B does not know",
        "environment",
        T,
        ["logger=wandb"],
        "loralab: error: the environment sets WANDB_MODE='offlne', which W&B does not know: unset it (online with credentials, offline without), or set WANDB_MODE=offline, online or disabled",
        env={"WANDB_MODE": "offlne"},
    ),
    # ---- loralab-rerun ----
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
        "rerun override of the wrong kind",
        "rerun",
        R,
        ["{tmp}/a", "trainer.max_steps=abc"],
        "loralab-rerun: error: override 'trainer.max_steps=abc': trainer.max_steps is an integer in the saved config (4), got 'abc': e.g. trainer.max_steps=4",
        needs=["a"],
    ),
    Case(
        "rerun override a fraction for an integer",
        "rerun",
        R,
        ["{tmp}/a", "variant.r=2.5"],
        "loralab-rerun: error: override 'variant.r=2.5': variant.r is an integer in the saved config (8), got 2.5: e.g. variant.r=8",
        needs=["a"],
    ),
    Case(
        "rerun override with a negative seed",
        "rerun",
        R,
        ["{tmp}/a", "seed=-1"],
        "loralab-rerun: error: seed must be an integer in [0, 4294967295], got -1: set e.g. seed=42",
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
        "verify against a damaged adapter",
        "rerun",
        R,
        ["{tmp}/a", "--verify"],
        "loralab-rerun: error: the original run's adapter is damaged ({tmp}/a/adapter/adapter_model.safetensors is not the file the run saved (its SHA-256 differs from the one summary.json records)): there is nothing to verify against; rerun without --verify to train it again",
        setup=_flip_adapter_bit,
        needs=["a"],
    ),
    Case(
        "verify against a truncated adapter",
        "rerun",
        R,
        ["{tmp}/a", "--verify"],
        "loralab-rerun: error: the original run's adapter is damaged ({tmp}/a/adapter/adapter_model.safetensors is not the file the run saved (its SHA-256 differs from the one summary.json records)): there is nothing to verify against; rerun without --verify to train it again",
        setup=_truncate_adapter,
        needs=["a"],
    ),
    Case(
        "rerun into a file",
        "rerun",
        R,
        ["{tmp}/a", "--out", "{tmp}/afile"],
        "loralab-rerun: error: --out {tmp}/afile is a file: pass a new directory",
        setup=_file("afile"),
        needs=["a"],
    ),
    Case(
        "secret in a rerun override",
        "rerun",
        R,
        ["{tmp}/a", f"+model.token={SECRET}"],
        "loralab-rerun: error: the command line holds a secret (model.token=...); command lines are saved with the run: pass credentials through the environment instead (WANDB_API_KEY, HF_TOKEN)",
        needs=["a"],
    ),
    # ---- loralab-compare ----
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
        "loralab-compare: error: --filter 'rank=8': no run has 'rank'; columns: run, status, variant, r, alpha, targets, seed, trainable, adapter_bytes, peak_mb, p99_mb, train_s, tokens_per_s, val_loss, metric, merge_err",
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
        "compare a directory without runs",
        "compare",
        C,
        ["{tmp}/data"],
        "loralab-compare: error: no runs in {tmp}/data: a run directory holds summary.json and run_meta.json; pass one, or a directory above runs (a sweep, outputs/)",
        setup=_split_files,
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
    Case(
        "compare only a damaged run",
        "compare",
        C,
        ["{tmp}/a"],
        "loralab-compare: error: no completed run to compare: every run failed, was stopped, or has a damaged adapter (a: damaged)",
        setup=_flip_adapter_bit,
        needs=["a"],
    ),
    Case(
        "compare into a file",
        "compare",
        C,
        ["{tmp}/a", "--out", "{tmp}/afile"],
        "loralab-compare: error: --out {tmp}/afile is a file: pass a directory for compare.md, compare.csv and the plots",
        setup=_file("afile"),
        needs=["a"],
    ),
    Case(
        "compare into a path below a file",
        "compare",
        C,
        ["{tmp}/a", "--out", "{tmp}/afile/report"],
        "loralab-compare: error: --out={tmp}/afile/report cannot be created: {tmp}/afile is a file, not a directory; choose another path",
        setup=_file("afile"),
        needs=["a"],
    ),
    Case(
        "compare on a cost axis loralab does not measure",
        "compare",
        C,
        ["{tmp}/a", "--cost", "speed"],
        "loralab-compare: error: --cost 'speed': choose one of ['params', 'memory', 'time', 'bytes']",
        needs=["a"],
    ),
    Case(
        "compare against a baseline no run has",
        "compare",
        C,
        ["{tmp}/a", "{tmp}/b", "--baseline", "qlora"],
        "loralab-compare: error: --baseline 'qlora' matches no row: name one config, e.g. --baseline variant=lora,r=8",
        needs=["a", "b"],
    ),
    Case(
        "compare against a baseline several configs match",
        "compare",
        C,
        ["{tmp}/a", "{tmp}/b", "--baseline", "lora"],
        "loralab-compare: error: --baseline 'lora' matches 2 rows (a; b): name one config, e.g. --baseline variant=lora,r=8",
        needs=["a", "b"],
    ),
    Case(
        "compare against a malformed baseline",
        "compare",
        C,
        ["{tmp}/a", "{tmp}/b", "--baseline", "variant=lora,r"],
        "loralab-compare: error: --baseline 'variant=lora,r': name a variant (lora) or key=value pairs (variant=lora,r=8)",
        needs=["a", "b"],
    ),
    # ---- loralab-eval, loralab-generate, loralab-export: a finished run and what they are asked ----
    Case(
        "eval of a missing directory",
        "using a run",
        E,
        ["{tmp}/nowhere"],
        "loralab-eval: error: {tmp}/nowhere is not a directory: pass the run directory loralab-train wrote (outputs/...)",
    ),
    Case(
        "eval of a directory that is not a run",
        "using a run",
        E,
        ["{tmp}"],
        "loralab-eval: error: {tmp} is not a loralab run directory: it has no summary.json or run_meta.json (it holds runs: a; pass one of them)",
        needs=["a"],
    ),
    Case(
        "eval of a failed run",
        "using a run",
        E,
        ["{tmp}/a"],
        "loralab-eval: error: {tmp}/a is not a completed run (status failed: x): loralab-eval needs a finished run; resume it (loralab-train ... resume=auto) or rerun it (loralab-rerun) first",
        setup=_failed_original,
        needs=["a"],
    ),
    Case(
        "eval of a run still running (no summary)",
        "using a run",
        E,
        ["{tmp}/a"],
        "loralab-eval: error: {tmp}/a is not a completed run (no summary.json: still running, or killed): loralab-eval needs a finished run; resume it (loralab-train ... resume=auto) or rerun it (loralab-rerun) first",
        setup=_running,
        needs=["a"],
    ),
    Case(
        "eval of a run without its adapter weights",
        "using a run",
        E,
        ["{tmp}/a"],
        "loralab-eval: error: {tmp}/a: the saved adapter is not usable ({tmp}/a/adapter/adapter_model.safetensors is missing); retrain or rerun the run",
        setup=_no_adapter_weights,
        needs=["a"],
    ),
    Case(
        "eval of a run with a damaged adapter",
        "using a run",
        E,
        ["{tmp}/a"],
        "loralab-eval: error: {tmp}/a: the saved adapter is not usable ({tmp}/a/adapter/adapter_model.safetensors is not the file the run saved (its SHA-256 differs from the one summary.json records)); retrain or rerun the run",
        setup=_flip_adapter_bit,
        needs=["a"],
    ),
    Case(
        "eval with an unknown metric",
        "using a run",
        E,
        ["{tmp}/a", "data.metrics=[exact_matc]"],
        "loralab-eval: error: unknown metric 'exact_matc': data.metrics takes ['exact_match', 'normalized_exact_match', 'token_f1'] or a function's import path (package.module.function)",
        needs=["a"],
    ),
    Case(
        "eval with a key the data config lacks",
        "using a run",
        E,
        ["{tmp}/a", "data.test_fil=x.jsonl"],
        "loralab-eval: error: 'data.test_fil=x.jsonl': the data config has no key 'test_fil': did you mean data.test_file?",
        needs=["a"],
    ),
    Case(
        "eval override of the model",
        "using a run",
        E,
        ["{tmp}/a", "variant.r=4"],
        "loralab-eval: error: loralab-eval changes the data only: 'variant.r=4' is not data=NAME or data.<key>=value (the model and adapter are the run's)",
        needs=["a"],
    ),
    Case(
        "eval of a split that is not test or val",
        "using a run",
        E,
        ["{tmp}/a", "--split", "train"],
        "loralab-eval: error: --split 'train': choose one of ['test', 'val']",
        needs=["a"],
    ),
    Case(
        "eval on data the run's task cannot read",
        "using a run",
        E,
        ["{tmp}/a", "data=topics"],
        "loralab-eval: error: the run trained a causal_lm model, which cannot read data.format=classification (it reads prompt_completion, chat): evaluate it on data of that format",
        needs=["a"],
    ),
    Case(
        "eval on a data config that does not exist",
        "using a run",
        E,
        ["{tmp}/a", "data=datse"],
        "loralab-eval: error: data=datse: no such data config; choose one of ['dates', 'hub', 'local', 'topics', 'word_sort']",
        needs=["a"],
    ),
    Case(
        "eval of local data without a test file",
        "using a run",
        E,
        ["{tmp}/a", "data=local"],
        "loralab-eval: error: the local data has no data.test_file: pass data.test_file=... (the file to evaluate), or --split val",
        needs=["a"],
    ),
    Case(
        "eval --merged of a run without merged/",
        "using a run",
        E,
        ["{tmp}/a", "--merged"],
        "loralab-eval: error: {tmp}/a saved no merged model in merged/ (callbacks.merge_check.save_merged=false): drop --merged to use the base with adapter/",
        setup=_no_merged,
        needs=["a"],
    ),
    Case(
        "eval with a batch size of zero",
        "using a run",
        E,
        ["{tmp}/a", "--batch-size", "0"],
        "loralab-eval: error: --batch-size must be at least 1, got 0",
        needs=["a"],
    ),
    Case(
        "generate with a classification run",
        "using a run",
        G,
        ["{tmp}/topics", "hello"],
        "loralab-generate: error: {tmp}/topics trained a seq_cls model, which labels texts and does not generate: use loralab-eval to see its predictions",
        needs=["topics"],
    ),
    Case(
        "generate with a negative temperature",
        "using a run",
        G,
        ["{tmp}/a", "hi", "--temperature", "-1"],
        "loralab-generate: error: --temperature must be between 0 (greedy) and 100, got -1.0",
        needs=["a"],
    ),
    Case(
        "generate with top-p above one",
        "using a run",
        G,
        ["{tmp}/a", "hi", "--top-p", "1.5"],
        "loralab-generate: error: --top-p must be in (0, 1], got 1.5",
        needs=["a"],
    ),
    Case(
        "generate with an empty prompt",
        "using a run",
        G,
        ["{tmp}/a", " "],
        "loralab-generate: error: the prompt is empty: pass some text, or no prompt for a chat",
        needs=["a"],
    ),
    Case(
        "generate from a failed run",
        "using a run",
        G,
        ["{tmp}/a", "hi"],
        "loralab-generate: error: {tmp}/a is not a completed run (status failed: x): loralab-generate needs a finished run; resume it (loralab-train ... resume=auto) or rerun it (loralab-rerun) first",
        setup=_failed_original,
        needs=["a"],
    ),
    Case(
        "export to a format loralab does not write",
        "using a run",
        X,
        ["{tmp}/a", "--to", "onnx"],
        "loralab-export: error: --to 'onnx': choose one of ['merged', 'gguf']",
        needs=["a"],
    ),
    Case(
        "export in a dtype loralab does not write",
        "using a run",
        X,
        ["{tmp}/a", "--to", "gguf", "--dtype", "f8"],
        "loralab-export: error: --dtype 'f8': choose one of ['f32', 'f16', 'bf16']",
        needs=["a"],
    ),
    Case(
        "export a classification model to GGUF",
        "using a run",
        X,
        ["{tmp}/topics", "--to", "gguf"],
        "loralab-export: error: {tmp}/topics trained a seq_cls model: GGUF holds causal language models; use --to merged",
        needs=["topics"],
    ),
    Case(
        "export a run without its adapter weights",
        "using a run",
        X,
        ["{tmp}/a", "--to", "merged"],
        "loralab-export: error: {tmp}/a: the saved adapter is not usable ({tmp}/a/adapter/adapter_model.safetensors is missing); retrain or rerun the run",
        setup=_no_adapter_weights,
        needs=["a"],
    ),
    Case(
        "export --out inside the run directory",
        "using a run",
        X,
        ["{tmp}/a", "--to", "merged", "--out", "{tmp}/a/adapter"],
        "loralab-export: error: --out {tmp}/a/adapter is inside the run directory: exports go under {tmp}/a/export/ or outside the run",
        needs=["a"],
    ),
    Case(
        "export into a directory that is not an export",
        "using a run",
        X,
        ["{tmp}/a", "--to", "merged", "--out", "{tmp}/mine"],
        "loralab-export: error: {tmp}/mine exists and is not a loralab export: pass --out with a new directory",
        setup=_dir_with_a_file("mine"),
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
    """Run the case's command in this process, as its console script would (as a process of its own
    when a signal is sent to it): the exit code and everything written to stderr (log records
    included)."""
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    monkeypatch.setenv("LORALAB_CACHE", str(tmp.parent / f"{tmp.name}-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.replace("{tmp}", str(tmp)))
    if case.command == T:
        from loralab.cli import main

        argv = [T, *BASE, f"hydra.run.dir={tmp / case.run_dir}", *args]
        if "-m" in args:  # Hydra's flags come before the overrides
            argv = [T, "-m", *BASE, *(a for a in args if a != "-m")]
        if case.interrupt:
            return run_interrupted(argv, tmp / case.run_dir, case.interrupt)
        monkeypatch.setattr(sys, "argv", argv)
        call = main
    elif case.command == R:
        from loralab.rerun import main as rerun_main

        args = args if "--out" in args else [*args, "--out", str(tmp / "rerun")]
        call = lambda: rerun_main(args)  # noqa: E731
    elif case.command == C:
        from loralab.compare import main as compare_main

        args = args if "--out" in args else [*args, "--out", str(tmp / "report")]
        call = lambda: compare_main(args)  # noqa: E731
    else:
        from loralab.commands import eval as eval_cmd
        from loralab.commands import export, generate

        main_of = {E: eval_cmd.main, G: generate.main, X: export.main}[case.command]
        call = lambda: main_of(args)  # noqa: E731
    return run_captured(call)


def run_interrupted(argv: list[str], run_dir: Path, signame: str) -> tuple[int, str]:
    """`python -m loralab ...` as a process, sent `signame` once its run has started loading
    (Hydra has written the run directory): the exit code and its stderr."""
    import os
    import signal
    import subprocess
    import time

    def interactive() -> None:
        # as from a terminal: a shell that starts its jobs in the background ignores SIGINT in
        # them (and Python keeps an inherited SIG_IGN), which Ctrl-C at a terminal never meets
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "loralab", *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interactive,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / ".hydra").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(4.0)  # into the loading: imports, the tokenizer, tokenizing 200,000 examples
    os.kill(proc.pid, getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


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
CLASSES = {
    "config values": "Ranges, finiteness and kinds of values: refused in about a second, before anything loads.",
    "config choices": "Options, keys and combinations that cannot work together, or not on this machine.",
    "command line": "What the shell and Hydra's override grammar make of what was typed.",
    "module tree": (
        "Targets checked against the model's module tree, built without weights: what matches, whether an "
        "adapter can wrap it, tied weights, and a rank the layer can have."
    ),
    "run directories": "Where a run writes: never over an earlier run, and only where it can write.",
    "sweeps": "Every job of a sweep is composed and checked before the first one runs.",
    "paths": "~ is the home directory, a relative path is relative to where the command runs, and what is at a path is said exactly.",
    "data files": "Local files read line by line before `datasets` reads them.",
    "data values": 'What each example holds, by its number: nothing missing turns into the text "None".',
    "models": "Model directories and what loading them would need.",
    "resume": "Checkpoints that cannot be continued from.",
    "signals": (
        "Ctrl-C or SIGTERM while the data and the model load (each runs as a process of its own and is sent the "
        "signal): status `interrupted`, exit 128 + the signal. During training see docs/reliability.md."
    ),
    "environment": "Settings that come from the environment, not the config.",
    "rerun": "`loralab-rerun`: what it runs again and what it verifies against (recorded hashes are checked first).",
    "compare": "`loralab-compare`: what it reads (a damaged adapter is reported, not compared) and where it writes.",
    "using a run": (
        "`loralab-eval`, `loralab-generate`, `loralab-export`: the finished run they are handed (checked against "
        "its recorded hashes first) and what they are asked to do with it; they write nothing into it but their "
        "own output."
    ),
}


def render() -> str:
    head = [
        "# Bad inputs and what loralab answers",
        "",
        f"{len(CASES)} cases, grouped by the class of mistake. Every row is a test",
        "(`tests/integration/test_bad_inputs.py`): it makes the bad input, runs the command, and checks the",
        "exit code, that the message below is stderr's last line, word for word, and that no file that",
        "existed before (data, earlier runs, checkpoints) changed. Rows marked *nothing written* are",
        "refused before Hydra makes a run directory; the others stop before training and leave a new run",
        "directory holding `summary.json` (`failed`, or `interrupted` for a signal, with the message) and",
        "`train.log`. `{tmp}` stands for the directory the input lies in.",
        "",
        "`loralab-rerun` runs are given `--out {tmp}/rerun`, `loralab-compare` runs `--out {tmp}/report`, unless",
        "the row gives its own. Regenerate this file with",
        "`.venv/bin/python -m tests.integration.bad_inputs > docs/bad-inputs.md`.",
    ]
    body: list[str] = []
    n = 0
    for area, about in CLASSES.items():
        cases = [c for c in CASES if c.area == area]
        body += [
            "",
            f"## {area} ({len(cases)})",
            "",
            about,
            "",
            "| # | input | command | exit | message |",
            "|---|---|---|---|---|",
        ]
        for case in cases:
            n += 1
            args = " ".join(case.args).replace("|", "\\|")
            env = " ".join(f"{k}={v}" for k, v in case.env.items())
            where = f"hydra.run.dir={{tmp}}/{case.run_dir} " if case.run_dir != "run" else ""
            note = " (*nothing written*)" if case.writes_nothing else ""
            note += f" ({case.interrupt} sent while loading)" if case.interrupt else ""
            note += f" ({{tmp}}/{case.read_only} read-only)" if case.read_only else ""
            message = case.message.replace("|", "\\|")
            command = f"{env + ' ' if env else ''}{case.command} {where}{args}".strip()
            body.append(f"| {n} | {case.name}{note} | `{command}` | {case.code} | {message} |")
    assert n == len(CASES), sorted({c.area for c in CASES} - set(CLASSES))
    return "\n".join([*head, *body]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
