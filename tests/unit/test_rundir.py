"""RunDir and SweepDir on hand-made run directories: missing and damaged files, a run's status
and hash, finding runs, a sweep's jobs, setting a job aside, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loralab.rundir import (
    RunDir,
    RunFileError,
    SweepDir,
    file_hashes,
    find_runs,
    read_json,
    resolve_same_as,
    runs_below,
)


def make_run(path: Path, status: str | None = "completed", config_hash: str = "h1", **summary) -> RunDir:
    """A run directory as training leaves it: run_meta.json, summary.json, an adapter recorded by
    its file hashes."""
    run = RunDir(path)
    (run.adapter_dir).mkdir(parents=True)
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"weights")
    run.write_meta({"config_hash": config_hash, "format_version": 1, "config_file": "config.yaml"})
    if status is not None:
        run.write_summary({"status": status, "adapter_files": file_hashes(run.adapter_dir), **summary})
    return run


def test_a_missing_file_is_none_or_the_readers_error(tmp_path):
    run = RunDir(tmp_path)
    assert run.summary() is None and run.meta() is None
    assert run.summary(lenient=True) == {} and read_json(run.summary_path) == {}
    with pytest.raises(RunFileError) as error:
        run.meta(needed="pass the run directory a training run wrote")
    assert str(error.value) == f"{tmp_path} has no run_meta.json: pass the run directory a training run wrote"


def test_a_damaged_file_raises_one_error_unless_lenient(tmp_path):
    run = RunDir(tmp_path)
    run.summary_path.write_text('{"status": ')
    with pytest.raises(
        RunFileError, match=r"summary\.json is not valid JSON \(Expecting value.*the run directory is damaged$"
    ):
        run.summary()
    with pytest.raises(RunFileError, match="is not valid JSON"):  # even when the reader needs it
        run.summary(needed="the original run has no summary")
    assert run.summary(lenient=True) == {}
    run.meta_path.write_text("[1, 2]")
    with pytest.raises(RunFileError, match=r"run_meta\.json does not hold a JSON object: the run directory is damaged"):
        run.meta()
    assert run.meta(lenient=True) == {} and run.config_hash() is None
    assert run.state() == (None, None)  # the state checks never fail on a damaged file


def test_status_hash_and_a_damaged_adapter(tmp_path):
    run = make_run(tmp_path / "run")
    assert run.status() == "completed" and run.state() == ("h1", "completed")
    assert run.adapter_problem() is None
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"weight")  # truncated after the run
    assert run.status() == "damaged"
    assert "is not the file the run saved" in run.adapter_problem()
    (run.adapter_dir / "adapter_model.safetensors").unlink()
    assert run.adapter_problem().endswith("adapter_model.safetensors is missing")
    assert make_run(tmp_path / "failed", status="failed").state() == ("h1", "failed")
    assert make_run(tmp_path / "unfinished", status=None).state() == ("h1", None)
    assert RunDir(tmp_path / "nothing").state() == (None, None)


def test_earlier_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.earlier_run() is None  # absent
    run.hydra_dir.mkdir(parents=True)
    assert run.earlier_run() is None  # only what Hydra writes before a run starts
    (run.checkpoints_dir / "step-0000003").mkdir(parents=True)
    (run.checkpoints_dir / "step-0000006").mkdir()
    run.write_meta({"started_at": "then"})
    assert run.earlier_run() == {
        "status": "unfinished",
        "started_at": "then",
        "trained": True,
        "last_checkpoint": "step-0000006",
    }


def test_the_files_the_run_saved(tmp_path):
    run = RunDir(tmp_path)
    assert run.saved_config() == {} and run.resolved_config({}) is None and run.hydra_overrides() is None
    run.hydra_dir.mkdir()
    run.hydra_config_path.write_text("seed: ${x}\nx: 3\n")
    assert run.saved_config() == {"seed": "${x}", "x": 3}  # Hydra's, with its interpolations
    run.write_resolved_config({"seed": 3})
    assert run.saved_config() == {"seed": 3} and run.resolved_config({"config_file": "config.yaml"}).seed == 3
    run.hydra_overrides_path.write_text("- seed=3\n")
    assert run.hydra_overrides() == ["seed=3"]
    assert run.saved_diff(None) is None and run.saved_diff(run.write_diff("diff")) == "diff"
    # metrics.csv and the part set aside on resume; the newer value of a step wins
    (tmp_path / "metrics.1.csv").write_text("step,val/loss\n3,2.0\n6,1.5\n")
    run.metrics_path.write_text("step,val/loss,train/loss\n6,1.25,\n9,1.0,\n9,,0.5\n")
    assert run.metric_curve() == [(3, 2.0), (6, 1.25), (9, 1.0)]


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path):
    run = RunDir(tmp_path / "new")
    assert run.write_summary({"status": "failed"}) == run.summary_path
    assert run.summary() == {"status": "failed"}
    run.write_resolved_config({"a": 1})
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "summary.json"]


def test_runs_are_found_at_any_depth_in_job_order(tmp_path):
    for name in ("exp/2026-01-01", "sweep/multirun/2", "sweep/multirun/10", "sweep/multirun/replaced/0-abc"):
        make_run(tmp_path / name)
    (tmp_path / "sweep/multirun/11/.hydra").mkdir(parents=True)  # a job that died before writing
    (tmp_path / ".hidden/run").mkdir(parents=True)
    make_run(tmp_path / ".hidden/run2")
    (tmp_path / "data").mkdir()
    found = [str(r.path.relative_to(tmp_path)) for r in runs_below(tmp_path)]
    assert found == ["exp/2026-01-01", "sweep/multirun/2", "sweep/multirun/10", "sweep/multirun/11"]
    assert find_runs(tmp_path / "exp/2026-01-01") == [RunDir(tmp_path / "exp/2026-01-01")]
    assert find_runs(tmp_path / "data") == []


def test_a_sweeps_jobs(tmp_path):
    sweep = SweepDir(tmp_path)
    done = make_run(tmp_path / "0", config_hash="h0")
    make_run(tmp_path / "replaced/1-h1", config_hash="h1")  # moved out by a relaunch
    for job in ("0", "1", "2", "3", "10"):
        (tmp_path / job / ".hydra").mkdir(parents=True, exist_ok=True)
        (tmp_path / job / ".hydra/overrides.yaml").write_text(f"- seed={job}\n")
    RunDir(tmp_path / "1").write_summary({"status": "skipped", "same_as": str(tmp_path / "0"), "config_hash": "h0"})
    # same_as names where the run was; it is in replaced/ now
    RunDir(tmp_path / "2").write_summary({"status": "skipped", "same_as": str(tmp_path / "1"), "config_hash": "h1"})
    RunDir(tmp_path / "3").write_summary({"status": "skipped", "same_as": str(tmp_path / "9"), "config_hash": "h9"})
    jobs = sweep.jobs()
    assert [(j["job"], j["status"]) for j in jobs] == [
        ("0", "completed"),
        ("1", "skipped"),
        ("2", "skipped"),
        ("3", "failed"),
        ("10", "failed"),
    ]
    assert jobs[1]["same_as"] == str(done) and jobs[2]["same_as"] == str(tmp_path / "replaced/1-h1")
    assert jobs[3]["error"] == f"skipped as a repeat of {tmp_path / '9'}, which is gone"
    assert jobs[4] == {
        "job": "10",
        "run_dir": str(tmp_path / "10"),
        "status": "failed",
        "error": "no summary.json: the job stopped before training",
        "overrides": ["seed=10"],
    }
    assert resolve_same_as(RunDir(tmp_path / "2").summary(), tmp_path / "2") == tmp_path / "replaced/1-h1"
    assert sweep.completed("h0") == done and sweep.completed("h0", besides=done) is None
    assert [r.name for r in sweep.runs()] == ["0", "1-h1"]
    sweep.write_summary({"jobs": len(jobs)})
    assert json.loads(sweep.summary_path.read_text()) == {"jobs": 5}


def test_a_job_directory_is_set_aside_whole_but_for_hydras_files(tmp_path):
    sweep = SweepDir(tmp_path)
    job = make_run(tmp_path / "0", config_hash="h0")
    job.hydra_dir.mkdir()
    job.train_log_path.write_text("log")
    kept = sweep.set_aside(job, "h0")
    assert kept == tmp_path / "replaced/0-h0"
    assert sorted(p.name for p in job.path.iterdir()) == [".hydra", "train.log"]
    assert RunDir(kept).state() == ("h0", "completed")
    make_run(tmp_path / "0", config_hash="h0", status="failed")
    assert sweep.set_aside(job, "h0") == tmp_path / "replaced/0-h0-2"  # the earlier one is kept


def test_a_key_added_at_its_neutral_value_leaves_the_config_hash_as_it_was(tmp_path):
    """data.task arrived after runs were recorded: unset, it computes what they computed, so the
    hash is the one those runs recorded (a relaunched sweep finds them); set, it is part of it."""
    from omegaconf import OmegaConf, open_dict

    from loralab.reporting.run_meta import config_hash
    from tests.conftest import compose_config

    cfg = compose_config(["model=tiny"], tmp_path / "run")
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["data"]["task"]  # the config as runs before data.task composed it
    assert config_hash(cfg) == config_hash(before)
    with open_dict(cfg):
        cfg.data.task = "causal_lm"
    assert config_hash(cfg) != config_hash(before)


def test_forgetting_at_its_default_leaves_the_config_hash_as_it_was(tmp_path):
    """callbacks.forgetting arrived after runs were recorded and changes nothing they computed: at its
    default the hash is theirs (a relaunched sweep keeps its finished jobs); another probe is not."""
    from omegaconf import OmegaConf, open_dict

    from loralab.reporting.run_meta import config_hash
    from tests.conftest import compose_config

    cfg = compose_config(["model=tiny"], tmp_path / "run")
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["callbacks"]["forgetting"]
    assert config_hash(cfg) == config_hash(before)
    with open_dict(cfg):
        cfg.callbacks.forgetting.block_tokens = 128
    assert config_hash(cfg) != config_hash(before)


def test_compute_switches_off_leave_the_config_hash_of_runs_before_them(tmp_path):
    """compute.* arrived after runs were recorded: switched off, they compute what those runs
    computed (full logits, a float mask per adapter), so their hash is those runs'; on (the default),
    the runs differ by float rounding and random draws, so the hash differs."""
    from omegaconf import OmegaConf

    from loralab.reporting.run_meta import config_hash
    from tests.conftest import compose_config

    on = compose_config(["model=tiny"], tmp_path / "run")
    switches_off = [
        "compute.labelled_head=false",
        "compute.shared_dropout=false",
        "compute.fast_dropout=false",
        "compute.shared_prefix=false",
        "compute.shared_prefix_train=false",
        "compute.prompt_once=false",
    ]
    off = compose_config(["model=tiny", *switches_off], tmp_path / "run")
    before = OmegaConf.to_container(on, resolve=True)
    del before["compute"]  # the config as runs before the switches composed it
    assert config_hash(off) == config_hash(before)
    assert config_hash(on) != config_hash(before)
    one = compose_config(["model=tiny", "compute.shared_dropout=false"], tmp_path / "run")
    other = compose_config(["model=tiny", "compute.fast_dropout=false"], tmp_path / "run")
    assert len({config_hash(on), config_hash(one), config_hash(other), config_hash(off)}) == 4
