"""A seeded comparison on the tiny model: three configs x three seeds. A config that learns
(the baseline), one that cannot (a learning rate of 1e-9: a planted large difference in val loss),
and one that computes exactly what the baseline computes (it only logs more often). The table's
intervals, paired tests, Holm-corrected p-values and verdicts are checked against scipy on the
figures read from each run's summary.json; the curves' means and bands against the validations
each run recorded; compare.html against the table (its in-browser checks: test_compare_html)."""

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
                [*TINY, "trainer.max_steps=6", "trainer.val_check_interval=3", f"seed={seed}", *overrides],
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


def test_curves_are_the_mean_over_seeds_with_a_95_percent_band(sweep, tmp_path):
    import csv as csv_module

    from loralab.compare import compare
    from loralab.compare.plots import curve_series

    report = compare([str(sweep)], metric="val/loss", out=tmp_path, echo=False)
    assert report["aggregated"] and (tmp_path / "compare_val_loss.png").is_file()
    summaries = {
        (name, seed): json.loads((sweep / f"{name}-{seed}" / "summary.json").read_text())
        for name in CONFIGS
        for seed in SEEDS
    }
    for s in summaries.values():
        # before training, then every 3 optimizer steps; the last is the final figure
        assert [v["step"] for v in s["validations"]] == [0, 3, 6]
        assert s["validations"][-1]["val/loss"] == s["after"]["val/loss"]
        assert s["validations"][0]["val/loss"] == s["before"]["val/loss"]
    # metrics.csv logs a validation at the step of the batch before it (3 steps done: step 2)
    rows = list(csv_module.DictReader((sweep / "base-1" / "metrics.csv").open()))
    logged = {int(r["step"]): float(r["val/loss"]) for r in rows if r["val/loss"]}
    assert logged[2] == pytest.approx(summaries[("base", 1)]["validations"][1]["val/loss"], rel=1e-6)

    series = curve_series(report["runs"], "val/loss", None, aggregated=True)
    assert len(series) == 3 and all(s["n"] == 3 for s in series)
    for name in CONFIGS:
        per_step = [[summaries[(name, seed)]["validations"][i]["val/loss"] for seed in SEEDS] for i in range(3)]
        matching = [
            s
            for s in series
            if all(p[1] == pytest.approx(stats.tmean(v), rel=1e-9) for p, v in zip(s["points"], per_step, strict=True))
        ]
        assert matching, f"no curve is the mean of {name}'s seeds"
        for (step, _mean, band, n), values in zip(matching[0]["points"], per_step, strict=True):
            lo, hi = stats.t.interval(0.95, 2, loc=stats.tmean(values), scale=stats.sem(values))
            assert n == 3 and step in (0, 3, 6)
            if stats.sem(values) > 0:
                assert band == pytest.approx((lo, hi), rel=1e-9)


def test_compare_html_is_one_self_contained_page_of_the_table(sweep, tmp_path):
    from html.parser import HTMLParser

    from loralab.compare import compare

    report = compare([str(sweep)], metric="val/loss", out=tmp_path, echo=False)
    page = (tmp_path / "compare.html").read_text()

    class Walk(HTMLParser):
        def __init__(self):
            super().__init__()
            self.at, self.rows, self.headers, self.cell, self.sources = [], [], [], None, []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "table":
                self.at.append(attrs.get("id"))
            if tag in ("td", "th") and self.at and self.at[-1] == "compare":
                self.cell = ""
            if tag == "tr" and self.at and self.at[-1] == "compare":
                self.rows.append([])
            for key in ("src", "href"):
                if key in attrs:
                    self.sources.append(attrs[key])

        def handle_endtag(self, tag):
            if tag == "table":
                self.at.pop()
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    walk = Walk()
    walk.feed(page)
    header, *body = walk.rows
    assert header == report["headers"] and body == report["body"] and len(body) == 3
    pngs = [p for p in report["files"] if p.suffix == ".png"]
    # every plot inline, nothing fetched from anywhere
    assert len(pngs) >= 3 and len(walk.sources) == len(pngs)
    assert all(src.startswith("data:image/png;base64,") for src in walk.sources)
    import base64

    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in walk.sources) == sorted(
        p.read_bytes() for p in pngs
    )
    assert "http://" not in page and "https://" not in page
