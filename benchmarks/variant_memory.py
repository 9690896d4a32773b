"""Training-step memory per variant at the same r and batch, against LoRA (`make bench`).

Each variant runs in its own process (peak RSS is per process): load the model, build the variant,
take one warm-up step, reset the kernel's peak-RSS counter, then time and measure `--steps`
optimizer steps on one fixed batch. Two figures per variant:
- activation bytes autograd keeps for the backward pass (tensors saved by the forward, frozen
  weights excluded), counted exactly with `torch.autograd.graph.saved_tensors_hooks`;
- peak RSS above the resident size before the measured steps (/proc/self/status VmHWM - VmRSS),
  after freed memory is handed back to the kernel (malloc_trim), so that it is the steps' own peak
  above the live set, not what the allocator happened to keep from the warm-up step.

python -m benchmarks.variant_memory                      # default model, batch 8
python -m benchmarks.variant_memory model=tiny --variants lora,lora_fa
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [
    "lora",
    "lora_fa",
    "lora_fa+lorafa",
    "vera",
    "lora_drop",
    "dora",
    "rslora",
    "pissa",
    "loraplus",
    "delta_lora",
]


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _release_free_memory() -> None:
    """Hand memory the process has freed back to the kernel (glibc's malloc_trim), so that the
    resident size is the live set: what glibc kept from earlier steps would otherwise serve the
    measured step unseen, by an amount that depends on the allocator's history, not the variant."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)


def measure(case: str, overrides: list[str], r: int, steps: int) -> dict:
    """Build `case` (variant[+optimizer]) on the configured model and measure training steps."""
    import torch
    from hydra.utils import instantiate

    from benchmarks.common import compose
    from loralab.data.datamodule import LoraDataModule
    from loralab.validation import validate
    from loralab.variants import get_variant
    from loralab.variants.registry import BuildContext

    variant, _, optimizer = case.partition("+")
    extra = [f"optimizer={optimizer}"] if optimizer else []
    if variant == "lora_drop":
        extra.append("variant.stage1_steps=2")
    cfg = compose([f"variant={variant}", f"variant.r={r}", *extra, *overrides])
    typed = validate(cfg)
    torch.manual_seed(cfg.seed)
    source = instantiate(cfg.model)
    datamodule = LoraDataModule(
        typed.data, source.load_tokenizer(), cache_dir=cfg.paths.cache_dir, task=source.task_for(typed.data)
    )
    datamodule.setup("fit")
    model = source.load_model(datamodule.task.name, datamodule.labels)
    adapter = get_variant(variant).build(
        model, typed.variant, datamodule.task.name, BuildContext(datamodule=datamodule, seed=cfg.seed)
    )
    for name, param in adapter.model.named_parameters():
        param.requires_grad_(adapter.is_trainable(name))
    optimizer_obj = adapter.make_optimizer(instantiate(cfg.optimizer))
    batch = next(iter(datamodule.train_dataloader()))
    model = adapter.model.train()
    frozen = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}

    def step(count_saved: dict | None = None) -> None:
        if count_saved is None:
            loss = model(**batch).loss
        else:

            def pack(t):
                storage = t.untyped_storage()
                if t.data_ptr() not in frozen and storage.data_ptr() not in frozen:
                    count_saved[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(**batch).loss
        loss.backward()
        optimizer_obj.step()
        optimizer_obj.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state allocated
    _release_free_memory()  # the baseline is the live set: weights, gradients, optimizer state
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kb("VmRSS")
    saved: dict[int, int] = {}
    started = time.perf_counter()
    step(saved)
    for _ in range(steps - 1):
        step()
    seconds = (time.perf_counter() - started) / steps
    return {
        "case": case,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "saved_activation_mb": sum(saved.values()) / 2**20,
        "peak_rss_over_baseline_mb": (_status_kb("VmHWM") - baseline) / 1024,
        "seconds_per_step": seconds,
        "batch_tokens": int(batch["attention_mask"].sum()),
        "batch_shape": list(batch["input_ids"].shape),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every case in its own process and print the table with ratios against LoRA."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny data=word_sort")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.overrides, args.r, args.steps)))
        return []
    rows = []
    for case in args.variants.split(","):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.variant_memory",
            "--one",
            case,
            "--r",
            str(args.r),
            "--steps",
            str(args.steps),
        ]
        done = subprocess.run([*cmd, *args.overrides], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{case}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(format_rows(rows, args.r, args.overrides))
    return rows


def format_rows(rows: list[dict], r: int, overrides: list[str]) -> str:
    """The memory table as markdown, with ratios against LoRA."""
    base = next((row for row in rows if row["case"] == "lora"), rows[0] if rows else None)
    lines = [
        f"r={r}, batch {rows[0]['batch_shape'] if rows else '-'}, overrides {overrides or 'none'}",
        "",
        "| variant | trainable | saved activations (MB) | vs lora | peak RSS over baseline (MB) | vs lora | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        saved, peak = row["saved_activation_mb"], row["peak_rss_over_baseline_mb"]
        lines.append(
            f"| {row['case']} | {row['trainable_params']:,} | {saved:.1f} | "
            f"{saved / base['saved_activation_mb']:.3f} | {peak:.1f} | "
            f"{peak / base['peak_rss_over_baseline_mb']:.3f} | {row['seconds_per_step']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
