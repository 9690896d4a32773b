"""A multirun through the real CLI: a failing job is recorded and the sweep goes on, then exits
non-zero with the count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.test_cli_errors import BASE


def test_failing_job_does_not_end_the_sweep(tmp_path):
    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loralab.train",
            "-m",
            *BASE,
            # job 0 fails (a target that matches nothing), job 1 must still run
            "variant.target_modules=[nope_proj],[q_proj]",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: 1 of 2 sweep jobs failed (job 0: FreezeError: target module pattern 'nope_proj'")
    report = json.loads((sweep / "sweep_summary.json").read_text())
    assert report["jobs"] == 2 and report["failed"] == 1
    assert [r["status"] for r in report["runs"]] == ["failed", "completed"]
    assert "variant.target_modules=[q_proj]" in report["runs"][1]["overrides"]
    failed = json.loads((sweep / "0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "nope_proj" in failed["error"]
    done = json.loads((sweep / "1" / "summary.json").read_text())
    assert done["status"] == "completed" and (sweep / "1" / "adapter" / "adapter_model.safetensors").is_file()
