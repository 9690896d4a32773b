"""loralab-export: a finished run's model as a standalone file set, checked by loading it back.

  loralab-export RUN_DIR --to merged --dtype bf16     # transformers' format, in the dtype asked
  loralab-export RUN_DIR --to gguf --dtype f16        # one GGUF file for llama.cpp and Ollama

The model is merged/ when the run saved it, else the base with adapter/ merged in memory. The
export is loaded back with transformers (a GGUF file as `from_pretrained(dir, gguf_file=...)`) and
its logits on the general-text probe are compared with the merged model's in float32: the error
must stay within what rounding the weights to the dtype costs, measured here on the same probe
(2x that, and at least 1e-4 relative: different kernels in float32). The result is in
export_report.json beside the export. Writes into RUN_DIR/export/<to>-<dtype>/ (or --out) only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError
from loralab.finished import FinishedRun, RunUseError, package_versions

EXPORT_DIR = "export"
REPORT = "export_report.json"
TARGETS = ("merged", "gguf")
DTYPES = ("f32", "f16", "bf16")
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
FLOOR = 1e-4  # float32 tolerance of different kernels (the merge check's float32 tolerance)
PROBE_BLOCKS, PROBE_TOKENS = 4, 64


def check_args(to: str, dtype: str) -> None:
    if to not in TARGETS:
        raise ConfigError(f"--to {to!r}: choose one of {list(TARGETS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {list(DTYPES)}")


def model_config(run: FinishedRun) -> Any:
    """The merged model's config, read without weights."""
    from transformers import AutoConfig

    if (run.merged_dir / "config.json").is_file():
        return AutoConfig.from_pretrained(run.merged_dir)
    return run.source().load_config(run.task().name, run.labels())


def merged_model(run: FinishedRun) -> tuple[Any, Any, str]:
    """(the merged model in float32, tokenizer, where it came from)."""
    import torch

    if (run.merged_dir / "config.json").is_file():
        model = run.task().model_class().from_pretrained(run.merged_dir, dtype=torch.float32)
        return model.eval(), run.source().load_tokenizer(), "merged/"
    model, tokenizer = run.load()
    return model.merge_and_unload().float().eval(), tokenizer, "base + adapter/, merged in memory"


def probe(task: Any, tokenizer: Any, model: Any) -> dict:
    """A few blocks of the general-text probe as the task's logits batch."""
    import torch

    from loralab.forgetting import block_length, load_probe, probe_blocks

    text, _ = load_probe("general_text")
    blocks = torch.tensor(probe_blocks(tokenizer, text, block_length(model, PROBE_TOKENS))[:PROBE_BLOCKS])
    if task.models_text:
        return task.probe_batch(blocks)
    if tokenizer.eos_token_id is not None:  # a classification head may read the end token's state
        blocks[:, -1] = tokenizer.eos_token_id
    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks)}


def logit_check(task: Any, ref_model: Any, exported: Any, batch: dict, dtype: str) -> dict:
    """The exported model's logits against the reference's, beside what rounding the reference's
    weights to `dtype` alone costs on this machine."""
    import copy

    import torch

    from loralab.callbacks.merge_check import compare_logits

    ref = task.logits(ref_model, batch)
    mask = task.logit_mask(batch)
    got = compare_logits(ref, task.logits(exported.eval(), batch), mask)
    rounded = copy.deepcopy(ref_model).to(getattr(torch, TORCH_DTYPES[dtype])).float()
    rounding = compare_logits(ref, task.logits(rounded, batch), mask)["max_rel_err"]
    tolerance = max(2 * rounding, FLOOR)
    return {
        **got,
        "dtype_rounding_rel_err": rounding,
        "tolerance": tolerance,
        "passed": got["max_rel_err"] <= tolerance,
        "probe_tokens": int(batch["input_ids"].numel()),
    }


def check_out(out_dir: Path, run_dir: Path) -> None:
    """Refuse an output directory that would replace the run, or write into it elsewhere than
    export/, or replace a directory that is not an earlier export."""
    target, run = out_dir.resolve(), run_dir.resolve()
    if target == run or target in run.parents:
        raise RunUseError(f"--out {out_dir} would replace the run directory: pass a directory of its own")
    if run in target.parents and (run / EXPORT_DIR) not in [target, *target.parents]:
        raise RunUseError(
            f"--out {out_dir} is inside the run directory: exports go under {run_dir / EXPORT_DIR}/ or outside the run"
        )
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / REPORT).is_file())):
        raise RunUseError(f"{out_dir} exists and is not a loralab export: pass --out with a new directory")


