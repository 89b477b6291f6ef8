"""`runner report` as a user reads it: text, `--json` and the HTML page of a job whose names, model, answers
and error codes were written to break a page, and `--html` given something that is not a file path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import Cli, run_args

HOSTILE_NAME = "</title><script>alert('name')</script>"
HOSTILE_MODEL = "<img src=x onerror=alert('model')>"  # no price: listed as unpriced
HOSTILE_CODE = "<script>alert('code')</script>"


def submit_hostile_job(cli: Cli, tmp_path: Path) -> str:
    src = tmp_path / "in.jsonl"
    with src.open("w") as f:
        for i in range(3):
            metadata = {"mock_outputs": json.dumps([f"</script><script>alert('answer {i}')</script>"])}
            if i == 2:
                metadata = {"mock_error": HOSTILE_CODE}
            model = "gpt-4.1-mini" if i == 0 else HOSTILE_MODEL  # one priced line: a cost of a few millionths
            body = {"model": model, "input": f"<b>question {i}</b>", "metadata": metadata}
            cid = f"<script>alert('id {i}')</script>"
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return cli.submit(src, "--name", HOSTILE_NAME)


def test_a_hostile_job_is_reported_as_text_in_json_and_html(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    job = submit_hostile_job(cli, tmp_path)
    r = cli("run", job, *run_args(mock_factory(), "--quiet"))
    assert r.returncode == 1, r.stderr  # the scripted failure

    r = cli("report", job, "--json", "--html", "page.html")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["name"] == HOSTILE_NAME
    assert [u["model"] for u in rep["cost"]["unpriced"]] == [HOSTILE_MODEL]
    assert rep["cost"]["complete"] is False  # a lower bound: the unpriced tokens are not in it
    assert [m["model"] for m in rep["cost"]["by_model"]] == ["gpt-4.1-mini"] and 0 < rep["cost"]["usd"] < 0.0001
    assert [e["code"] for e in rep["errors"]] == [HOSTILE_CODE]

    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    # The page's only elements that run or load anything are its own two script blocks.
    assert len(re.findall(r"<script\b", page, re.I)) == 2
    assert not re.search(r"<(img|iframe|link|object|embed)\b", page, re.I)
    for text in (HOSTILE_NAME, HOSTILE_MODEL, HOSTILE_CODE, "<script>alert('id 0')</script>"):
        assert text not in page
    assert "&lt;/title&gt;&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page.split("</title>")[0]
    assert "<td>&lt;img src=x onerror=alert(&#x27;model&#x27;)&gt;</td>" in page  # the cost table's unpriced row
    assert f"<td>{HOSTILE_CODE.replace('<', '&lt;').replace('>', '&gt;').replace(chr(39), '&#x27;')}</td>" in page
    # The headline cost reads as in the text report ("at least $0.000012"), not rounded to "$0.0000".
    text = cli("report", job)
    cost = re.search(r"^  cost: (at least \$[\d.]+) ", text.stdout, re.M)
    assert cost is not None, text.stdout
    assert f"cost <b>{cost.group(1)}</b>" in page
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert block is not None
    assert json.loads(block.group(1))["report"]["errors"] == rep["errors"]


def test_html_wants_a_file_path(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    job = submit_hostile_job(cli, tmp_path)
    # `-` means stdout for `export -o`; here the text report already goes there, and a file named `-` in the
    # working directory was what a user got.
    r = cli("report", job, "--html", "-")
    assert r.returncode == 2
    want = "runner: --html writes a file, not stdout: give a path such as report.html"
    assert r.stderr.strip().splitlines() == [want]
    assert not (tmp_path / "-").exists() and r.stdout == ""

    r = cli("report", job, "--html", "")  # --html "$REPORT" with the variable unset
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["runner: --html is empty: give a file path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "runner.db"]
