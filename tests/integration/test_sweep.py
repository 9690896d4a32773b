"""Multiruns through the real CLI on the tiny model: grids with the basic, joblib and submitit
launchers, the Optuna sweeper, failing jobs, the comparison report, W&B grouping, and resuming a
sweep (finished jobs skipped, an interrupted one continued from its checkpoint)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.test_cli_errors import BASE
from tests.wandb_records import history, run_facts

TINY_WANDB = ["model=tiny", "debug=fast", "~callbacks.progress"]  # the default loggers: W&B + CSV


def multirun(tmp_path: Path, sweep: Path, *overrides: str, base: list[str] = BASE) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "loralab", "-m", *base, *overrides, f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_failing_job_does_not_end_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails while it runs (its data fits no example into 4 tokens), job 1 must still run
    proc = multirun(tmp_path, sweep, "data.max_length=4,128")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: 1 of 2 sweep jobs failed (job 0: DataError: all 64 training examples are longer")
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["jobs"] == 2 and report["failed"] == 1
    assert [r["status"] for r in report["runs"]] == ["failed", "completed"]
    assert "data.max_length=128" in report["runs"][1]["overrides"]
    failed = summary(sweep / "0")
    assert failed["status"] == "failed" and "data.max_length=4" in failed["error"]
    done = summary(sweep / "1")
    assert done["status"] == "completed" and (sweep / "1" / "adapter" / "adapter_model.safetensors").is_file()
    # the report lists both jobs, the failed one with its status
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [(r["run"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]


def default_multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A multirun as the README writes it, without hydra.sweep.dir: outputs/ under tmp_path."""
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "loralab", "-m", *overrides], capture_output=True, text=True, env=env, cwd=tmp_path
    )