def export_run(
    run_dir: str | Path, to: str = "merged", dtype: str = "f16", out: str | Path | None = None
) -> tuple[dict, Path]:
    """Export and check; return (export_report.json's content, the output directory)."""
    check_args(to, dtype)
    run = FinishedRun.open(run_dir, "loralab-export")
    task = run.task()
    config = model_config(run)
    if to == "gguf":
        from loralab.exporting.gguf_file import check_dtype, check_exportable

        if task.name != "causal_lm":
            raise ConfigError(
                f"{run.path} trained a {task.name} model: GGUF holds causal language models; use --to merged"
            )
        check_exportable(config)
        check_dtype(dtype)
        from loralab.exporting.gguf_file import check_tokenizer

        check_tokenizer(run.source().load_tokenizer(), config.vocab_size)  # before the weights load
    if getattr(config, "quantization_config", None) and not (run.merged_dir / "config.json").is_file():
        raise RunUseError(
            f"{run.path} has a k-bit base and saved no merged/: loralab-export merges into a full-precision base; "
            "rerun it with callbacks.merge_check.save_merged=true"
        )
    out_dir = Path(out) if out else run.path / EXPORT_DIR / f"{to}-{dtype}"
    check_out(out_dir, run.path)

    import torch

    started = time.time()
    ref_model, tokenizer, source = merged_model(run)
    batch = probe(task, tokenizer, ref_model)
    report: dict = {
        "run_dir": str(run.path),
        "to": to,
        "dtype": dtype,
        "source": source,
        "architecture": getattr(config, "model_type", None),
    }

    def fill(tmp: Path) -> None:
        if to == "merged":
            import copy

            model = copy.deepcopy(ref_model).to(getattr(torch, TORCH_DTYPES[dtype]))
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            del model
            exported = task.model_class().from_pretrained(tmp, dtype=torch.float32)
            report["files"] = sorted(p.name for p in tmp.iterdir())
            tok_check = None
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from loralab.exporting.gguf_file import write_gguf

            name = f"model-{dtype}.gguf"
            report["gguf"] = write_gguf(ref_model, tokenizer, tmp / name, dtype)
            report["gguf"]["path"] = name
            exported = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32)
            back = AutoTokenizer.from_pretrained(tmp, gguf_file=name)
            tok_check = tokenizer_check(tokenizer, back)
        report["logits"] = logit_check(task, ref_model, exported, batch, dtype)
        if tok_check is not None:
            report["tokenizer"] = tok_check
        report["passed"] = report["logits"]["passed"] and (tok_check is None or tok_check["same"])
        report["bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        report["wall_time_s"] = round(time.time() - started, 2)
        report["versions"] = package_versions()
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    from loralab.io import move_into, write_dir

    # a passing export replaces an earlier one; a failing one is kept beside it, for inspection
    staged = write_dir(out_dir.with_name(f".staged-{out_dir.name}"), fill)
    final = out_dir if report["passed"] else out_dir.with_name(out_dir.name + ".failed")
    move_into(staged, final)
    return report, final


def tokenizer_check(ours: Any, back: Any) -> dict:
    """The tokenizer read back from the GGUF file against the run's: the same ids for some texts
    (a chat-formatted one too) and the same special tokens."""
    from loralab.forgetting import load_probe

    text, _ = load_probe("general_text")
    texts = [p.strip() for p in text.split("\n\n")[:3]] + ["Hello, world!  Tabs\tand 123 numbers."]
    if ours.chat_template:
        texts.append(ours.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False))
    differing = [t[:40] for t in texts if ours(t)["input_ids"] != back(t)["input_ids"]]
    specials = {k: (getattr(ours, k), getattr(back, k)) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    wrong = {k: v for k, v in specials.items() if v[0] is not None and v[0] != v[1]}
    return {
        "texts": len(texts),
        "differing": differing,
        "special_tokens_differing": wrong,
        "chat_template_same": (ours.chat_template or None) == (back.chat_template or None),
        "same": not differing and not wrong,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loralab-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (it holds summary.json and adapter/)")
    parser.add_argument("--to", required=True, help="merged (transformers' format) or gguf (llama.cpp, Ollama)")
    parser.add_argument("--dtype", default="f16", help="f32, f16 (default) or bf16")
    parser.add_argument("--out", help="the output directory (default: RUN_DIR/export/<to>-<dtype>)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' start-up lines")
    args = parser.parse_args(argv)
    from loralab.commands import run_command

    def body() -> int:
        report, out_dir = export_run(args.run_dir, args.to, args.dtype, args.out)
        logits = report["logits"]
        mb = report["bytes"] / 1e6
        print(
            f"wrote {out_dir} ({mb:.1f} MB): logits max rel err {logits['max_rel_err']:.2e} "
            f"(rounding to {args.dtype}: {logits['dtype_rounding_rel_err']:.2e}, tolerance {logits['tolerance']:.2e})"
            + (
                ""
                if "tokenizer" not in report
                else f", tokenizer {'same' if report['tokenizer']['same'] else 'DIFFERS'}"
            )
        )
        if not report["passed"]:
            print(
                f"loralab-export: error: the export does not match the run's model: see {out_dir / REPORT}",
                file=sys.stderr,
            )
            return 1
        return 0

    run_command("loralab-export", body, args.verbose)


if __name__ == "__main__":
    main()
