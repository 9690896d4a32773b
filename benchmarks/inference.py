"""Inference after merge: the merged model's latency against the base model it came from (the
same architecture: they should be equal) and against the unmerged adapter model (peft's LoRA
layers add two small products per adapted layer).

The adapter is loralab's LoRA with its B matrices made non-zero (as after training), merged as the
merge check merges it. Each model is timed on the same inputs, interleaved, medians compared:
a forward pass over a batch of validation prompts, and greedy generation for one prompt.

python -m benchmarks.inference
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import emit, markdown_table, median, prepared, run_child


def measure(overrides: list[str], repeats: int, new_tokens: int) -> dict:
    """Median seconds per forward and per generation for the base, merged and adapter models."""
    import torch

    from loralab.callbacks.merge_check import MergeCheck
    from loralab.variants import get_variant
    from loralab.variants.registry import BuildContext

    torch.set_grad_enabled(False)
    cfg, typed, source, tokenizer, datamodule = prepared(overrides)
    base = source.load_model(datamodule.task.name, datamodule.labels).eval()
    adapter = get_variant(typed.variant.name).build(
        source.load_model(datamodule.task.name, datamodule.labels),
        typed.variant,
        datamodule.task.name,
        BuildContext(datamodule=datamodule),
    )
    for name, param in adapter.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    unmerged = adapter.model.eval()
    # the merge check's own merge (into a copy)
    merged = MergeCheck(run_dir=cfg.paths.run_dir, merged_dir=f"{cfg.paths.run_dir}/merged").merge(unmerged).eval()
    batch = next(iter(datamodule.val_dataloader()))
    batch = {k: v for k, v in batch.items() if k != "labels"}
    prompt = tokenizer("Convert to ISO form: March 7, 1984", return_tensors="pt")
    models = {"base": base, "merged": merged, "adapter (unmerged)": unmerged}
    forward: dict[str, list[float]] = {name: [] for name in models}
    generate: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        model(**batch)
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model(**batch)
            forward[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            generate[name].append(time.perf_counter() - started)
    return {
        "batch_shape": list(batch["input_ids"].shape),
        "new_tokens": new_tokens,
        "forward": {k: median(v) for k, v in forward.items()},
        "generate": {k: median(v) for k, v in generate.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    """Print the latency table with ratios against the base model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        emit(measure(args.overrides, args.repeats, args.new_tokens))
        return {}
    child = ["-m", "benchmarks.inference", "--child", "--repeats", str(args.repeats)]
    result = run_child([*child, "--new-tokens", str(args.new_tokens), *args.overrides])
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """The latency table as markdown."""
    fwd, gen = result["forward"], result["generate"]
    header = [
        "model",
        f"forward, batch {result['batch_shape']} (ms)",
        "÷ base",
        f"generate {result['new_tokens']} tokens, 1 prompt (ms)",
        "÷ base",
    ]
    rows = [
        [name, f"{fwd[name] * 1e3:.1f}", f"{fwd[name] / fwd['base']:.3f}"]
        + [f"{gen[name] * 1e3:.1f}", f"{gen[name] / gen['base']:.3f}"]
        for name in fwd
    ]
    lines = markdown_table(header, rows)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
