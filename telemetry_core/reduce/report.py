"""``telemetry report JOB_OUTPUT --html FILE``: a MapReduce job's histograms as bar charts.

Reads the output of a histogram job (``examples/jobs/histogram_aggregate.py``
writes ``<histogram>[<lower bound>]<TAB><count>`` lines, the bounds of each
record's own Histograms.json revision) and writes one self-contained HTML
page: a bar chart per histogram, one bar per bucket, labelled with the
bucket's lower bound, plus a table of the numbers.  The page carries its
charting script inline (the dashboard's ``charts.js``), so it opens from disk
with no server and no network.  Lines of another shape are counted and
listed as skipped.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import click

from ..receive.dashboard import STATIC_DIR

__all__ = ["parse_histogram_output", "render_html", "report_command"]

_LINE = re.compile(r"^(?P<name>.+)\[(?P<bound>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\]\t(?P<count>-?\d+(?:\.\d+)?)$")


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_histogram_output(text: str) -> tuple[dict[str, list[tuple[int | float, int | float]]], list[str]]:
    """``{histogram: [(lower bound, count), ...] ascending}`` and the lines that were not buckets."""
    histograms: dict[str, dict[int | float, int | float]] = {}
    skipped = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            if line.strip():
                skipped.append(line)
            continue
        buckets = histograms.setdefault(match["name"], {})
        bound = _number(match["bound"])
        buckets[bound] = buckets.get(bound, 0) + _number(match["count"])
    return {name: sorted(buckets.items()) for name, buckets in sorted(histograms.items())}, skipped


def render_html(histograms: dict[str, list[tuple[Any, Any]]], *, title: str, skipped: list[str] = ()) -> str:
    """The report page (self-contained: script and style inline)."""
    charts = (STATIC_DIR / "charts.js").read_text()
    data = json.dumps([{"name": name, "labels": [b for b, _ in buckets], "values": [c for _, c in buckets]}
                       for name, buckets in histograms.items()])
    sections = []
    for index, (name, buckets) in enumerate(histograms.items()):
        rows = "".join(f"<tr><td>{html.escape(str(bound))}</td><td class=num>{count:,}</td></tr>"
                       for bound, count in buckets)
        total = sum(count for _, count in buckets)
        sections.append(
            f'<section class="histogram" data-histogram="{html.escape(name)}">'
            f"<h2>{html.escape(name)}</h2><p>{len(buckets)} buckets, {total:,} samples</p>"
            f'<div class="chart" id="chart-{index}"></div>'
            f"<details><summary>numbers</summary><table><tr><th>bucket (lower bound)</th><th>count</th></tr>"
            f"{rows}</table></details></section>")
    skipped_note = (f"<p class=skipped>{len(skipped)} lines were not histogram buckets and are left out.</p>"
                    if skipped else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f4f6f9; }}
section {{ background: #fff; border-radius: 6px; padding: 0.6em 1em; margin-bottom: 1em;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); max-width: 60em; }}
h2 {{ font-size: 1.05em; margin: 0.3em 0; }} p {{ color: #5a6475; margin: 0.2em 0; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.1em 0.8em; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.chart-title {{ font-size: 13px; font-weight: 600; }} .chart-axis {{ font-size: 10px; fill: #5a6475; }}
.chart-grid {{ stroke: #e3e7ee; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(histograms)} histograms; each bar is a bucket, labelled with its lower bound in the revision the
records were converted with.</p>
{skipped_note}
{''.join(sections)}
<script>{charts}</script>
<script>
var histograms = {data};
histograms.forEach(function (h, i) {{
  TelemetryCharts.bars(document.getElementById("chart-" + i), h.labels, h.values,
                       {{width: 720, height: 180, unit: "samples", maxBar: 40}});
}});
document.body.dataset.rendered = String(histograms.length);
</script>
</body></html>
"""


@click.command("report")
@click.argument("job_output", type=click.Path(exists=True, dir_okay=False))
@click.option("--html", "html_path", type=click.Path(dir_okay=False), required=True, metavar="FILE",
              help="Write the page to FILE.")
@click.option("--title", default=None, help="The page's title (default: the output file's name).")
def report_command(job_output: str, html_path: str, title: str | None) -> None:
    """Draw a histogram MapReduce job's output as bar charts, one per histogram, in one HTML page.

    JOB_OUTPUT holds <histogram>[<lower bound>]<TAB><count> lines (what
    examples/jobs/histogram_aggregate.py writes). The page needs no server.
    """
    histograms, skipped = parse_histogram_output(Path(job_output).read_text(encoding="utf-8"))
    if not histograms:
        raise click.ClickException(f"{job_output} holds no <histogram>[<bound>]<TAB><count> lines; "
                                   "run a histogram job such as examples/jobs/histogram_aggregate.py")
    Path(html_path).write_text(render_html(histograms, title=title or f"Histograms of {Path(job_output).name}",
                                           skipped=skipped), encoding="utf-8")
    click.echo(f"wrote {len(histograms)} histogram charts to {html_path}"
               + (f" ({len(skipped)} other lines left out)" if skipped else ""), err=True)
