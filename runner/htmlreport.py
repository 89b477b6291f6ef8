"""`runner report --html PATH`: the job's report as one self-contained HTML page, to open in any browser.

No network: the styles, the data and the small script that draws the charts as inline SVG are all in the
page. The data are the report (`Report.to_json()`, the same figures as `runner report --json`, embedded
as one JSON block) and a timeline aggregated in the store (`runner.store.outputs.timeline`), so the page
stays small and quick for a million-request job. Tables are written here, escaped; the script only draws
the charts and marks each one `data-drawn` (the browser test checks every chart drew, with no errors).
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from runner.errors import ConfigError
from runner.files import atomic_writer, refuse_store_file, refused_write
from runner.prices import PriceTable
from runner.report import Report, build_report, cost_headline
from runner.store import Store
from runner.store.outputs import LATENCY_EDGES, Timeline, timeline

__all__ = ["page_data", "render_html", "write_html"]

CHARTS = ("throughput", "latency", "attempts", "histogram")


def _pname(q: float) -> str:
    return f"p{q * 100:g}"


def page_data(report: Report, tl: Timeline) -> dict[str, Any]:
    """Everything the page shows, as JSON: the report as `--json` gives it, and the timeline."""
    return {
        "report": report.to_json(),
        "timeline": {
            "t0": tl.t0,
            "width": tl.width,
            "bins": [
                {
                    "start": b.start,
                    "completed": b.completed,
                    "failed": b.failed,
                    "latency": {_pname(q): v for q, v in b.latency.items()},
                    "attempts": b.attempts,
                    "retried": b.retried,
                    "rate_limited": b.rate_limited,
                }
                for b in tl.bins
            ],
            "latency_edges": list(LATENCY_EDGES),
            "histogram": tl.histogram,
        },
    }


def _json_block(data: dict[str, Any]) -> str:
    # Every `<` as \u003c: text from the API or the file can never close the script element.
    return orjson.dumps(data).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(head: list[str], rows: list[list[Any]], cls: str) -> str:
    if not rows:
        return '<p class="none">none</p>'
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: Report, tl: Timeline) -> str:
    """The whole page."""
    data = page_data(report, tl)
    j = data["report"]
    counts = _table(["state", "requests"], [[k, v] for k, v in j["counts"].items()], "counts")
    usage = _table(["tokens", "count"], [[k, v] for k, v in j["usage"].items()], "usage")
    cost = j["cost"]
    cost_rows = [[m["model"], m["requests"], m["usage"]["total_tokens"], f"{m['usd']:.6f}"] for m in cost["by_model"]]
    cost_rows += [[m["model"], m["requests"], m["usage"]["total_tokens"], "no price"] for m in cost["unpriced"]]
    checks = j["output_checks"]
    check_rows = [[k, checks[k]] for k in ("valid", "invalid_json", "schema_mismatch", "repairs", "repaired_requests")]
    check_rows.append(["rejected answers (USD)", f"{checks['rejected_usd']:.6f}"])
    errors = _table(
        ["code", "count", "example", "message"],
        [
            [g["code"], g["count"], g["examples"][0]["custom_id"] if g["examples"] else "", _first_message(g)]
            for g in j["errors"]
        ],
        "errors",
    )
    slow = _table(
        ["custom_id", "line", "seconds", "attempts"],
        [[s["custom_id"], s["line_no"], f"{s['seconds']:.3f}", s["attempts"]] for s in j["slowest"]],
        "slowest",
    )
    lat = j["latency_seconds"]
    lat_line = " · ".join(f"{k} {lat[k]:.3f} s" for k in ("p50", "p95", "p99") if lat.get(k) is not None)
    charts = "".join(
        f'<figure class="chart" data-chart="{name}"><figcaption>{_e(title)}</figcaption></figure>'
        for name, title in zip(
            CHARTS,
            (
                "requests finished per second",
                "latency p50 / p95 / p99 over the run (s)",
                "attempts, retries and 429s per second",
                "latency distribution (requests per bucket)",
            ),
            strict=True,
        )
    )
    title = f"runner report: {j['name']} ({j['job_id']})"
    return _PAGE.format(
        title=_e(title),
        job=_e(j["job_id"]),
        name=_e(j["name"]),
        status=_e(j["state"]),
        total=_e(j["total"]),
        elapsed=_e("" if j["elapsed_seconds"] is None else f"{j['elapsed_seconds']:.1f} s"),
        cost=_e(cost_headline(cost["usd"], complete=cost["complete"], priced=bool(cost["by_model"]))),
        latency=_e(lat_line or "no finished requests"),
        attempts=_e(f"{j['attempts']} attempts · {j['retries']} retries · {j['rate_limited']} rate limited (429)"),
        counts=counts,
        usage=usage,
        cost_table=_table(["model", "requests", "total tokens", "USD"], cost_rows, "cost"),
        checks=_table(["structured outputs", "count"], check_rows, "checks"),
        errors=errors,
        slowest=slow,
        charts=charts,
        data=_json_block(data),
        script=_SCRIPT,
        style=_STYLE,
    )


def _first_message(group: dict[str, Any]) -> str:
    examples = group["examples"]
    message = examples[0]["message"] if examples else None
    return (message or "")[:300]


async def write_html(store: Store, job_id: str, prices: PriceTable, path: str | Path) -> Report:
    """Build the report and its timeline from the store and write the page to `path` (atomically)."""
    # Checked as given: Path("") is ".", and `-` (stdout for `export -o`) made a file named `-`.
    if str(path) == "":
        raise ConfigError("--html is empty: give a file path")
    if str(path) == "-":
        raise ConfigError("--html writes a file, not stdout: give a path such as report.html")
    path = Path(path)
    refuse_store_file(path, store.path)
    report = await build_report(store, job_id, prices)
    tl = await timeline(store, job_id)
    page = render_html(report, tl).encode()
    try:
        with atomic_writer(path) as f:
            f.write(page)
    except OSError as e:
        refused = refused_write(e, str(path))
        if refused is None:
            raise
        raise refused from None
    return report


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
.summary span{display:inline-block;margin-right:1.5em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1em}
figure.chart{margin:0;border:1px solid #ddd;padding:.5em}figcaption{font-weight:600;margin-bottom:.3em}
svg text{font-size:10px;fill:#555}.none{color:#777}#js-errors{color:#b00}
.legend span{margin-right:1em}
"""

# Draws each chart from the embedded data as inline SVG, then marks it drawn. Errors land in #js-errors.
_SCRIPT = files("runner").joinpath("htmlreport.js").read_text(encoding="utf-8")

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body>
<h1>{title}</h1>
<p class="summary"><span>status <b>{status}</b></span><span>requests <b>{total}</b></span>
<span>elapsed <b>{elapsed}</b></span><span>cost <b>{cost}</b> (estimate)</span></p>
<p class="summary"><span>latency: {latency}</span><span>{attempts}</span></p>
<div class="grid">{charts}</div>
<div class="grid">
<section><h2>Counts</h2>{counts}</section>
<section><h2>Usage</h2>{usage}</section>
<section><h2>Cost by model</h2>{cost_table}</section>
<section><h2>Structured outputs</h2>{checks}</section>
</div>
<h2>Errors by code</h2>{errors}
<h2>Slowest requests</h2>{slowest}
<pre id="js-errors"></pre>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body></html>
"""
