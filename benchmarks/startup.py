"""Start-up: how long a bad config takes to be refused, how long until the first training step
(loralab against the hand-written loop, tiny model), and loading the default model from the
converted cache against converting its GGUF file.

python -m benchmarks.startup
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import emit, median, run_child

BAD_CONFIGS = {
    "bad value (variant.r=0)": ["variant.r=0"],
    "unknown key (variant.rank=8)": ["variant.rank=8"],
    "unknown option (variant=lorra)": ["variant=lorra"],
}
TINY = ["model=tiny", "data=word_sort"]


def _wall(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return time.perf_counter() - started, done


def rejection(repeats: int) -> list[dict]:
    """Seconds from the command to its one-line refusal, per bad config; the interpreter's own
    start and `import torch` as the yardsticks."""
    rows = []
    for label, overrides in BAD_CONFIGS.items():
        times = []
        for _ in range(repeats):
            seconds, done = _wall(["-m", "loralab", *overrides, f"hydra.run.dir={tempfile.mkdtemp()}"])
            if done.returncode != 2:
                raise RuntimeError(f"{overrides} was not refused with exit 2: {done.stderr[-2000:]}")
            times.append(seconds)
        rows.append({"case": label, "seconds": median(times), "message": done.stderr.strip().splitlines()[-1]})
    for label, code in (("python -c pass", "pass"), ("python -c 'import torch'", "import torch")):
        rows.append({"case": label, "seconds": median([_wall(["-c", code])[0] for _ in range(repeats)])})
    return rows


def first_step(repeats: int) -> dict:
    """Seconds from launching the command to the start of its first training step, tiny model:
    loralab-train (defaults: validation before training, W&B offline, CSV) against the loop."""
    from benchmarks.throughput import run_loralab

    loralab, loop, loralab_no_before = [], [], []
    for _ in range(repeats):
        run = run_loralab(TINY, 2)
        loralab.append(run["wall"][0] - run["launched"])
        run = run_loralab([*TINY, "validate_before=false"], 2)
        loralab_no_before.append(run["wall"][0] - run["launched"])
        launched = time.time()
        run = run_child(["-m", "benchmarks.throughput", "--impl", "loop", "--total", "2", *TINY])
        loop.append(run["wall"][0] - launched)
    return {
        "loralab": median(loralab),
        "loralab_no_validate_before": median(loralab_no_before),
        "loop": median(loop),
    }


def load_model(cache_dir: str) -> dict:
    """Seconds to load the default model through its source (the GGUF converted into `cache_dir`
    when the cache is empty there)."""
    from hydra.utils import instantiate

    from benchmarks.common import compose

    cfg = compose([f"paths.cache_dir={cache_dir}"])
    source = instantiate(cfg.model)
    started = time.perf_counter()
    source.load_model("causal_lm")
    return {"seconds": time.perf_counter() - started}


def model_load(repeats: int) -> dict:
    """From the GGUF file (an empty cache: convert, rebuild, write, load) against from the cache."""
    gguf, cached = [], []
    for _ in range(repeats):
        cache = tempfile.mkdtemp(prefix="loralab-bench-cache-")
        gguf.append(run_child(["-m", "benchmarks.startup", "--load", cache])["seconds"])
        cached.append(run_child(["-m", "benchmarks.startup", "--load", cache])["seconds"])
    return {"gguf": median(gguf), "cache": median(cached)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the three start-up figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        emit(load_model(args.load))
        return {}
    result = {
        "rejection": rejection(args.repeats),
        "first_step": first_step(args.repeats),
        "model_load": model_load(max(1, args.repeats - 1)),
    }
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """The start-up tables as markdown."""
    lines = ["| refused config | seconds (median) | message |", "|---|---|---|"]
    for row in result["rejection"]:
        lines.append(f"| {row['case']} | {row['seconds']:.2f} | {row.get('message', '')} |")
    first = result["first_step"]
    lines += [
        "",
        "| to the first training step (tiny model) | seconds (median) | ÷ loop |",
        "|---|---|---|",
        f"| hand-written loop | {first['loop']:.1f} | 1.00 |",
        f"| loralab-train (defaults) | {first['loralab']:.1f} | {first['loralab'] / first['loop']:.2f} |",
        f"| loralab-train validate_before=false | {first['loralab_no_validate_before']:.1f} | "
        f"{first['loralab_no_validate_before'] / first['loop']:.2f} |",
    ]
    load = result["model_load"]
    lines += [
        "",
        "| loading SmolLM2-135M | seconds (median) | ÷ cache |",
        "|---|---|---|",
        f"| from the converted cache (safetensors) | {load['cache']:.1f} | 1.00 |",
        f"| from the GGUF file (convert, rebuild, cache) | {load['gguf']:.1f} | {load['gguf'] / load['cache']:.1f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
