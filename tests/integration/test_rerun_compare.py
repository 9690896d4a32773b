"""`loralab-rerun` and `loralab-compare` through their real command lines, on tiny-model runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cli_errors import BASE


def cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )


def train(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    proc = cli(tmp_path, "loralab.train", *BASE, f"hydra.run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {
        "a": train(base, "a", "seed=1"),
        "b": train(base, "b", "seed=2", "variant.r=4"),
        "topics": train(base, "topics", "data=topics"),  # classification: accuracy, not exact match
    }


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


def _old_format(d: Path) -> Path:
    (d / "run_meta.json").write_text(json.dumps({"overrides": ["variant.r=4"]}))
    return d


@pytest.mark.parametrize(
    "target, args, message",
    [
        ("nowhere", [], "nowhere is not a directory: pass the run directory a training run wrote"),
        ("empty", [], "empty has no run_meta.json: pass the run directory a training run wrote"),
        (
            "old",
            [],
            "was written by an older loralab (no saved resolved config): rerun it by hand with its overrides: "
            "loralab-train variant.r=4",
        ),
        ("b", ["--verify", "variant.rank=3"], "override 'variant.rank=3': the saved config has no key 'variant.rank'"),
        ("b", ["variant.r=0"], "variant.r must be an integer >= 1"),
        ("b", ["variant=vera"], "override 'variant=vera': variant is a config section; a rerun changes values"),
        ("b", ["variant.r=[1,"], "override 'variant.r=[1,': "),
        ("failed", ["--verify"], "did not complete (see its summary.json): there is nothing to verify against"),
    ],
    ids=["missing", "not a run", "old format", "unknown key", "bad value", "group", "malformed", "failed original"],
)
def test_rerun_bad_input(tmp_path, runs, target, args, message):
    if target == "b":
        path = runs["b"]
    elif target == "failed":
        path = tmp_path / "failed"
        train(tmp_path, "failed_src")

        shutil.copytree(tmp_path / "failed_src", path)
        (path / "summary.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    else:
        path = tmp_path / target
        if target != "nowhere":
            path.mkdir()
        if target == "old":
            _old_format(path)
    before = sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []
    proc = cli(tmp_path, "loralab.rerun", str(path), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loralab-rerun: error: ") and message in lines[0], lines
    assert sorted(p.name for p in path.parent.iterdir()) == before  # no rerun directory was made


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


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["a", "topics"],
            "the runs measured different metrics (a: val/exact_match, val/loss, val/ppl; "
            "topics: val/accuracy, val/loss",
        ),
        (
            ["a", "--metric", "val/accuracy"],
            "--metric val/accuracy was not measured by 1 run(s) (a); "
            "measured metrics: val/exact_match, val/loss, val/ppl",
        ),
        (["a", "--filter", "variant=vera"], "no run is left after the filters variant=vera"),
        (["a", "--filter", "rank=8"], "--filter 'rank=8': no run has 'rank'"),
        (["missing"], "missing is not a directory: pass run directories or sweep directories"),
    ],
    ids=["different metrics", "metric not measured", "filter removes all", "unknown filter key", "missing path"],
)
def test_compare_bad_input(runs, tmp_path, args, message):
    paths = [str(runs[a]) if a in runs else (str(tmp_path / a) if a == "missing" else a) for a in args]
    out = tmp_path / "report"
    proc = cli(tmp_path, "loralab.compare", *paths, "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loralab-compare: error: ") and message in lines[0]
    assert not out.exists()  # nothing written on an error


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
