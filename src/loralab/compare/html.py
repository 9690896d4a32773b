"""compare.html: the comparison as one self-contained page (no network, nothing beside it needed):
the table, sortable by any column (click a header; `#sort=<header>` or `#sort=<header>&desc` in
the address sorts on opening, and clicking updates it, so a sorted view can be shared), the notes,
the plots inlined as PNG data, and every run with its status and error."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

# numbers sort as numbers ("1,234 ± 5" by 1234, "[0.1, 0.2]" by 0.1, "+0.05 [...]" by 0.05), text
# as text after them, "-" (nothing) last whichever the direction
SCRIPT = """
(function () {
  var table = document.getElementById("compare");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function key(cell) {
    var text = cell.textContent.trim();
    if (text === "" || text === "-") return null;
    var m = text.replace(/,/g, "").match(/^[\\[(]?\\s*([-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?)/i);
    return m ? parseFloat(m[1]) : text.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  function sortBy(col, desc) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row._order = i; });
    rows.sort(function (x, y) {
      var a = key(x.cells[col]), b = key(y.cells[col]);
      if (a === null || b === null) return a === b ? x._order - y._order : a === null ? 1 : -1;
      return (desc ? -1 : 1) * compare(a, b) || x._order - y._order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (h, i) {
      h.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none");
    });
    table.setAttribute("data-sorted-by", heads[col].textContent.trim() + (desc ? " desc" : ""));
  }
  heads.forEach(function (h, i) {
    h.addEventListener("click", function () {
      var desc = h.getAttribute("aria-sort") === "ascending";
      sortBy(i, desc);
      history.replaceState(null, "", "#sort=" + encodeURIComponent(h.textContent.trim()) + (desc ? "&desc" : ""));
    });
  });
  var m = location.hash.match(/^#sort=([^&]*)(&desc)?$/);
  if (m) {
    var name = decodeURIComponent(m[1]);
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].textContent.trim() === name) { sortBy(i, !!m[2]); break; }
    }
  }
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { display: inline-block; vertical-align: top; width: 760px; max-width: 100%; margin: 0.5em 0.5em 0.5em 0; }
figure img { width: 100%; border: 1px solid #eee; }
figcaption, .meta { font-size: 0.8em; color: #666; }
.scroll { overflow-x: auto; }
"""


def _cells(tag: str, cells: list[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _table(headers: list[str], body: list[list[str]], table_id: str | None = None) -> str:
    ident = f' id="{table_id}"' if table_id else ""
    rows = "\n".join(_cells("td", cells) for cells in body)
    head = f'<div class="scroll"><table{ident}><thead>{_cells("th", headers)}</thead>'
    return f"{head}\n<tbody>\n{rows}\n</tbody></table></div>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def _sources(sources: list) -> str:
    """The paths compared (str or Path): all of them when few, else their common directory and a count."""
    sources = [str(s) for s in sources]
    if len(sources) <= 3:
        return ", ".join(sources)
    import os

    try:
        where = "under " + os.path.commonpath([os.path.abspath(s) for s in sources])
    except ValueError:  # different drives
        where = f"{sources[0]} and others"
    return f"{len(sources)} paths, {where}"


def write_html(
    path: Path,
    title: str,
    headers: list[str],
    body: list[list[str]],
    notes: list[str],
    images: list[Path],
    runs: list[dict],
    metric: str,
    sources: list[str],
) -> Path:
    """Write compare.html: the table (id `compare`, one row per config or run), the notes, the
    plots and, when rows are aggregated, every run below them."""
    from loralab import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">metric: {html.escape(metric)} · written {stamp} by loralab {html.escape(__version__)} from '
        + html.escape(_sources(sources))
        + " · click a column header to sort</p>",
        _table(headers, body, "compare"),
    ]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    if images:
        parts.append("<h2>Plots</h2>")
        parts += [_image(p) for p in images]
    if len(runs) != len(body):
        run_headers = ["run", "status", "variant", "seed", metric, "val loss", "error"]
        run_body = [
            [
                r["run"],
                r["status"],
                str(r.get("variant")),
                str(r.get("seed")),
                "-" if r.get("metric") is None else f"{r['metric']:.4g}",
                "-" if r.get("val_loss") is None else f"{r['val_loss']:.4g}",
                r.get("error") or "",
            ]
            for r in runs
        ]
        parts += [f"<details><summary>the {len(runs)} runs</summary>", _table(run_headers, run_body), "</details>"]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
