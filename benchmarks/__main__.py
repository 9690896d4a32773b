"""`make bench`: every benchmark, each against its baseline in the same command, written to
BENCHMARKS.md with the date, the machine and the command.

python -m benchmarks                          # all sections -> BENCHMARKS.md (40-90 min on 2 cores)
python -m benchmarks --sections startup,inference --out /tmp/bench.md
python -m benchmarks --sections throughput --device cuda --out /tmp/gpu.md   # the GPU (default where one is)

Throughput runs at fp32 and, where the hardware computes bf16 natively (a CPU with AVX512-BF16 or
AMX, a CUDA GPU that supports it), again at bf16-mixed: loralab, the loop and the Trainer at the
same precision each time, with MFU against the measured peak of that precision.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

from benchmarks import dispatch, evaluation, inference, startup, sweep_time, throughput, variant_memory
from benchmarks.common import machine, median, run_child

SECTIONS = ("throughput", "bf16", "dispatch", "startup", "memory", "inference", "sweep", "evaluation")


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
    for label in ("32-true", "bf16-mixed"):
        run = run_child(
            ["-m", "benchmarks.throughput", "--impl", "loop", "--total", "3", "--precision", label, *overrides]
        )
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
    parser.add_argument(
        "overrides", nargs="*", help="config overrides for throughput, bf16, memory, inference, evaluation"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per throughput implementation")
    parser.add_argument("--steps", type=int, default=6, help="measured training steps per throughput run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="report file (default: BENCHMARKS.md when every section runs)")
    parser.add_argument(
        "--no-switches",
        action="store_true",
        help="throughput: the three implementations only, not loralab's lever lines (a short run, e.g. on a lent GPU)",
    )
    parser.add_argument(
        "--switch",
        action="append",
        choices=list(throughput.SWITCHES),
        metavar="LINE",
        help="throughput: measure only these lever lines (repeatable; default: every line that flips the "
        "device's default), e.g. --switch 'loralab compute.shared_prefix_train=true'",
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=throughput.PRECISIONS,
        help="throughput: only this precision (repeatable; default: fp32 and, where native, bf16-mixed)",
    )
    parser.add_argument(
        "--device",
        choices=throughput.DEVICES,
        help="where the throughput section trains (default: cuda where torch sees a GPU, else cpu); "
        "the other sections measure the CPU",
    )
    given = sys.argv[1:] if argv is None else argv  # what the report names as its command
    args = parser.parse_args(given)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    out = args.out or ("BENCHMARKS.md" if set(sections) == set(SECTIONS) else None)
    throughput.check_overrides(args.overrides)

    import torch

    from loralab.distributed import cpu_has_bf16

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    throughput.check_device(device)
    started = time.time()
    facts = machine()
    facts["torch_threads"] = torch.get_num_threads()
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    parts: list[str] = []
    results: dict = {"machine": facts, "device": device}
    peak32 = throughput.matmul_peak("float32")
    peak16 = throughput.matmul_peak("bfloat16", (128, 256, 512, 768), repeats=2)
    results["peak"] = {"float32": peak32, "bfloat16": peak16}
    # the throughput section's device: its own peaks (the CPU's above serve the CPU sections)
    if device == "cuda":
        peaks = {
            p: throughput.matmul_peak(d, device="cuda") for p, d in (("32-true", "float32"), ("bf16-mixed", "bfloat16"))
        }
        native16 = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        peaks = {"32-true": peak32, "bf16-mixed": peak16}
        native16 = cpu_has_bf16()
    results["peak_" + device] = peaks
    precisions = ["32-true", *(["bf16-mixed"] if native16 else [])]
    if args.precision:
        precisions = [p for p in throughput.PRECISIONS if p in args.precision]

    def section(name: str, title: str, body: str) -> None:
        print(f"\n## {title}\n{body}", flush=True)
        parts.append(f"## {title}\n{body}\n")

    counts = None
    if "throughput" in sections:
        bodies, uses = [], {}
        for precision in precisions:
            print(f"throughput ({precision}, {device}): loralab, loop, Trainer, interleaved ...", file=sys.stderr)
            # every lever's line at the first precision; after it the three implementations only
            switches = [] if args.no_switches or precision != precisions[0] else args.switch
            result = throughput.measure(
                args.overrides, args.warmup, args.steps, args.repeats, switches, precision, device
            )
            results.setdefault("throughput", {})[precision] = {k: v for k, v in result.items() if k != "runs"}
            counts = result["counts"]
            use = utilisation(result, peaks[precision], args.warmup, args.steps)
            uses[precision] = use
            med = {k: median(v) for k, v in result["rates"].items()}
            bodies.append(
                f"### {precision} on {facts.get('gpu', 'the CPU') if device == 'cuda' else 'the CPU'}\n\n"
                + throughput.format_result(result, args.warmup, args.steps)
                + f"\n\n**loralab ÷ hand-written loop = {med['loralab'] / med['loop']:.3f}**; "
                f"**loralab ÷ Trainer = {med['loralab'] / med['trainer']:.3f}** ({precision}; target ≥ 1.3 for both)."
            )
        results["utilisation"] = uses
        body = (
            (
                f"Overrides `{' '.join(args.overrides)}`"
                if args.overrides
                else "Default model and task (SmolLM2-135M, dates, batch 8, LoRA r=8 all-linear)"
            )
            + f", {args.warmup} warm-up "
            f"+ {args.steps} measured steps, {args.repeats} interleaved runs each, at each precision this hardware "
            f"computes natively ({', '.join(precisions)}); tokens are real (unpadded) tokens, time runs from the start "
            "of the first measured step to the start of the step after the last. Each switch line is loralab with "
            "that one lever flipped from its default.\n\n" + "\n\n".join(bodies)
        )
        if device == "cuda":
            body += "\n\n" + GPU_ANCHORS
        section("throughput", "1. Training throughput", body)
        section(
            "utilisation",
            "2. Closeness to the limit (model FLOPs utilisation)",
            "\n\n".join(_utilisation_text(use, peaks[p], p) for p, use in uses.items()),
        )
    if "bf16" in sections and not native16:
        # where bf16 is native, section 1 measured it whole; here, one step shows why it stays off
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
    if "dispatch" in sections:
        print("operations per step ...", file=sys.stderr)
        counts = dispatch.measure(args.overrides)
        results["dispatch"] = counts
        section(
            "dispatch",
            "2c. Operations dispatched per training step (what a GPU launches kernels for)",
            "One training step (the third) of the hand-written loop and of `loralab-train`, every operation that "
            "reaches PyTorch's dispatcher counted on the CPU at fp32 (`python -m benchmarks.dispatch`): forward, "
            "backward, loralab's callbacks, clipping and AdamW. A GPU step of this size is bound by these launches, "
            "not by arithmetic, which is why compute.shared_prefix_train=auto is off there.\n\n"
            + dispatch.format_result(counts),
        )
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
    if "evaluation" in sections:
        print("evaluation (compute.prompt_once) ...", file=sys.stderr)
        result = evaluation.main(["--repeats", "3", *args.overrides])
        results["evaluation"] = result
        section(
            "evaluation",
            "8. One evaluation: the loss and the answers with each prompt once (compute.prompt_once)",
            evaluation.format_result(result),
        )

    minutes = (time.time() - started) / 60
    command = (
        "make bench" if not given and set(sections) == set(SECTIONS) else "python -m benchmarks " + shlex.join(given)
    )
    header = (
        "# Benchmarks\n\n"
        f"Written by `{command}` on {datetime.date.today().isoformat()} in {minutes:.0f} min. Every figure is "
        "measured against its baseline in the same command, on the same machine; ratios are of medians.\n\n"
        f"Machine: {facts.get('cpu')}, {facts['cores']} cores ({facts['torch_threads']} torch threads), "
        f"{facts.get('memory_gib')} GiB, instruction sets {', '.join(facts.get('isa', [])) or '-'}; "
        f"Python {facts['python']}, torch {facts['torch']}, lightning {facts['lightning']}, "
        f"transformers {facts['transformers']}, peft {facts['peft']}"
        + (f"; GPU {facts['gpu']} (section 1 and 2 there, the others on the CPU)" if device == "cuda" else "")
        + ".\n\n"
        "Measured matrix-product peak of the CPU (a linear layer's product, square sizes 256-2048, best of several): "
        f"fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s"
        + (
            f"; of the GPU (sizes up to 8192): fp32 {peaks['32-true'] / 1e12:.1f} TFLOP/s, "
            f"bf16 {peaks['bf16-mixed'] / 1e12:.1f} TFLOP/s"
            if device == "cuda"
            else ""
        )
        + ".\n\n"
    )
    if out:
        Path(out).write_text(header + "\n".join(parts))
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwrote {out}", file=sys.stderr)


# published figures for LoRA on a GPU, beside which section 1's GPU lines are read (not measured here)
GPU_ANCHORS = (
    "Published GPU anchors (other code, other hardware; for orientation, not compared): LoRA kernels report "
    "1.28-1.48× forward speed on SmolLM2-135M; torch.compile +27% tokens/s and -15% memory on torchtune's LoRA "
    "recipe; padding-free packing +238% on variable-length data; a fused linear + cross-entropy (Liger) -60% memory."
)


def _utilisation_text(use: dict, peak: float, precision: str = "32-true") -> str:
    lines = [
        f"**{precision}.** Model FLOPs per real token: {use['flops_per_token'] / 1e6:.0f} M (4 × base "
        "matrix-product weights for the frozen base's forward and input gradients, 6 × adapter parameters, "
        f"attention's products over the batch width of {use['width']:.0f} positions). Peak at {precision}: "
        f"{peak / 1e9:.1f} GFLOP/s.",
        "",
        f"| implementation | model GFLOP/s | MFU ({precision}) |",
        "|---|---|---|",
    ]
    for name, mfu in use["mfu"].items():
        lines.append(f"| {name} | {mfu * peak / 1e9:.1f} | {mfu:.1%} |")
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
            f"{use['matmul_rate'] / 1e9:.1f} GFLOP/s = {use['matmul_rate'] / peak:.0%} of the square-matrix peak "
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
