"""One evaluation of a split (what validation and the test split compute: the loss over every
row and the greedy answers that exact match scores) with compute.prompt_once on and off, at the
loss batch sizes given, interleaved in one process, medians compared.

Off: the loss batches, then the answers generated apart (each prompt through the model twice);
on: each loss batch answers its rows on the way (each prompt once). Both with compute.shared_prefix
and the labelled head, as the default run. The adapter is loralab's LoRA at initialisation
(B = 0: the base model's answers) or `--adapter DIR` (a trained one: its answers' lengths).

python -m benchmarks.evaluation --repeats 3 --batch-sizes 32,64 [--adapter outputs/.../adapter]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import emit, machine, markdown_table, median, prepared, run_child


def measure(overrides: list[str], repeats: int, batch_sizes: list[int], adapter: str | None) -> dict:
    """Median seconds per evaluation of the validation split for each (switch, batch size)."""
    import torch

    from loralab.evaluation import Answering, greedy_answers, loss_sums
    from loralab.variants import get_variant
    from loralab.variants.registry import BuildContext

    torch.set_grad_enabled(False)
    cfg, typed, source, tokenizer, datamodule = prepared(overrides)
    task = datamodule.task
    base = source.load_model(task.name, datamodule.labels)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, adapter).eval()
    else:
        built = get_variant(typed.variant.name).build(
            base, typed.variant, task.name, BuildContext(datamodule=datamodule)
        )
        model = built.model.eval()
    rows = datamodule.generation_set
    prompts = [r["prompt_ids"] for r in rows]
    loaders = {}
    for size in batch_sizes:
        datamodule.cfg.eval_batch_size = size
        loaders[size] = list(datamodule.val_dataloader())

    def apart(size: int) -> tuple[float, list[str]]:
        sums = loss_sums(model, task, loaders[size], "cpu", labelled=True, shared_prefix=True)
        answers = greedy_answers(model, task, tokenizer, prompts, typed.data.max_new_tokens, size, True)
        return float(sums[0] / sums[1]), answers

    def once(size: int) -> tuple[float, list[str]]:
        answering = Answering(True, rows, tokenizer, typed.data.max_new_tokens)
        sums = loss_sums(model, task, loaders[size], "cpu", labelled=True, shared_prefix=True, answering=answering)
        answers = answering.collected()
        if answers is None:
            raise SystemExit("compute.prompt_once does not run on this model or data: nothing to compare")
        return float(sums[0] / sums[1]), answers

    ways = {f"{name}, batch {size}": (fn, size) for size in batch_sizes for name, fn in (("off", apart), ("on", once))}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results = {name: fn(size) for name, (fn, size) in ways.items()}  # warm-up, and the model's checks
    for _ in range(repeats):
        for name, (fn, size) in ways.items():
            started = time.perf_counter()
            fn(size)
            seconds[name].append(time.perf_counter() - started)
    first = next(iter(results.values()))
    return {
        "rows": len(datamodule.val_set),
        "answered": len(rows),
        "adapter": adapter or "LoRA at initialisation (B = 0)",
        "machine": machine(),
        "seconds": seconds,
        "median": {k: median(v) for k, v in seconds.items()},
        "loss": {k: v[0] for k, v in results.items()},
        "same_answers": all(v[1] == first[1] for v in results.values()),
    }


def main(argv: list[str] | None = None) -> dict:
    """Print the table with each line's ratio against prompt_once off at the first batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes takes whole numbers separated by commas, got {args.batch_sizes!r}")
    if args.repeats < 1 or not sizes or min(sizes) < 1:
        parser.error("--repeats and every batch size must be at least 1")
    if args.child:
        emit(measure(args.overrides, args.repeats, sizes, args.adapter))
        return {}
    child = ["-m", "benchmarks.evaluation", "--child", "--repeats", str(args.repeats)]
    child += ["--batch-sizes", args.batch_sizes]
    result = run_child([*child, *(["--adapter", args.adapter] if args.adapter else []), *args.overrides])
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """The table as markdown."""
    med = result["median"]
    baseline = next(iter(med.values()))
    header = ["compute.prompt_once", "seconds (each repeat)", "median", "÷ first line", "val/loss"]
    rows = [
        [name, ", ".join(f"{v:.2f}" for v in values), f"{med[name]:.2f}", f"{med[name] / baseline:.3f}"]
        + [f"{result['loss'][name]:.6g}"]
        for name, values in result["seconds"].items()
    ]
    lines = [
        f"Validation split: {result['rows']} rows, {result['answered']} answered; adapter: {result['adapter']}; "
        f"the same answers in every line: {result['same_answers']}.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
