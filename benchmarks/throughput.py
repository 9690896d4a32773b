"""Training throughput: loralab against a hand-written PyTorch + peft loop and transformers'
Trainer + peft, on the same model, data order, batches, padding, steps and precision; and how
close each comes to this machine's measured matrix-product peak (model FLOPs utilisation).

Each run is a process of its own; the three are interleaved, each repeat starting one further
along (loralab, loop, Trainer; loop, Trainer, loralab; ...) so that a noisy neighbour slows all of
them alike, and the medians are compared. Throughput is
real (unpadded) tokens over the time from the start of step `warmup` to the start of step
`warmup + steps`: everything between two steps (logging, callbacks, the data loader) counts.

python -m benchmarks.throughput                     # default model and task, fp32, CPU
python -m benchmarks.throughput model=tiny data=word_sort --steps 5 --repeats 1
python -m benchmarks.throughput --precision bf16-mixed --device cuda   # the three in bf16 on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, compose, emit, median, run_child

IMPLEMENTATIONS = ("loralab", "loop", "trainer")
PRECISIONS = ("32-true", "bf16-mixed")
DEVICES = ("cpu", "cuda")
# loralab's own speed switches, measured beside the default (they change which examples share a
# batch, so they are not compared batch for batch with the baselines)
SWITCHES = {
    "loralab data.group_by_length=true": ["data.group_by_length=true"],
    # the output head at every position, as the loop and the Trainer compute it
    "loralab compute.labelled_head=false": ["compute.labelled_head=false"],
    # one dropout mask per adapter, as peft (and the baselines) draw them
    "loralab compute.shared_dropout=false": ["compute.shared_dropout=false"],
    # torch's float Bernoulli mask instead of 16-bit integer draws and a masked fill
    "loralab compute.fast_dropout=false": ["compute.fast_dropout=false"],
    # every row whole in the training steps, as the baselines compute them (not the batch's common
    # first tokens once): the CPU's line, where auto turns it on
    "loralab compute.shared_prefix_train=false": ["compute.shared_prefix_train=false"],
    # the batch's common first tokens once on a GPU too: the GPU's line, where auto turns it off
    "loralab compute.shared_prefix_train=true": ["compute.shared_prefix_train=true"],
    # examples packed into rows of data.max_length, each attending to itself only
    "loralab data.packing=true": ["data.packing=true"],
    # the decoder blocks compiled for the training steps (the compile time falls in the warm-up)
    "loralab compute.compile=true": ["compute.compile=true"],
}


# ---- the baselines ------------------------------------------------------------------------
def _prepared(overrides: list[str]) -> tuple[Any, Any, Any, Any, list[int]]:
    """Config, tokenizer, tokenized train rows and model as loralab prepares them, and the order in
    which loralab's sampler visits the rows in the first epoch."""
    import torch
    from hydra.utils import instantiate

    from loralab.data.datamodule import LoraDataModule, ResumableRandomSampler
    from loralab.validation import validate

    cfg = compose(overrides)
    typed = validate(cfg)
    if typed.variant.name != "lora":
        raise SystemExit("the throughput baselines are plain peft LoRA: run with variant=lora")
    torch.manual_seed(cfg.seed)
    source = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    tokenizer.padding_side = "right"  # as loralab pads
    datamodule = LoraDataModule(typed.data, tokenizer, cache_dir=cfg.paths.cache_dir, task=source.task_for(typed.data))
    datamodule.setup("fit")
    rows = datamodule.train_set.select_columns(["input_ids", "labels"])
    order = list(iter(ResumableRandomSampler(len(rows), typed.data.seed)))
    model = source.load_model(datamodule.task.name, datamodule.labels)
    return cfg, tokenizer, rows, model, order


