"""`loralab-rerun` and `loralab-compare` through their real command lines, on tiny-model runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import train_process


def cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )


def train(tmp_path: Path, name: str, *overrides: str) -> Path:
    return train_process(tmp_path, name, *overrides)


@pytest.fixture
def runs(tiny_runs) -> dict[str, Path]:
    return tiny_runs


def test_run_dir_holds_what_a_rerun_needs(runs):
    meta = json.loads((runs["a"] / "run_meta.json").read_text())
    assert {"config_hash", "config_file", "seed", "git", "packages", "data", "host", "overrides"} <= set(meta)
    assert meta["overrides"][-1] == "seed=1" and meta["seed"] == 1
    assert (runs["a"] / meta["config_file"]).is_file()
    assert "${" not in (runs["a"] / meta["config_file"]).read_text()  # resolved
    # the hash says what was computed, not where: the same config elsewhere hashes the same
    from omegaconf import OmegaConf

    from loralab.reporting.run_meta import config_hash

    moved = OmegaConf.load(runs["a"] / "config.yaml")
    old = moved.paths.run_dir
    text = OmegaConf.to_yaml(moved).replace(old, "/elsewhere/run")
    assert config_hash(OmegaConf.create(text)) == meta["config_hash"]
    moved.variant.r = 2
    assert config_hash(moved) != meta["config_hash"]


def test_rerun_verify_passes_bitwise(runs, tmp_path):
    out = tmp_path / "again"
    proc = cli(tmp_path, "loralab.rerun", str(runs["a"]), "--verify", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify passed: final metrics and 28 adapter tensors are bitwise identical" in proc.stdout
    meta = json.loads((out / "run_meta.json").read_text())
    original = json.loads((runs["a"] / "run_meta.json").read_text())
    assert meta["rerun_of"] == str(runs["a"]) and meta["config_hash"] == original["config_hash"]
    assert meta["overrides"] == original["overrides"]
    # everything landed in the new directory; the original is untouched
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "train.log").is_file()
    assert json.loads((runs["a"] / "summary.json").read_text())["run_dir"] == str(runs["a"])


def test_rerun_verify_fails_on_a_changed_setting(runs, tmp_path):
    before = (runs["a"] / "adapter" / "adapter_model.safetensors").read_bytes()
    proc = cli(tmp_path, "loralab.rerun", str(runs["a"]), "--verify", "--out", str(tmp_path / "x"), "optimizer.lr=0.01")
    assert proc.returncode == 1
    err = proc.stderr
    assert "loralab-rerun: verify failed:" in err
    assert "config hash:" in err and "(overrides: optimizer.lr=0.01)" in err
    assert "val/loss:" in err and "adapter tensor adapter_model.safetensors:base_model.model" in err
    assert (runs["a"] / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_compare_runs_table_files_and_filters(runs, tmp_path):
    out = tmp_path / "report"
    proc = cli(tmp_path, "loralab.compare", str(runs["a"]), str(runs["b"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["run"], r["r"], r["seed"]) for r in rows] == [("a", "8", "1"), ("b", "4", "2")]
    for row, name in zip(rows, "ab", strict=True):
        s = json.loads((runs[name] / "summary.json").read_text())
        assert int(row["trainable"]) == s["trainable_params"] and float(row["val_loss"]) == s["after"]["val/loss"]
        assert float(row["val/exact_match"]) == s["after"]["val/exact_match"]
    md = (out / "compare.md").read_text()
    assert md.count("\n| a |") == 1 and md.count("\n| b |") == 1
    assert "variant.r" not in rows[0] and "n" not in rows[0]  # different r: not aggregated as seeds
    for png in ("compare_val_exact_match_vs_params.png", "compare_val_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    proc = cli(
        tmp_path, "loralab.compare", str(runs["a"]), str(runs["b"]), "--out", str(out), "--filter", "r=4", "--no-plots"
    )
    assert proc.returncode == 0
    assert [r["run"] for r in csv.DictReader((out / "compare.csv").open())] == ["b"]
    proc = cli(tmp_path, "loralab.compare", str(runs["a"]), str(runs["b"]), "--out", str(out), "--filter", "alpha=16")
    assert proc.returncode == 0  # alpha is 16.0 in the config: compared as numbers
    assert [r["run"] for r in csv.DictReader((out / "compare.csv").open())] == ["a", "b"]
    proc = cli(
        tmp_path,
        "loralab.compare",
        str(runs["a"]),
        str(runs["b"]),
        "--out",
        str(out),
        "--metric",
        "val/loss",
        "--no-plots",
    )
    assert proc.returncode == 0 and "val/loss" in next(csv.reader((out / "compare.csv").open()))


def test_rerun_names_what_differs_from_the_original(runs, tmp_path):
    from loralab.rerun import environment_differences

    meta = json.loads((runs["a"] / "run_meta.json").read_text())
    assert not [n for n in environment_differences(meta, runs["a"]) if n.startswith("package")]
    meta["packages"]["torch"] = "0.0.1"
    meta["git"]["commit"] = "0" * 40
    notes = environment_differences(meta, runs["a"])
    assert any(n.startswith("git commit differs: original 0000000000") for n in notes)
    torch_version = __import__("importlib.metadata").metadata.version("torch")
    assert f"package versions differ: torch 0.0.1 -> {torch_version}" in notes


def test_compare_finds_runs_at_any_depth(runs, tmp_path):
    """`loralab-compare outputs` as users type it: runs lie two levels down (<experiment>/<time>),
    a sweep's jobs three; superseded jobs under replaced/ are left out."""
    import shutil

    outputs = tmp_path / "outputs"
    shutil.copytree(runs["a"], outputs / "dates_lora" / "2026-01-01_00-00-00")
    shutil.copytree(runs["b"], outputs / "sweep" / "multirun_x" / "0")
    shutil.copytree(runs["b"], outputs / "sweep" / "multirun_x" / "replaced" / "0-abc")
    proc = cli(tmp_path, "loralab.compare", "outputs", "--out", "report", "--no-plots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "report" / "compare.csv").open()))
    assert [r["run"] for r in rows] == ["dates_lora/2026-01-01_00-00-00", "sweep/multirun_x/0"]


def test_a_damaged_adapter_is_reported_not_compared(runs, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(runs[name], tmp_path / "runs" / name)
    weights = tmp_path / "runs" / "b" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated after the run
    proc = cli(tmp_path, "loralab.compare", "runs", "--out", "report", "--no-plots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "report" / "compare.csv").open())}
    assert rows["a"]["status"] == "completed" and rows["b"]["status"] == "damaged"
    assert rows["b"]["val/exact_match"] == ""  # its figures describe an adapter that is gone


@pytest.mark.matrix  # relative paths are checked in make test: make test-matrix
def test_rerun_from_another_directory_finds_relative_data(tmp_path):
    """A run given a relative data path; its rerun started elsewhere reads the same file."""
    work = tmp_path / "project"
    work.mkdir()
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}"} for i in range(24)]
    (work / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = tmp_path / "run"
    from tests.conftest import TINY

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loralab",
            *TINY,
            "data=local",
            "data.train_file=qa.jsonl",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((run_dir / "run_meta.json").read_text())
    assert saved["cwd"] == str(work)
    from omegaconf import OmegaConf

    assert OmegaConf.load(run_dir / "config.yaml").data.train_file == str(work / "qa.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "loralab.rerun", str(run_dir), "--verify", "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify passed" in proc.stdout


@pytest.mark.parametrize("cost", ["params", "memory", "time", "bytes"])
def test_compare_marks_the_pareto_front_on_each_cost_axis(runs, tmp_path, cost):
    """The front column holds the runs no other run beats on the metric and the cost at once,
    checked here pair by pair from the figures the CSV reports; the plot of the front is written."""
    from loralab.compare import compare
    from loralab.compare.pareto import COSTS
    from tests.unit.test_pareto import brute_force

    result = compare([str(runs["a"]), str(runs["b"])], out=tmp_path, echo=False, cost=cost)
    key = COSTS[cost][0]
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    metric = result["metric"]
    assert f"front ({cost})" in (tmp_path / "compare.md").read_text()
    figures = [
        {"status": r["status"], key: float(r[key]), "metric": float(r[metric])} for r in rows if r[key] and r[metric]
    ]
    assert len(figures) == 2
    expected = brute_force(figures, key, higher=True)
    assert {i for i, r in enumerate(rows) if r["pareto"]} == expected
    assert (tmp_path / f"compare_front_{metric.replace('/', '_')}_vs_{cost}.png").stat().st_size > 1000
