"""`make bench`: every benchmark, each against its baseline in the same command, written to
BENCHMARKS.md with the date, the machine and the command.

python -m benchmarks                          # all sections -> BENCHMARKS.md (~30 min here)
python -m benchmarks --sections startup,inference --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

from benchmarks import inference, startup, sweep_time, throughput, variant_memory
from benchmarks.common import machine, median, run_child

SECTIONS = ("throughput", "bf16", "startup", "memory", "inference", "sweep")


def utilisation(result: dict, peak: float, warmup: int, steps: int) -> dict:
    """Model FLOPs utilisation of each implementation against the matrix-product peak, and what the
    loop's profile says stands between it and 1."""
    loop = result["runs"]["loop"][0]
    real = sum(loop["tokens"][warmup : warmup + steps])
    padded = sum(loop["padded"][warmup : warmup + steps])
    width = padded / steps / loop["batch_size"]
    per_token = throughput.flops_per_token(result["counts"], width)
    out = {
        "flops_per_token": per_token,
        "width": width,
        "padding_share": 1 - real / padded,
        "mfu": {name: median(rates) * per_token / peak for name, rates in result["rates"].items()},
    }
    profile = result.get("profile")
    if profile:
        step_s = (profile["matmul_s"] + profile["other_s"]) / profile["steps"]
        matmul_s = profile["matmul_s"] / profile["steps"]
        step_flops = per_token * real / steps
        out["matmul_share"] = matmul_s / step_s
        out["matmul_rate"] = step_flops / matmul_s
        out["top_ops"] = profile["top"]
    return out


def bf16_step(overrides: list[str], peak32: float, peak16: float, counts: dict) -> dict:
    """One step of the hand-written loop under bf16 autocast (what precision=bf16-mixed does on
    CPU) after one warm-up step, against the same loop in fp32."""
    rates = {}
    for label, extra in (("32-true", []), ("bf16-mixed", ["--autocast", "bf16"])):
        run = run_child(["-m", "benchmarks.throughput", "--impl", "loop", "--total", "3", *extra, *overrides])
        rates[label] = throughput.tokens_per_second(run, 1, 1)
        width = run["padded"][1] / run["batch_size"]
    per_token = throughput.flops_per_token(counts, width)
    return {
        "rates": rates,
        "mfu": {
            "32-true": rates["32-true"] * per_token / peak32,
            "bf16-mixed": rates["bf16-mixed"] * per_token / peak16,
        },
        "peak": {"32-true": peak32, "bf16-mixed": peak16},
    }