def _peft_model(model: Any, variant: Any) -> Any:
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    targets = variant.target_modules
    config = LoraConfig(
        r=variant.r,
        lora_alpha=variant.alpha,
        lora_dropout=variant.dropout,
        target_modules=OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _counts(model: Any) -> dict:
    """What the FLOP count needs: weights of the base's linear layers (every matrix product a
    token passes through, the tied output layer included), adapter parameters, layers, width."""
    import torch

    linear = adapter = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            linear += module.weight.numel()
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return {
        "linear_params": linear,
        "adapter_params": adapter,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
    }


def _sync(device: str) -> None:
    """Wait for the device's queued work, so that a step's start time is when the last one ended."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_loop(overrides: list[str], total: int, profile: bool, precision: str = "32-true", device: str = "cpu") -> dict:
    """The minimal hand-written loop: forward, backward, clip, AdamW, cosine schedule; under bf16
    autocast over fp32 weights for bf16-mixed, as Lightning and the Trainer compute it. Its forward
    builds no key/value cache (`use_cache=False`), as the Trainer's and loralab's do: the stricter
    baseline, since a cache nothing reads only costs time."""
    import torch
    from transformers import DataCollatorForSeq2Seq, get_cosine_schedule_with_warmup

    cfg, tokenizer, rows, model, order = _prepared(overrides)
    model = _peft_model(model, cfg.variant).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.1 * total), total)
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    loader = torch.utils.data.DataLoader(rows, batch_size=cfg.data.train_batch_size, sampler=order, collate_fn=collate)
    clip = cfg.trainer.gradient_clip_val
    starts, wall, tokens, padded = [], [], [], []

    def step(batch: dict) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    batches = iter(loader)
    for _ in range(total):
        _sync(device)
        starts.append(time.perf_counter())
        wall.append(time.time())
        batch = next(batches)
        tokens.append(int(batch["attention_mask"].sum()))
        padded.append(batch["attention_mask"].numel())
        step(batch)
    _sync(device)
    starts.append(time.perf_counter())
    result = {
        "starts": starts,
        "wall": wall,
        "tokens": tokens,
        "padded": padded,
        "batch_size": cfg.data.train_batch_size,
    }
    result.update(_counts(model))
    if profile:
        result["profile"] = _profile(step, [next(batches) for _ in range(2)], device)
    return result


def _profile(step: Any, batches: list[dict], device: str = "cpu") -> dict:
    """Where a step's time goes: matrix products (mm, addmm, bmm, attention) against the rest (on a
    GPU, the time its kernels ran)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            step(batch)
        _sync(device)
    matmul = other = 0.0
    top: list[tuple[str, float]] = []
    attention = (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_cudnn_attention",
    )
    for event in prof.key_averages():
        own = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
        seconds = own / 1e6
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm", *attention):
            matmul += seconds
        else:
            other += seconds
        top.append((event.key, seconds))
    top.sort(key=lambda kv: -kv[1])
    return {
        "steps": len(batches),
        "matmul_s": matmul,
        "other_s": other,
        "top": [[k, round(s / len(batches), 4)] for k, s in top[:8]],
    }


def run_trainer(overrides: list[str], total: int, precision: str = "32-true", device: str = "cpu") -> dict:
    """transformers' Trainer + peft, same order, padding, clipping, rate, logging interval and
    precision (its bf16=True: autocast over fp32 weights, on the CPU too)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    cfg, tokenizer, rows, model, order = _prepared(overrides)
    model = _peft_model(model, cfg.variant)
    starts: list[float] = []
    wall: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            _sync(device)
            starts.append(time.perf_counter())
            wall.append(time.time())

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            _sync(device)
            starts.append(time.perf_counter())

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return order

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="loralab-bench-trainer-"),
        per_device_train_batch_size=cfg.data.train_batch_size,
        max_steps=total,
        learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        warmup_steps=int(0.1 * total),
        lr_scheduler_type="cosine",
        max_grad_norm=cfg.trainer.gradient_clip_val or 0.0,
        logging_steps=cfg.trainer.log_every_n_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=precision == "bf16-mixed",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=cfg.seed,
    )
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Timer()])
    torch.manual_seed(cfg.seed)
    trainer.train()
    lengths = [len(rows[i]["input_ids"]) for i in order[: total * cfg.data.train_batch_size]]
    b = cfg.data.train_batch_size
    tokens = [sum(lengths[i * b : (i + 1) * b]) for i in range(total)]
    return {"starts": starts, "wall": wall, "tokens": tokens, **_counts(model)}


def train_measured(overrides: list[str], total: int, callback: str, out: Path, precision: str, device: str) -> dict:
    """`loralab-train` as users run it (default callbacks and loggers) for `total` steps with the
    measuring callback `callback` (a class path taking `out`) added, validation moved past the
    measured steps and no generation or merge check; the JSON the callback wrote to `out`."""
    import subprocess

    args = [
        "-m",
        "loralab",
        *(["trainer=gpu"] if device == "cuda" else []),
        f"precision={precision}",
        *overrides,
        f"trainer.max_steps={total}",
        f"trainer.val_check_interval={total}",
        "validate_before=false",
        "+trainer.limit_val_batches=1",
        "data.generation_examples=0",
        "callbacks.merge_check=null",
        f"+callbacks.measure._target_={callback}",
        f"+callbacks.measure.out={out}",
        f"hydra.run.dir={out.parent / 'run'}",
    ]
    # from the repository root, with it on the path: the callbacks live in `benchmarks`
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"loralab-train failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_loralab(overrides: list[str], total: int, precision: str = "32-true", device: str = "cpu") -> dict:
    """`loralab-train` itself with a step timer (train_measured); at the baselines' precision, not the
    presets' auto, on one GPU (trainer=gpu) for device cuda."""
    out = Path(tempfile.mkdtemp(prefix="loralab-bench-run-")) / "steps.json"
    started = time.time()
    result = train_measured(overrides, total, "benchmarks.step_timer.StepTimer", out, precision, device)
    result["launched"] = started
    return result


