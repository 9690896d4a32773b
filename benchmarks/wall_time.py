"""The default run's wall time against an earlier commit's (`python -m benchmarks.wall_time
--against REV`): `make train`'s job, `loralab-train` with the defaults, run from this tree and from a
git worktree of REV, alternately and one at a time, each in a process of its own as a user runs it.
Per run: the process's wall seconds, summary.json's phases where the code records them, the final
validation and test exact match, the merge check and the adapter's hash; then the ratio of the
medians.

This machine's speed moves by 20 % and more within minutes (a shared host), so a single pair says
little: the runs alternate, each repeat starts with the other tree, and every run is listed. Run
`make train` once from each tree first: the model's conversion (and REV's own caches, if its
format differs) should not fall in a measured run.

python -m benchmarks.wall_time --against 51b4d5f --repeats 2 [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, machine, median


def worktree(rev: str, where: Path) -> Path:
    """A detached git worktree of `rev` under `where` (removed by `drop_worktree`)."""
    path = where / f"tree-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
    done = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(
            f"wall_time: git cannot check out {rev!r} ({done.stderr.strip()}): give a commit of this repository"
        )
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


def one_run(tree: Path, run_dir: Path, overrides: list[str]) -> dict:
    """`loralab-train` from `tree`'s sources (its src/ first on the path), the progress bar off."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(tree / "src")}
    command = [sys.executable, "-m", "loralab", f"hydra.run.dir={run_dir}", "~callbacks.progress", *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary_path = run_dir / "summary.json"
    if done.returncode != 0 or not summary_path.is_file():
        last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise SystemExit(f"wall_time: the run from {tree} failed (exit {done.returncode}): {last}")
    summary = json.loads(summary_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # ~600 MB a run (the merged model): the figures are read
    validations = summary.get("validations") or [{}]
    return {
        "wall_s": wall,
        "in_process_s": summary.get("wall_time_s"),
        "time": summary.get("time"),
        "train_s": summary.get("train_seconds"),
        "val_exact_match": validations[-1].get("val/exact_match"),
        "test_exact_match": (summary.get("test") or {}).get("test/exact_match"),
        "merge_passed": summary.get("merge_passed"),
        "adapter_sha256": summary.get("adapter_sha256"),
        "finished": time.strftime("%H:%M:%S"),
    }


def measure(rev: str, repeats: int, overrides: list[str]) -> dict:
    """Runs of this tree ("now") and of `rev` ("before"), alternating; every run and the medians."""
    scratch = Path(tempfile.mkdtemp(prefix="loralab-wall-"))
    old = worktree(rev, scratch)
    runs: dict[str, list[dict]] = {"now": [], "before": []}
    trees = {"now": REPO, "before": old}
    try:
        for repeat in range(repeats):
            order = ("now", "before") if repeat % 2 == 0 else ("before", "now")
            for name in order:
                run = one_run(trees[name], scratch / f"{name}-{repeat}", overrides)
                runs[name].append(run)
                print(f"  {name} run {repeat + 1}: {run['wall_s']:.1f} s", file=sys.stderr)
    finally:
        drop_worktree(old)
        shutil.rmtree(scratch, ignore_errors=True)
    walls = {name: median([r["wall_s"] for r in rs]) for name, rs in runs.items()}
    return {"against": rev, "runs": runs, "median_wall_s": walls, "ratio": walls["now"] / walls["before"]}


def commit_of(rev: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True)
    return done.stdout.strip() or rev


def format_result(result: dict) -> str:
    def cell(value: object, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = [
        "| run | finished | wall (s) | in-process (s) | train | validate | test | forgetting | merge check "
        "| val / test exact match | merge passed | adapter sha256 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("now", "this tree"), ("before", result["against"])):
        for i, run in enumerate(result["runs"][name]):
            phases = run["time"] or {}
            lines.append(
                f"| {label} #{i + 1} | {run['finished']} | {cell(run['wall_s'])} | {cell(run['in_process_s'])} "
                f"| {cell(run['train_s'])} | {cell(phases.get('validate'))} | {cell(phases.get('test'))} "
                f"| {cell(phases.get('forgetting'))} | {cell(phases.get('merge_check'))} "
                f"| {cell(run['val_exact_match'], 3)} / {cell(run['test_exact_match'], 3)} | {run['merge_passed']} "
                f"| {(run['adapter_sha256'] or '')[:12]} |"
            )
    walls = result["median_wall_s"]
    lines.append("")
    lines.append(
        f"Median wall time: this tree {walls['now']:.1f} s, {result['against']} {walls['before']:.1f} s: "
        f"**{result['ratio']:.3f}×**."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides for both trees' runs")
    parser.add_argument("--against", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tree, alternating")
    parser.add_argument("--out", help="also write the table and the runs (JSON) here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rev = commit_of(args.against)
    info = machine()
    print(f"machine: {info.get('cpu')}, {info.get('cores')} cores, {' '.join(info.get('isa', []))}", file=sys.stderr)
    result = measure(rev, args.repeats, args.overrides)
    text = format_result(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({**result, "machine": info}, indent=2))
    return result


if __name__ == "__main__":
    main()
