"""Every bad input of the catalogue (tests/integration/bad_inputs.py, docs/bad-inputs.md): the exit
code, stderr's last line word for word, and that nothing that existed before was changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.integration.bad_inputs import (
    CASES,
    last_line,
    make_read_only,
    prepare,
    render,
    run_case,
    undo_read_only,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_catalogue_is_documented():
    assert len(CASES) >= 120 and len({c.name for c in CASES}) == len(CASES)
    assert DOC.read_text() == render(), (
        "regenerate: .venv/bin/python -m tests.integration.bad_inputs > docs/bad-inputs.md"
    )
    readme = (DOC.parents[1] / "README.md").read_text()
    assert f"the {len(CASES)} bad inputs" in readme and f"lists the {len(CASES)} bad inputs" in readme


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.matrix] if c.matrix else []) for c in CASES]
)
def test_bad_input(case, tmp_path, tiny_runs, monkeypatch):
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    tmp = tmp_path / "case"
    tmp.mkdir()
    if case.read_only and not make_read_only(tmp / case.read_only):
        undo_read_only(tmp / case.read_only)
        pytest.skip("this process writes into read-only directories here (root, no immutable flag)")
    try:
        check_case(case, tmp, tiny_runs, monkeypatch)
    finally:
        if case.read_only:
            undo_read_only(tmp / case.read_only)


def check_case(case, tmp: Path, tiny_runs, monkeypatch) -> None:
    prepare(case, tmp, tiny_runs)
    before = files(tmp)
    code, stderr = run_case(case, tmp, monkeypatch)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert (code, last_line(stderr)) == (case.code, case.message.replace("{tmp}", str(tmp))), stderr[-3000:]
    after = files(tmp)
    changed = sorted(name for name, data in before.items() if after.get(name) != data)
    assert not changed, f"existing files changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    if case.writes_nothing:
        assert not new, f"a refused command wrote {new}"
    else:  # only the new run's own directory, and it says why it stopped
        assert all(name.startswith(f"{case.run_dir}/") for name in new), new
        summary = json.loads((tmp / case.run_dir / "summary.json").read_text())
        assert summary["status"] == case.status
        said = last_line(stderr).removeprefix("loralab: error: ").removeprefix("loralab: ")
        assert said in summary["error"]