# ---- figures ------------------------------------------------------------------------------
def tokens_per_second(run: dict, warmup: int, steps: int) -> float:
    """Real tokens of steps warmup..warmup+steps-1 over the time between their starts."""
    starts = run["starts"]
    seconds = starts[warmup + steps] - starts[warmup]
    return sum(run["tokens"][warmup : warmup + steps]) / seconds


def flops_per_token(counts: dict, width: float) -> float:
    """Model FLOPs per token of one LoRA training step with a frozen base: the forward and the
    input gradients of every base matrix product (2 + 2 per weight), the adapter's forward and
    both its gradients (2 + 2 + 2), and attention's two products over `width` positions (3 passes)."""
    return (
        4 * counts["linear_params"] + 6 * counts["adapter_params"] + 3 * 4 * counts["layers"] * width * counts["hidden"]
    )


def matmul_peak(
    dtype_name: str, sizes: tuple[int, ...] = (256, 512, 768, 1024, 2048), repeats: int = 3, device: str = "cpu"
) -> float:
    """This machine's matrix-product rate (FLOP/s): the best, over square sizes, of the product a
    linear layer computes (`F.linear`, which models call; bf16 takes another kernel than `mm`). On a
    GPU, sizes up to 8192 and each timing waits for the kernel (fp32 there may use TF32 tensor cores
    only where torch allows it; the models then run under the same setting)."""
    import torch

    if device == "cuda":
        sizes = tuple(sorted({*sizes, 4096, 8192}))
    dtype = getattr(torch, dtype_name)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=dtype, device=device)
        w = torch.randn(size, size, dtype=dtype, device=device)
        torch.nn.functional.linear(a, w)
        seconds = float("inf")
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            torch.nn.functional.linear(a, w)
            _sync(device)
            seconds = min(seconds, time.perf_counter() - started)
        best = max(best, 2 * size**3 / seconds)
    return best


# the lines that would measure a device's default again (compute.shared_prefix_train=auto)
SAME_AS_DEFAULT = {
    "cpu": {"loralab compute.shared_prefix_train=true"},
    "cuda": {"loralab compute.shared_prefix_train=false"},
}


def switch_lines(switches: list[str] | None, device: str) -> list[str]:
    """The lever lines to measure: `switches` as given, or every line that flips a default on `device`."""
    if switches is None:
        return [s for s in SWITCHES if s not in SAME_AS_DEFAULT[device]]
    return [s for s in SWITCHES if s in switches]


