"""`runner show` and the joined exports through the CLI, against the mock server with 429s and 503s."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e

N = 4
# A fixed seed makes the mock's sequence of faults fixed: each POST takes the next draw, and the run ends at
# the draw that completes the last line, so the totals below do not depend on timing.
FAULTS = ("--p429", "0.25", "--p5xx", "0.25", "--retry-after", "0.05", "--seed", "72")


def jobfile(path: Path) -> Path:
    with path.open("w") as f:
        for i in range(1, N + 1):
            body: dict[str, Any] = {"model": "gpt-test", "input": f"Question {i}?", "metadata": {"gold": f"g{i}"}}
            if i == 2:
                body["metadata"]["split"] = "dev"
                body["input"] = [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "Look:"},
                            {"type": "input_image", "image_url": "https://x/i.png"},
                        ],
                    }
                ]
            f.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return path


ATTEMPT = re.compile(r"^  attempt (\d+) · \S+ \S+ · HTTP (\d{3})( \S+)? · request id \S+ · (retried|completed)$")


def test_show_prints_every_attempt_of_requests_retried_after_429_and_503(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory(*FAULTS)
    job = cli.submit(jobfile(tmp_path / "in.jsonl"))
    r = cli("run", job, *run_args(mock, "--concurrency", "3", "--max-attempts", "20", "--quiet"))
    assert r.returncode == 0, r.stderr
    faults = mock.stats()["faults"]
    assert faults.get("429", 0) > 0 and faults.get("5xx", 0) > 0  # the seed gives both kinds

    seen: dict[str, int] = {"200": 0, "429": 0, "503": 0}
    total = 0
    for i in range(1, N + 1):
        # the job may be left out: the newest one is used
        shown = cli("show", f"q-{i}") if i == 1 else cli("show", job, f"q-{i}")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"request q-{i} · line {i} · job {job} · completed")
        tries = [m for m in map(ATTEMPT.match, lines) if m]
        assert [int(m.group(1)) for m in tries] == list(range(1, len(tries) + 1))
        assert [m.group(4) for m in tries] == ["retried"] * (len(tries) - 1) + ["completed"]
        for m in tries:
            seen[m.group(2)] += 1
        total += len(tries)
        # the request as sent, and the final answer in full
        assert '"gold": "g' + str(i) + '"' in shown.stdout
        assert "output_text:" in shown.stdout and "final: completed" in shown.stdout
    # every POST the mock answered is one attempt line, with the status it got
    assert seen == {"200": N, "429": faults["429"], "503": faults["5xx"]}
    assert total == cli.status(job)["attempts"]

    missing = cli("show", job, "q-99")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"runner: job {job} has no request with custom_id 'q-99'"
    as_json = json.loads(cli("show", job, "q-1", "--json").stdout)
    assert as_json["request"]["metadata"] == {"gold": "g1"} and as_json["attempts"][-1]["outcome"] == "completed"

    # the csv export carries the input, and one column per metadata key of the job
    out = tmp_path / "r.csv"
    r = cli("export", job, "--format", "csv", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames is not None and reader.fieldnames[-2:] == ["metadata.gold", "metadata.split"]
    assert [(x["custom_id"], x["line"], x["metadata.gold"], x["metadata.split"]) for x in rows] == [
        ("q-1", "1", "g1", ""),
        ("q-2", "2", "g2", "dev"),
        ("q-3", "3", "g3", ""),
        ("q-4", "4", "g4", ""),
    ]
    assert rows[1]["input"] == "user: Look: [image]" and rows[0]["input"] == "Question 1?"
    assert all(x["model"] == "gpt-test" and x["output_text"] for x in rows)