def main(argv: list[str] | None = None) -> None:
    """Run the chosen sections, print each table, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides for throughput, bf16, memory, inference")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per throughput implementation")
    parser.add_argument("--steps", type=int, default=6, help="measured training steps per throughput run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="report file (default: BENCHMARKS.md when every section runs)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    out = args.out or ("BENCHMARKS.md" if set(sections) == set(SECTIONS) else None)

    import torch

    started = time.time()
    facts = machine()
    facts["torch_threads"] = torch.get_num_threads()
    parts: list[str] = []
    results: dict = {"machine": facts}
    peak32 = throughput.matmul_peak("float32")
    peak16 = throughput.matmul_peak("bfloat16", (128, 256, 512, 768), repeats=2)
    results["peak"] = {"float32": peak32, "bfloat16": peak16}

    def section(name: str, title: str, body: str) -> None:
        print(f"\n## {title}\n{body}", flush=True)
        parts.append(f"## {title}\n{body}\n")

    counts = None
    if "throughput" in sections:
        print("throughput: loralab, loop, Trainer, interleaved ...", file=sys.stderr)
        result = throughput.measure(args.overrides, args.warmup, args.steps, args.repeats)
        results["throughput"] = {k: v for k, v in result.items() if k != "runs"}
        counts = result["counts"]
        use = utilisation(result, peak32, args.warmup, args.steps)
        results["utilisation"] = use
        med = {k: median(v) for k, v in result["rates"].items()}
        body = (
            f"Default model and task (SmolLM2-135M fp32, dates, batch 8, LoRA r=8 all-linear), {args.warmup} warm-up "
            f"+ {args.steps} measured steps, {args.repeats} interleaved runs each; tokens are real (unpadded) "
            "tokens, time runs from the start of the first measured step to the start of the step after the last.\n\n"
            + throughput.format_result(result, args.warmup, args.steps)
            + f"\n\n**loralab ÷ hand-written loop = {med['loralab'] / med['loop']:.3f}** (target ≥ 0.97); "
            f"**loralab ÷ Trainer = {med['loralab'] / med['trainer']:.3f}** (target ≥ 1.0)."
        )
        section("throughput", "1. Training throughput", body)
        section(
            "utilisation",
            "2. Closeness to the limit (model FLOPs utilisation)",
            _utilisation_text(use, peak32, peak16, med),
        )
    if "bf16" in sections:
        print("bf16: one autocast step ...", file=sys.stderr)
        if counts is None:
            counts = {
                k: v
                for k, v in run_child(
                    ["-m", "benchmarks.throughput", "--impl", "loop", "--total", "1", *args.overrides]
                ).items()
                if k in ("linear_params", "adapter_params", "layers", "hidden")
            }
        result = bf16_step(args.overrides, peak32, peak16, counts)
        results["bf16"] = result
        section("bf16", "2b. bf16 on this CPU", _bf16_text(result, facts))
    if "startup" in sections:
        print("startup ...", file=sys.stderr)
        result = startup.main(["--repeats", "3"])
        results["startup"] = result
        section("startup", "3. Start-up", startup.format_result(result))
    if "memory" in sections:
        print("memory per variant ...", file=sys.stderr)
        rows = variant_memory.main([*args.overrides, "--steps", "2"])
        results["memory"] = rows
        section(
            "memory",
            "4. Peak memory per variant (r=8, same batch)",
            variant_memory.format_rows(rows, 8, args.overrides),
        )
    if "inference" in sections:
        print("inference after merge ...", file=sys.stderr)
        result = inference.main(args.overrides)
        results["inference"] = result
        section("inference", "5. Inference after merge", inference.format_result(result))
    if "sweep" in sections:
        print("sweep wall time ...", file=sys.stderr)
        result = sweep_time.main([])
        results["sweep"] = result
        section("sweep", "6. Sweep wall time", sweep_time.format_result(result))

    minutes = (time.time() - started) / 60
    command = (
        "make bench"
        if not argv and set(sections) == set(SECTIONS)
        else "python -m benchmarks " + shlex.join(argv or sys.argv[1:])
    )
    header = (
        "# Benchmarks\n\n"
        f"Written by `{command}` on {datetime.date.today().isoformat()} in {minutes:.0f} min. Every figure is "
        "measured against its baseline in the same command, on the same machine; ratios are of medians.\n\n"
        f"Machine: {facts.get('cpu')}, {facts['cores']} cores ({facts['torch_threads']} torch threads), "
        f"{facts.get('memory_gib')} GiB, instruction sets {', '.join(facts.get('isa', [])) or '-'}; "
        f"Python {facts['python']}, torch {facts['torch']}, lightning {facts['lightning']}, "
        f"transformers {facts['transformers']}, peft {facts['peft']}.\n\n"
        "Measured matrix-product peak (a linear layer's product, square sizes 256-2048, best of several): "
        f"fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s.\n\n"
    )
    if out:
        Path(out).write_text(header + "\n".join(parts))
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwrote {out}", file=sys.stderr)


def _utilisation_text(use: dict, peak32: float, peak16: float, med: dict) -> str:
    lines = [
        f"Model FLOPs per real token: {use['flops_per_token'] / 1e6:.0f} M (4 × base matrix-product weights for the "
        "frozen base's forward and input gradients, 6 × adapter parameters, attention's products over the batch "
        f"width of {use['width']:.0f} positions). Peak: fp32 {peak32 / 1e9:.1f} GFLOP/s.",
        "",
        "| implementation | model GFLOP/s | MFU (fp32) |",
        "|---|---|---|",
    ]
    for name, mfu in use["mfu"].items():
        lines.append(f"| {name} | {mfu * peak32 / 1e9:.1f} | {mfu:.1%} |")
    lines += [
        "",
        "loralab's lines skip work these model FLOPs count (the output head at unlabelled positions, "
        "compute.labelled_head; a batch's common first tokens computed once, compute.shared_prefix_train): "
        "their MFU is the whole rows' FLOPs per second of loralab's time, an effective figure that can pass "
        "what the hardware did; the loop's and the Trainer's count the FLOPs they compute.",
    ]
    if "matmul_share" in use:
        lines += [
            "",
            "What stands between MFU and 1 (the loop's step, torch profiler):",
            f"- padding: {use['padding_share']:.1%} of the positions computed are padding (real tokens are counted);",
            f"- matrix products take {use['matmul_share']:.0%} of a step's time, and run there at "
            f"{use['matmul_rate'] / 1e9:.1f} GFLOP/s = {use['matmul_rate'] / peak32:.0%} of the square-matrix peak "
            "(the model's products are small: a batch of a few hundred tokens by 576 wide, and rank-8 adapter "
            "products that cannot fill the vector units);",
            f"- the other {1 - use['matmul_share']:.0%}: element-wise work (RMSNorm, SiLU, softmax, rotary, "
            "dropout, the optimizer), memory copies and autograd bookkeeping. Largest ops per step (s): "
            + ", ".join(f"{k} {v}" for k, v in use["top_ops"][:6])
            + ".",
        ]
    return "\n".join(lines)


def _bf16_text(result: dict, facts: dict) -> str:
    rates, mfu, peak = result["rates"], result["mfu"], result["peak"]
    native = any(f in facts.get("isa", []) for f in ("avx512_bf16", "amx_bf16"))
    lines = [
        "The hand-written loop, one measured step after one warm-up step, fp32 against bf16 autocast (what "
        "`precision=bf16-mixed` does on CPU).",
        "",
        "| precision | tokens/s | ÷ fp32 | matrix-product peak (GFLOP/s) | MFU against that peak |",
        "|---|---|---|---|---|",
    ]
    for name in rates:
        lines.append(
            f"| {name} | {rates[name]:.1f} | {rates[name] / rates['32-true']:.3f} | "
            f"{peak[name] / 1e9:.1f} | {mfu[name]:.1%} |"
        )
    lines.append("")
    if native:
        lines.append("This CPU has native bf16 instructions.")
    else:
        lines.append(
            "This CPU has no native bf16 instructions (no avx512_bf16 or amx_bf16): bf16 products are emulated, "
            f"{peak['32-true'] / peak['bf16-mixed']:.0f}× slower than fp32, so bf16-mixed is no speed-up here and "
            "the default stays 32-true (loralab warns when bf16 is asked for on such a CPU)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
