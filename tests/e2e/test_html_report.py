"""`runner report --html`: the page drawn by a real headless browser (Debian's chromium), every chart drawn
with no script error, and its figures equal to `runner report --json`'s."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import Cli, run_args

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = {"throughput", "latency", "attempts", "histogram"}


def dump_dom(page: Path, profile: Path) -> str:
    r = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_html_report_draws_every_chart_and_matches_the_json_report(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--p5xx", "0.2", "--p429", "0.2", "--retry-after", "0")
    src = tmp_path / "in.jsonl"
    with src.open("w") as f:
        for i in range(24):
            # Ids made to break out of the page's script and markup, if anything were left unescaped.
            cid = f"</script><script>document.title='pwned'</script>{i}"
            body = {"model": "gpt-4.1-mini", "input": f"question {i} " + "x" * (i * 20)}
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    job = cli.submit(src)
    # One attempt each: a 5xx or 429 fails its line at once (no backoff to wait for), so errors show too.
    r = cli("run", job, *run_args(mock, "--max-attempts", "1", "--quiet"))
    assert r.returncode == 1, r.stderr

    page = tmp_path / "out" / "report.html"
    r = cli("report", job, "--json", "--html", str(page))
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    assert f"wrote the HTML report to {page}" in r.stderr
    text = page.read_text()
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", text)  # nothing loaded from anywhere: one file

    dom = dump_dom(page, tmp_path / "profile")
    body_tag = re.search(r"<body[^>]*>", dom)
    assert body_tag is not None and 'data-ready="1"' in body_tag.group(0) and "data-errors" not in body_tag.group(0)
    assert re.search(r'<pre id="js-errors"></pre>', dom), "a script error was reported on the page"
    drawn = set(re.findall(r'<figure class="chart" data-chart="(\w+)" data-drawn="1">', dom))
    assert drawn == CHARTS
    assert len(re.findall(r"<svg ", dom)) == len(CHARTS)
    assert "<title>runner report" in dom and "pwned" not in dom.split("</title>")[0]
    slowest = want["slowest"][0]["custom_id"]
    assert f"<td>{html.escape(slowest, quote=False)}</td>" in dom  # shown as text, in the slowest table

    # The data block is the JSON report (generated at another instant, the same figures).
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert block is not None
    data = json.loads(block.group(1))
    got = data["report"]
    assert {k: v for k, v in got.items() if k != "generated_at"} == {
        k: v for k, v in want.items() if k != "generated_at"
    }
    # ...and what the reader sees says the same: the counts table, and the timeline adds up to them.
    for state, n in want["counts"].items():
        assert f"<tr><td>{state}</td><td>{n}</td></tr>" in dom
    bins = data["timeline"]["bins"]
    finished = sum(n for s, n in want["counts"].items() if s not in ("queued", "in_progress"))
    assert sum(b["completed"] + b["failed"] for b in bins) == finished
    assert sum(b["attempts"] for b in bins) == want["attempts"]
    assert sum(b["rate_limited"] for b in bins) == want["rate_limited"] > 0
    assert sum(data["timeline"]["histogram"]) == want["latency_seconds"]["count"]
    assert html.escape(want["errors"][0]["code"]) in dom
