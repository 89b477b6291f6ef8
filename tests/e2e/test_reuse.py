"""`runner submit --reuse`: answers already in the store are not paid for again (the mock's ledger says so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, run_args

pytestmark = pytest.mark.e2e

N = 12
MINI_IN, MINI_OUT = 0.40, 1.60  # gpt-4.1-mini in runner/prices.toml, USD per 1M tokens


def _write(path: Path, prefix: str, run: str, changes: dict[int, dict[str, Any]] | None = None) -> Path:
    with path.open("w") as f:
        for i in range(1, N + 1):
            body: dict[str, Any] = {
                "model": "gpt-4.1-mini",
                "input": f"Grade answer number {i} against the rubric.",
                "metadata": {"run": run},
                **(changes or {}).get(i, {}),
            }
            f.write(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/responses", "body": body}))
            f.write("\n")
    return path


def _export(cli: Cli, job: str, out: Path, *fmt: str) -> list[dict[str, Any]]:
    r = cli("export", job, "-o", str(out), *fmt)
    assert r.returncode == 0, r.stderr
    return read_jsonl(out)


def test_reuse_answers_repeats_from_the_store_and_says_so(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    mon = _write(tmp_path / "mon.jsonl", "mon", "monday")
    monday = cli.submit(mon)
    assert cli("run", monday, *run_args(mock)).returncode == 0
    assert mock.stats()["creates"] == N

    # The same file again, and Tuesday's: new metadata everywhere (still the same questions), a changed
    # temperature and a changed model (other questions).
    tue = _write(tmp_path / "tue.jsonl", "tue", "tuesday", {3: {"temperature": 0.5}, 4: {"model": "gpt-4.1-nano"}})
    r = cli("submit", str(mon), str(tue), "--reuse", "--new")
    assert r.returncode == 0, r.stderr
    assert f"queued 0 requests from {mon}; {N} answered from the store (reused)" in r.stderr
    assert f"queued 2 requests from {tue}; {N - 2} answered from the store (reused)" in r.stderr
    again, tuesday = r.stdout.split()[-2:]
    r = cli("run", *run_args(mock))
    assert r.returncode == 0, r.stderr
    stats = mock.stats()
    assert stats["creates"] == N + 2  # the repeated file sent nothing, Tuesday only its two new questions
    assert f"starting {again}" not in r.stderr

    paid = {x["custom_id"]: x["response"]["body"] for x in _export(cli, monday, tmp_path / "mon.out")}
    lines = _export(cli, tuesday, tmp_path / "tue.out")
    assert [x["custom_id"] for x in lines] == [f"tue-{i}" for i in range(1, N + 1)]
    for i, x in enumerate(lines, start=1):
        if i in (3, 4):
            assert x["response"]["body"]["id"] not in {b["id"] for b in paid.values()}
        else:
            assert x["response"]["body"] == paid[f"mon-{i}"]

    r = cli("report", tuesday, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["counts"]["completed"] == N
    # Tuesday's spend is its two new requests: the mock billed them, the reused lines cost nothing.
    assert report["usage"]["input_tokens"] == stats["usage"]["input_tokens"] - sum(
        b["usage"]["input_tokens"] for b in paid.values()
    )
    reused = report["reused"]
    saved_in = sum(paid[f"mon-{i}"]["usage"]["input_tokens"] for i in range(1, N + 1) if i not in (3, 4))
    saved_out = sum(paid[f"mon-{i}"]["usage"]["output_tokens"] for i in range(1, N + 1) if i not in (3, 4))
    assert reused["requests"] == N - 2
    assert (reused["usage"]["input_tokens"], reused["usage"]["output_tokens"]) == (saved_in, saved_out)
    assert reused["saved_usd"] == pytest.approx((saved_in * MINI_IN + saved_out * MINI_OUT) / 1e6, abs=1e-6)

    # `show` says where a reused line's answer came from, and that nothing was sent for it.
    r = cli("show", tuesday, "tue-1")
    assert r.returncode == 0, r.stderr
    assert f"none: answered from the store (submit --reuse), from request mon-1 of job {monday}" in r.stdout
    r = cli("show", tuesday, "tue-3", "--json")
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["reused"], json.loads(r.stdout)["reused_from"]) == (False, None)
    r = cli("show", tuesday, "tue-2", "--json")
    assert json.loads(r.stdout)["reused_from"] == {"job_id": monday, "custom_id": "mon-2"}


def test_deleting_the_job_an_answer_came_from_leaves_the_reusing_export_byte_identical(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    """The CLI side of tests/integration/test_reuse_ref.py: `runner delete` of the source job, then export."""
    mock = mock_factory()
    src = _write(tmp_path / "mon.jsonl", "mon", "monday")
    monday = cli.submit(src)
    assert cli("run", monday, *run_args(mock)).returncode == 0
    tuesday = cli.submit(src, "--reuse", "--new")
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    assert cli("export", tuesday, "-o", str(before)).returncode == 0
    r = cli("delete", monday, "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("export", tuesday, "-o", str(after))
    assert r.returncode == 0, r.stderr
    assert after.read_bytes() == before.read_bytes()
    assert len(read_jsonl(after)) == N and mock.stats()["creates"] == N