@pytest.mark.matrix  # a second sweep check (make test runs the grid, its report and relaunch): make test-matrix
def test_a_sweep_across_variants_is_one_sweep(tmp_path):
    """The README's sweep shape: jobs of different variants have different experiment names, and
    still one directory, one report, one summary and one W&B group."""
    proc = default_multirun(tmp_path, "variant=lora,vera", "variant.r=4,8", *TINY_WANDB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = sorted((tmp_path / "outputs").glob("*/multirun_*"))
    assert len(sweeps) == 1 and sweeps[0].parent.name == "dates_lora+dates_vera", sweeps
    sweep = sweeps[0]
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["jobs"] == 4 and report["failed"] == 0
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [(r["variant"], r["r"]) for r in rows] == [("lora", "4"), ("lora", "8"), ("vera", "4"), ("vera", "8")]
    groups = {run_facts(sweep / str(i))["group"] for i in range(4)}
    assert groups == {f"dates_lora+dates_vera/{sweep.name}"}


@pytest.mark.matrix  # a failing job is checked in make test: make test-matrix
def test_a_failed_job_of_any_variant_fails_the_sweep(tmp_path):
    """Job 3 (the second variant's) fails while it runs: the sweep's one summary counts it and
    the command exits 1."""
    proc = default_multirun(tmp_path, "variant=lora,vera", "data.max_length=128,4", "variant.r=4", *BASE)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("loralab: 2 of 4 sweep jobs failed")
    (sweep,) = (tmp_path / "outputs").glob("*/multirun_*")
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["completed", "failed", "completed", "failed"]


def test_a_bad_value_in_any_job_refuses_the_sweep_before_it_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(tmp_path, sweep, "variant.r=4,8,0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "loralab: error: sweep job 2 (model=tiny debug=fast logger=csv ~callbacks.progress=null variant.r=0): "
        "variant.r must be an integer >= 1, got 0: set e.g. variant.r=8; nothing was run"
    )
    assert not sweep.exists()


def test_grid_report_wandb_grouping_and_resume(tmp_path):
    sweep = tmp_path / "grid"
    grid = ["variant.r=2,4", "seed=1,2"]
    proc = multirun(tmp_path, sweep, *grid, base=TINY_WANDB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [sweep / str(i) for i in range(4)]
    summaries = [summary(j) for j in jobs]
    assert [s["status"] for s in summaries] == ["completed"] * 4

    # one W&B run per job: group = the sweep, job type = the variant, tags r/alpha/seed, the
    # config flat (variant.r) and the final figures in the run summary
    for job, s, (r, seed) in zip(jobs, summaries, [(2, 1), (2, 2), (4, 1), (4, 2)], strict=True):
        facts = run_facts(job)
        assert facts["group"] == sweep.name and facts["job_type"] == "lora"
        assert {f"r={r}", "alpha=16.0", f"seed={seed}"} <= set(facts["tags"])
        assert facts["config"]["variant.r"] == r and facts["config"]["seed"] == seed
        assert facts["summary"]["final/trainable_params"] == s["trainable_params"]
        assert facts["summary"]["final/val/loss"] == pytest.approx(s["after"]["val/loss"])
        # the held-out test split's figures too (debug=fast draws 8 test examples)
        assert facts["summary"]["final/test/loss"] == pytest.approx(s["test"]["test/loss"])

    # the report: seeds aggregated, mean and std computed from the jobs' own summaries
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [(r["r"], r["n"], r["seed"]) for r in rows] == [("2", "2", "1,2"), ("4", "2", "1,2")]
    for row, pair in zip(rows, (summaries[:2], summaries[2:]), strict=True):
        losses = [s["after"]["val/loss"] for s in pair]
        assert float(row["val_loss"]) == pytest.approx(statistics.fmean(losses))
        assert float(row["val_loss_std"]) == pytest.approx(statistics.stdev(losses))
        assert float(row["val_loss_std"]) > 0  # the seeds really differ
    assert "mean ± std over seeds" in (sweep / "compare.md").read_text()
    assert is_png(sweep / "compare_val_exact_match_vs_params.png") and is_png(sweep / "compare_val_loss.png")
    assert is_png(sweep / "compare_val_exact_match_vs_step.png") and (sweep / "compare.html").is_file()

    # the comparison in W&B: one run of the sweep's group, job type compare, with compare.csv as a
    # Table and every plot as an image, read back from the offline run file and its media
    (report_run,) = sweep.glob("wandb/offline-run-*")
    facts = run_facts(sweep)
    assert facts["group"] == sweep.name and facts["job_type"] == "compare"
    logged = history(report_run)
    table = json.loads((report_run / "files" / logged["compare/table"]["path"]).read_text())
    with (sweep / "compare.csv").open() as fh:
        header, *lines = list(csv.reader(fh))
    assert table["columns"] == header and len(table["data"]) == len(lines) == 2
    for values, line in zip(table["data"], lines, strict=True):
        assert ["" if v is None else str(v) for v in values] == line
    pngs = sorted(sweep.glob("compare_*.png"))
    images = {k: v for k, v in logged.items() if isinstance(v, dict) and v.get("_type") == "image-file"}
    assert sorted(images) == sorted(f"compare/{p.stem}" for p in pngs)
    for png in pngs:
        image = images[f"compare/{png.stem}"]
        assert (report_run / "files" / image["path"]).read_bytes() == png.read_bytes()

    # interrupt job 3 after its step-2 checkpoint: no summary, adapter or later checkpoint
    finished = {
        p: p.read_bytes() for p in (jobs[0] / "summary.json", jobs[1] / "adapter" / "adapter_model.safetensors")
    }
    reference = load_file(jobs[3] / "adapter" / "adapter_model.safetensors")
    for gone in ("summary.json", "adapter", "merged", "checkpoints/step-0000004"):
        target = jobs[3] / gone
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    runs_before = {j: len(list(j.glob("wandb/offline-run-*"))) for j in jobs}

    # relaunch the grid, extended by r=8, into the same sweep directory
    proc = multirun(tmp_path, sweep, "variant.r=2,4,8", "seed=1,2", base=TINY_WANDB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for job in jobs[:3]:
        assert f"sweep resume: {job} already completed this config" in log
        assert len(list(job.glob("wandb/offline-run-*"))) == runs_before[job]  # not run again
    assert all(p.read_bytes() == data for p, data in finished.items())  # untouched
    assert f"sweep resume: {jobs[3]} was interrupted, continuing from its newest checkpoint" in log
    assert "step-0000002/training_state.ckpt" in log
    resumed = load_file(jobs[3] / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all((resumed[k] == reference[k]).all() for k in reference)  # bitwise, as if never stopped
    assert summary(jobs[3])["after"]["val/loss"] == summaries[3]["after"]["val/loss"]
    new = [summary(sweep / str(i)) for i in (4, 5)]
    assert [s["status"] for s in new] == ["completed", "completed"]
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["jobs"] == 6 and report["failed"] == 0
    assert len(list(csv.DictReader((sweep / "compare.csv").open()))) == 3  # r = 2, 4, 8


@pytest.mark.matrix  # relaunching is checked in make test: make test-matrix
def test_relaunch_with_a_reordered_grid_keeps_every_run(tmp_path):
    sweep = tmp_path / "sweep"
    assert multirun(tmp_path, sweep, "variant.r=2,4").returncode == 0
    first = {i: (sweep / str(i) / "adapter" / "adapter_model.safetensors").read_bytes() for i in (0, 1)}
    proc = multirun(tmp_path, sweep, "variant.r=4,2")  # job 0 is now r=4: nothing trains again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loralab run:" not in proc.stdout  # no job printed a run summary: none trained
    assert (proc.stdout + proc.stderr).count("held another config") == 2
    moved = sorted((sweep / "replaced").iterdir())
    assert len(moved) == 2  # the earlier jobs, kept whole
    kept = {p.read_bytes() for p in (sweep / "replaced").glob("*/adapter/adapter_model.safetensors")}
    assert kept == set(first.values())
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["skipped", "skipped"]
    for entry, ref in zip(report["runs"], (1, 0), strict=True):  # r=4 is now job 0, r=2 job 1
        assert (Path(entry["same_as"]) / "adapter" / "adapter_model.safetensors").read_bytes() == first[ref]
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [(r["r"], r["status"]) for r in rows] == [("4", "skipped"), ("2", "skipped")]


@pytest.mark.matrix  # a second check of what make test covers: make test-matrix
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(tmp_path, sweep, "hydra/launcher=parallel", "data.max_length=128,4,128")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["completed", "failed", "completed"]
    threads = {json.loads((sweep / str(i) / "run_meta.json").read_text())["host"]["torch_threads"] for i in (0, 2)}
    # joblib caps each worker's threads at cores / n_jobs: 2 jobs do not oversubscribe the machine
    assert threads == {max(1, os.cpu_count() // 2)}
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]


@pytest.mark.matrix  # a second check of what make test covers: make test-matrix
def test_submitit_local_executor_runs_a_two_job_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(tmp_path, sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "variant.r=2,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / ".submitit").is_dir()  # submitit ran the jobs, not the basic launcher
    assert [summary(sweep / str(i))["status"] for i in (0, 1)] == ["completed", "completed"]
    assert [summary(sweep / str(i))["trainable_params"] for i in (0, 1)] == [4096, 8192]


@pytest.mark.matrix  # a second sweeper (make test runs the basic one): make test-matrix
def test_optuna_sweeper_returns_the_best_val_loss(tmp_path):
    from omegaconf import OmegaConf

    sweep = tmp_path / "sweep"
    proc = multirun(tmp_path, sweep, "hydra/sweeper=lora_search", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [summary(sweep / str(i))["after"]["val/loss"] for i in range(3)]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(losses))
    winner = json.loads((sweep / str(losses.index(min(losses))) / "run_meta.json").read_text())["overrides"]
    assert f"variant.r={best.best_params['variant.r']}" in winner
    # the learning rate varied, so the report shows it as a column
    header = next(csv.reader((sweep / "compare.csv").open()))
    assert "optimizer.lr" in header


@pytest.mark.matrix  # a second check of what make test covers: make test-matrix
def test_a_job_with_a_damaged_adapter_is_rebuilt_on_relaunch(tmp_path):
    """A relaunch skips completed jobs only when their adapter is the one they recorded; a damaged
    one is rebuilt from the job's newest checkpoint, to the same tensors."""
    sweep = tmp_path / "sweep"
    proc = multirun(tmp_path, sweep, "variant.r=2,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = sweep / "1" / "adapter" / "adapter_model.safetensors"
    reference = {k: v.clone() for k, v in load_file(weights).items()}  # not a view of the file it truncates
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after the sweep
    untouched = (sweep / "0" / "adapter" / "adapter_model.safetensors").read_bytes()
    proc = multirun(tmp_path, sweep, "variant.r=2,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"sweep resume: {sweep / '0'} already completed this config" in log
    assert f"sweep resume: {sweep / '1'} completed but its adapter is damaged" in log
    rebuilt = load_file(weights)
    assert rebuilt.keys() == reference.keys() and all((rebuilt[k] == reference[k]).all() for k in reference)
    assert (sweep / "0" / "adapter" / "adapter_model.safetensors").read_bytes() == untouched