def measure(
    overrides: list[str],
    warmup: int,
    steps: int,
    repeats: int,
    switches: list[str] | None = None,
    precision: str = "32-true",
    device: str = "cpu",
) -> dict:
    """Interleaved runs of the three implementations and the switch lines (all, or `switches`), all
    at `precision` on `device`; medians, ratios and utilisation."""
    check_overrides(overrides)
    total = warmup + steps + 1
    lines = switch_lines(switches, device)
    runs: dict[str, list[dict]] = {name: [] for name in (*IMPLEMENTATIONS, *lines)}
    names = list(runs)
    for repeat in range(repeats):
        # each repeat starts with the next implementation, so that none always runs in the same
        # place of the cycle (after the same neighbour, at the same point of a noisy minute)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            if name in SWITCHES:
                run = run_loralab([*overrides, *SWITCHES[name]], total, precision, device)
            elif name == "loralab":
                run = run_loralab(overrides, total, precision, device)
            else:
                extra = ["--profile"] if name == "loop" and repeat == 0 else []
                where = ["--precision", precision, "--device", device]
                run = run_child(
                    ["-m", "benchmarks.throughput", "--impl", name, "--total", str(total), *where, *extra, *overrides]
                )
            runs[name].append(run)
            print(f"  {name} run {repeat + 1}: {tokens_per_second(run, warmup, steps):.1f} tokens/s", file=sys.stderr)
    reference = runs["loop"][0]["tokens"][: total - 1]
    for name in ("loralab", "trainer"):
        got = runs[name][0]["tokens"][: total - 1]
        if got != reference:
            raise RuntimeError(f"{name} trained on other batches than the loop: tokens per step {got} vs {reference}")
    rates = {name: [tokens_per_second(r, warmup, steps) for r in rs] for name, rs in runs.items()}
    counts = {k: runs["loop"][0][k] for k in ("linear_params", "adapter_params", "layers", "hidden")}
    return {
        "runs": runs,
        "rates": rates,
        "counts": counts,
        "profile": runs["loop"][0].get("profile"),
        "precision": precision,
        "device": device,
    }


def check_overrides(overrides: list[str]) -> None:
    """The precision and the device are the benchmark's own options, which all three implementations
    follow: refuse them as config overrides, which the baselines would not see."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("precision", "trainer.precision"):
            choices = ", ".join(PRECISIONS)
            raise SystemExit(
                f"benchmarks: {override!r}: set the precision with --precision (one of {choices}), "
                "which the loop and the Trainer follow too"
            )
        if key in ("trainer", "trainer.accelerator"):
            raise SystemExit(
                f"benchmarks: {override!r}: set the device with --device (one of {', '.join(DEVICES)}), "
                "which the loop and the Trainer follow too"
            )


def main(argv: list[str] | None = None) -> dict:
    """Print tokens/s per implementation, loralab's ratios against both, and MFU."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny data=word_sort")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--switch",
        action="append",
        choices=list(SWITCHES),
        metavar="LINE",
        help="measure only these switch lines (repeatable; default: all), "
        "e.g. --switch 'loralab compute.fast_dropout=false'",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="32-true", help="all three compute at this precision"
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="all three train on this device")
    parser.add_argument("--impl", choices=["loop", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.impl == "loop":
        emit(run_loop(args.overrides, args.total, args.profile, args.precision, args.device))
        return {}
    if args.impl == "trainer":
        emit(run_trainer(args.overrides, args.total, args.precision, args.device))
        return {}
    check_device(args.device)
    result = measure(args.overrides, args.warmup, args.steps, args.repeats, args.switch, args.precision, args.device)
    print(format_result(result, args.warmup, args.steps))
    return result


def check_device(device: str) -> None:
    """Refuse --device cuda where torch sees no GPU, before anything loads."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "benchmarks: --device cuda, but torch sees no CUDA GPU here: leave --device out to measure the CPU"
            )


def format_result(result: dict, warmup: int, steps: int) -> str:
    """The throughput table as markdown."""
    rates = result["rates"]
    med = {name: median(values) for name, values in rates.items()}
    lines = [
        "| implementation | tokens/s (median) | runs | loralab ÷ this | warm-up steps (s, median) |",
        "|---|---|---|---|---|",
    ]
    for name in rates:
        runs = ", ".join(f"{v:.1f}" for v in rates[name])
        # the steps before the measured ones: a compile's time falls there
        warm = median([r["starts"][warmup] - r["starts"][0] for r in result["runs"][name]])
        lines.append(f"| {name} | {med[name]:.1f} | {runs} | {med['loralab'] / med[name]:.3f} | {warm:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
