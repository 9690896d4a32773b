"""A seeded comparison on the tiny model: three configs x three seeds. A config that learns
(the baseline), one that cannot (a learning rate of 1e-9: a planted large difference in val loss),
and one that computes exactly what the baseline computes (it only logs more often). The table's
intervals, paired tests, Holm-corrected p-values and verdicts are checked against scipy on the
figures read from each run's summary.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy import stats

from loralab.train import train

SEEDS = (1, 2, 3)
CONFIGS = {
    "base": ["optimizer.lr=0.01", "trainer.log_every_n_steps=1"],
    "frozen": ["optimizer.lr=1e-9", "trainer.log_every_n_steps=1"],
    "same": ["optimizer.lr=0.01", "trainer.log_every_n_steps=2"],
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    from tests.conftest import TINY, compose_config

    root = tmp_path_factory.mktemp("seeds")
    for name, overrides in CONFIGS.items():
        for seed in SEEDS:
            cfg = compose_config(
                [*TINY, "trainer.max_steps=6", "trainer.val_check_interval=6", f"seed={seed}", *overrides],
                root / f"{name}-{seed}",
                root / "cache",
            )
            train(cfg)
    return root


def val_loss(root: Path, name: str) -> list[float]:
    return [json.loads((root / f"{name}-{s}" / "summary.json").read_text())["after"]["val/loss"] for s in SEEDS]


def test_intervals_paired_tests_and_holm_verdicts_match_scipy(sweep, tmp_path):
    from loralab.compare import compare

    compare(
        [str(sweep)],
        metric="val/loss",
        group_by=["optimizer.lr", "trainer.log_every_n_steps"],
        baseline="optimizer.lr=0.01,trainer.log_every_n_steps=1",
        out=tmp_path,
        echo=False,
        plots=False,
    )
    rows = {
        (r["optimizer.lr"], r["trainer.log_every_n_steps"]): r
        for r in csv.DictReader((tmp_path / "compare.csv").open())
    }
    base, frozen, same = rows[("0.01", "1")], rows[("1e-09", "1")], rows[("0.01", "2")]
    figures = {name: val_loss(sweep, name) for name in CONFIGS}

    lo, hi = stats.t.interval(0.95, 2, loc=stats.tmean(figures["base"]), scale=stats.sem(figures["base"]))
    assert base["ci"] == f"[{lo:.4g}, {hi:.4g}]"

    p_frozen = stats.ttest_rel(figures["frozen"], figures["base"]).pvalue
    assert float(frozen["p"]) == pytest.approx(p_frozen)
    # the same figures seed for seed: no difference at all
    assert figures["same"] == figures["base"] and float(same["delta"]) == 0.0 and float(same["p"]) == 1.0
    holm = sorted([p_frozen, 1.0])
    assert float(frozen["p_holm"]) == pytest.approx(min(1.0, 2 * holm[0]))
    assert frozen["verdict"] == "worse"  # a higher val loss than the baseline's: the planted difference
    assert same["verdict"] == "within noise" and base["verdict"] == "baseline"
    assert float(frozen["delta"]) == pytest.approx(stats.tmean(figures["frozen"]) - stats.tmean(figures["base"]))


def test_one_seed_per_config_calls_nothing(sweep, tmp_path):
    from loralab.compare import compare

    runs = [str(sweep / f"{name}-1") for name in CONFIGS]
    compare(runs, metric="val/loss", baseline="optimizer.lr=1e-9", out=tmp_path, echo=False, plots=False)
    table = (tmp_path / "compare.md").read_text()
    assert "no difference can be called" in table and "better" not in table and "worse" not in table
