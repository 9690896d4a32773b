"""Sweep wall time: the same 4-job sweep (tiny model) run one job after another by Hydra's basic
launcher, and two at a time by the joblib launcher (`hydra/launcher=parallel`).

python -m benchmarks.sweep_time
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import median
from loralab.rundir import SUMMARY_FILE

GRID = ["model=tiny", "data=word_sort", "variant.r=2,4,8,16", "trainer.max_steps=20"]
LAUNCHERS = {
    "sequential (basic launcher)": [],
    "joblib, 2 processes (hydra/launcher=parallel)": ["hydra/launcher=parallel"],
}


def run_sweep(extra: list[str]) -> float:
    """Wall seconds of one multirun; every job must complete."""
    sweep_dir = Path(tempfile.mkdtemp(prefix="loralab-bench-sweep-"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "loralab", "-m", *GRID, *extra, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    statuses = [json.loads(p.read_text())["status"] for p in sweep_dir.glob(f"*/{SUMMARY_FILE}")]
    if done.returncode != 0 or statuses.count("completed") != 4:
        raise RuntimeError(f"sweep {extra} failed ({statuses}):\n{done.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    """Print both wall times (medians, interleaved) and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    for _ in range(args.repeats):
        for name, extra in LAUNCHERS.items():
            times[name].append(run_sweep(extra))
    result = {name: median(values) for name, values in times.items()}
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """The sweep table as markdown."""
    sequential = next(iter(result.values()))
    lines = [f"| 4-job sweep ({' '.join(GRID)}) | wall seconds | speed-up |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.1f} | {sequential / seconds:.2f}× |" for name, seconds in result.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
