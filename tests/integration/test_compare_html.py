"""compare.html in a real headless browser (Chromium; `make test-browser` installs Debian's
chromium-headless-shell when it is missing, and .ci/run runs this tier): the page loads, its
table has one row per config, `#sort=<header>` sorts it by that column, and the plots render
(a screenshot of the page holds the plots' coloured pixels; the same page without them does not)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.test_compare_stats import sweep  # noqa: F401 - the 3 configs x 3 seeds fixture

pytestmark = pytest.mark.browser
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = os.environ.get("LORALAB_CHROMIUM") or next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if not found:
        pytest.fail(
            "no Chromium found for the browser tier: `make test-browser` installs Debian's chromium-headless-shell, "
            "or point LORALAB_CHROMIUM at a Chromium binary"
        )
    return found


def chromium(url: str, *args: str) -> str:
    proc = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Rows(HTMLParser):
    """The cells of table#compare's body, as the browser left them."""

    def __init__(self):
        super().__init__()
        self.inside, self.body, self.rows, self.cell = False, False, [], None
        self.attrs: dict = {}

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "compare":
            self.inside, self.attrs = True, dict(attrs)
        elif self.inside and tag == "tbody":
            self.body = True
        elif self.body and tag == "tr":
            self.rows.append([])
        elif self.body and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None
        elif tag == "table" and self.inside:
            self.inside = self.body = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def dom_rows(url: str) -> Rows:
    rows = Rows()
    rows.feed(chromium(url, "--dump-dom"))
    return rows


def coloured_pixels(png: Path) -> int:
    """Pixels of a clear colour (matplotlib's lines, markers and bands), not white, grey or black text."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    return sum(1 for r, g, b in image.getdata() if max(r, g, b) - min(r, g, b) > 60)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):  # noqa: F811
    from loralab.compare import compare

    out = tmp_path_factory.mktemp("report")
    return compare([str(sweep)], metric="val/loss", out=out, echo=False)


def test_the_page_loads_with_one_row_per_config(report):
    page = report["out"] / "compare.html"
    rows = dom_rows(page.as_uri())
    assert len(rows.rows) == len(report["rows"]) == 3
    assert [r[0] for r in rows.rows] == [b[0] for b in report["body"]]
    assert "data-sorted-by" not in rows.attrs  # nothing sorted unless asked


@pytest.mark.parametrize("header,desc", [("val loss", True), ("val loss", False), ("run", True)])
def test_sort_from_the_address(report, header, desc):
    column = report["headers"].index(header)
    url = (report["out"] / "compare.html").as_uri() + f"#sort={header.replace(' ', '%20')}" + ("&desc" if desc else "")
    rows = dom_rows(url)
    assert rows.attrs.get("data-sorted-by") == header + (" desc" if desc else "")
    if header == "val loss":  # by the mean, numerically, from the rows' own figures
        order = sorted(range(3), key=lambda i: report["rows"][i]["val_loss"], reverse=desc)
        expected = [report["body"][i][column] for i in order]
    else:
        expected = sorted((b[column] for b in report["body"]), reverse=desc)
    assert [r[column] for r in rows.rows] == expected


def test_the_plots_render(report, tmp_path):
    page = report["out"] / "compare.html"
    html = page.read_text()
    # the same page without its plots, as the control: what the table and text alone colour
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<figure>.*?</figure>", "", html, flags=re.S))
    shots = {}
    for name, path in (("page", page), ("bare", bare)):
        shots[name] = tmp_path / f"{name}.png"
        chromium(path.as_uri(), f"--screenshot={shots[name]}", "--window-size=1600,4000")
    assert shots["page"].stat().st_size > 0
    plots = sum(coloured_pixels(p) for p in report["files"] if p.suffix == ".png")
    shown, control = coloured_pixels(shots["page"]), coloured_pixels(shots["bare"])
    # the plots' own coloured pixels, at least half of them on screen (scaled to fit, not blank)
    assert shown - control > plots / 2, (shown, control, plots)
