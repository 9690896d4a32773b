"""Operations dispatched per training step: the hand-written loop's, and loralab's with each
launch-heavy lever on and off (`python -m benchmarks.dispatch`).

On a GPU, a step of the default experiment's size (8 rows of ~60 tokens through a 135M model) is
bound by kernel launches, not arithmetic: the first H200 run trained the loop at ~3,000 tokens/s
at fp32, ~150 ms a step, where the arithmetic takes a few. What the CPU measures here, every
operation that reaches PyTorch's dispatcher in one step (forward, backward, clipping, optimizer),
is what the GPU launches kernels for, give or take views (no kernel) and fused optimizer steps
(AdamW's per-parameter operations on the CPU, a few multi-tensor launches on a GPU, in both
implementations alike). It is counted, not timed: the same on every CPU, and meaningful on a
machine without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import emit, run_child

# the loralab lines: the default, and the levers that change how many operations a step runs
# (counted on the CPU, where shared_prefix_train=auto is on; on a GPU auto turns it off)
LINES = {
    "loralab (shared_prefix_train on: auto on a CPU)": [],
    "loralab compute.shared_prefix_train=false (auto on a GPU)": ["compute.shared_prefix_train=false"],
}
COUNTED_STEP = 2  # after two steps: lazy set-up (optimizer state, probes) is behind


class Counter(TorchDispatchMode):
    """Counts every operation dispatched while it is active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _record(ops: collections.Counter) -> dict:
    return {"total": sum(ops.values()), "top": ops.most_common(8)}


class StepCounter(pl.Callback):
    """For loralab runs (`+callbacks.dispatch._target_=benchmarks.dispatch.StepCounter`): counts one
    training step, from its batch's start to its end (forward, backward, the callbacks' checks,
    clipping and the optimizer step), and writes the counts to `out` as JSON."""

    def __init__(self, out: str, step: int = COUNTED_STEP) -> None:
        self.out, self.step = out, step
        self.counter: Counter | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.step:
            self.counter = Counter()
            self.counter.__enter__()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            Path(self.out).write_text(json.dumps(_record(self.counter.ops)))
            self.counter = None


def count_loop(overrides: list[str]) -> dict:
    """The throughput benchmark's hand-written loop (forward, backward, clip, AdamW), one step counted."""
    from transformers import DataCollatorForSeq2Seq

    from benchmarks.throughput import _peft_model, _prepared

    cfg, tokenizer, rows, model, order = _prepared(overrides)
    model = _peft_model(model, cfg.variant)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    loader = torch.utils.data.DataLoader(rows, batch_size=cfg.data.train_batch_size, sampler=order, collate_fn=collate)
    clip = cfg.trainer.gradient_clip_val
    batches = iter(loader)
    counter = Counter()
    for step in range(COUNTED_STEP + 1):
        batch = next(batches)
        with counter if step == COUNTED_STEP else contextlib.nullcontext():
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return _record(counter.ops)


def count_loralab(overrides: list[str]) -> dict:
    """`loralab-train` as users run it (default callbacks), one training step counted."""
    from benchmarks.throughput import train_measured

    out = Path(tempfile.mkdtemp(prefix="loralab-bench-dispatch-")) / "ops.json"
    return train_measured(overrides, COUNTED_STEP + 1, "benchmarks.dispatch.StepCounter", out, "32-true", "cpu")


def measure(overrides: list[str]) -> dict:
    """Counts of the loop and of each loralab line, on the CPU at fp32."""
    counts = {"loop": run_child(["-m", "benchmarks.dispatch", "--impl", "loop", *overrides])}
    for name, extra in LINES.items():
        counts[name] = count_loralab([*overrides, *extra])
        print(f"  {name}: {counts[name]['total']} operations", file=sys.stderr)
    return counts


def format_result(counts: dict) -> str:
    loop = counts["loop"]["total"]
    rows = [
        "| implementation | operations per step | ÷ loop |",
        "| --- | ---: | ---: |",
    ]
    for name, record in counts.items():
        rows.append(f"| {name} | {record['total']:,} | {record['total'] / loop:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny")
    parser.add_argument("--impl", choices=["loop"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.impl == "loop":
        emit(count_loop(args.overrides))
        return {}
    counts = measure(args.overrides)
    print(format_result(counts))
    return counts


if __name__ == "__main__":
    main()
