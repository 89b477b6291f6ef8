"""Everything a server sends is untrusted: the CLI against a deliberately misbehaving server (tests/servers).

One server process serves every scenario, picked by each line's input text, and one job holds a line per
scenario: each test checks what the user sees per line, that the good lines completed beside the bad ones,
that a second `runner run` sends nothing, and that the store passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl
from tests.servers import misbehaving, started

pytestmark = pytest.mark.e2e

SERVER = Path(misbehaving.__file__)
KEY = "sk-test-KEY-never-stored-1234"


@dataclass
class Misbehaving:
    proc: subprocess.Popen[str]
    base_url: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_stats", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data


@pytest.fixture
def server() -> Iterator[Misbehaving]:
    with started(SERVER) as (proc, urls):
        yield Misbehaving(proc, urls[0])


def test_the_server_imports_nothing_of_the_runner() -> None:
    tree = ast.parse(SERVER.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n == "runner" or n.startswith(("runner.", "tests"))]


def job_file(path: Path, scenarios: list[str], *, background: tuple[str, ...] = ()) -> Path:
    with path.open("w") as f:
        for s in scenarios:
            body: dict[str, Any] = {"model": "gpt-test", "input": f"scenario:{s}"}
            if s in background:
                body.update(background=True, store=True)
            f.write(json.dumps({"custom_id": s, "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    return path


def rows(db: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["custom_id"]: dict(r) for r in conn.execute("select * from requests")}
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def run(cli: Cli, server: Misbehaving, job: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "run",
        job,
        "--base-url",
        server.base_url,
        "--quiet",
        *flags,
        extra_env={"OPENAI_API_KEY": KEY},
        timeout=60,
    )


OKS = [f"ok_{i}" for i in range(5)]
BACKGROUND = ("bg_ok", "bg_other_id", "bg_inf_headers")


def test_a_job_of_every_bad_reply_finishes_and_keeps_every_answer(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    scenarios = [
        *OKS,
        *misbehaving.USAGES,
        *misbehaving.RATE_HEADERS,
        *misbehaving.RETRY_AFTERS,
        *misbehaving.BODIES,
        *misbehaving.ODD_FIELDS,
        "escapes",
        "error_deep",
        "bad_gzip",
        "not_openai_400",
        "key_echo_json",
        "key_echo_ok",
        "big_header",
        "trickle",
        *BACKGROUND,
    ]
    job = cli.submit(job_file(tmp_path / "in.jsonl", scenarios, background=BACKGROUND))
    # One attempt each, every line in flight at once.
    t0 = time.monotonic()
    r = run(cli, server, job, "--max-attempts", "1", "--concurrency", "64", "--timeout", "2")
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stderr  # finished, with failed requests
    assert "Traceback" not in r.stderr
    assert wall < 20, wall  # the trickling reply is cut at the 2 s timeout, not after its 100+ s
    got = rows(cli.db)

    # Every line was sent exactly once, and a second run sends nothing already answered.
    assert server.stats()["posts"] == dict.fromkeys(scenarios, 1)
    again = run(cli, server, job, "--max-attempts", "1")
    assert again.returncode in (0, 1), again.stderr
    assert server.stats()["total_posts"] == len(scenarios)
    assert integrity(cli.db) == "ok"

    # The good answers landed beside the bad ones.
    for s in OKS:
        assert got[s]["state"] == "completed"
        assert (got[s]["input_tokens"], got[s]["output_tokens"], got[s]["total_tokens"]) == (5, 3, 8)

    # Absurd usage: the answer is kept, the counts that are out of bounds are 0, and the row says why.
    for s in misbehaving.USAGES:
        row = got[s]
        assert row["state"] == "completed", s
        assert row["error_code"] == "usage_out_of_bounds", s
        assert "stored as 0, the answer is kept" in row["error_message"] or "not an object" in row["error_message"]
        assert json.loads(row["response_body"])["output_text"] == "fine"
        for col in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens"):
            assert 0 <= row[col] <= 2**40, (s, col, row[col])
    assert "usage.input_tokens 18446744073709551615" not in got["usage_2p64"]["error_message"]
    assert "usage.output_tokens 18446744073709551615" in got["usage_2p64"]["error_message"]
    assert got["usage_negative"]["input_tokens"] == 0 and got["usage_negative"]["output_tokens"] == 3
    details = got["usage_details"]
    assert (details["input_tokens"], details["cached_tokens"], details["reasoning_tokens"]) == (5, 0, 0)

    # Totals are sums of bounded counts: `status` works and never goes negative.
    st = cli.status(job)
    usage = st["usage"]
    assert all(0 <= v < 2**50 for v in usage.values()), usage
    counts = st["counts"]
    n_ok = len(OKS) + len(misbehaving.USAGES) + len(misbehaving.RATE_HEADERS) + 3  # + key_echo_ok
    assert counts["completed"] == n_ok, counts
    assert counts["failed"] == len(scenarios) - n_ok, counts
    report = cli("report", job)
    assert report.returncode == 0, report.stderr

    # Broken rate-limit headers are ignored: the replies are plain successes.
    for s in misbehaving.RATE_HEADERS:
        assert got[s]["state"] == "completed" and got[s]["error_code"] is None, s

    # Retry-After of every wrong kind: a clear per-request failure (one attempt allowed), no crash.
    for s in misbehaving.RETRY_AFTERS:
        assert got[s]["state"] == "failed" and got[s]["error_code"] == "rate_limit_exceeded", s
        assert got[s]["error_message"] == "gave up after 1 attempt(s): slow down"
        assert got[s]["http_status"] == (429 if s in misbehaving.RETRY_AFTER_429 else 503)
    # The capped wait is said once, in plain words, however many replies asked for it.
    said = [x for x in r.stderr.splitlines() if "server asked to wait" in x]
    assert len(said) == 1, r.stderr
    assert "waiting the 300 s cap" in said[0]

    # Bodies that are not JSON objects.
    for s in misbehaving.BODIES:
        assert got[s]["state"] == "failed" and got[s]["error_code"] == "invalid_response_body", s

    assert got["bad_gzip"]["state"] == "failed" and got["bad_gzip"]["error_code"] == "invalid_response_body"
    assert "could not be decoded" in got["bad_gzip"]["error_message"]

    # An error body nested too deeply to store: the error is kept, the body is not.
    assert got["error_deep"]["state"] == "failed" and got["error_deep"]["error_code"] == "deep"
    assert got["error_deep"]["response_body"] is None

    # A JSON object whose status is not a string: kept, but not called a success.
    for s in misbehaving.ODD_FIELDS:
        assert got[s]["state"] == "failed" and got[s]["error_code"] == "unknown_status", s
        assert got[s]["response_body"] is not None

    # Control characters in error fields are stored and exported intact (escaping is for the terminal).
    assert got["escapes"]["error_code"] == misbehaving.ESCAPES
    assert got["escapes"]["error_message"] == misbehaving.ESCAPE_MESSAGE
    out = tmp_path / "out.jsonl"
    exp = cli("export", job, "-o", str(out))
    assert exp.returncode == 0, exp.stderr
    exported = {x["custom_id"]: x for x in read_jsonl(out)}
    assert exported["escapes"]["response"]["body"]["error"]["message"] == misbehaving.ESCAPE_MESSAGE
    assert exported["escapes"]["response"]["body"]["error"]["code"] == misbehaving.ESCAPES

    # A failure that is not an OpenAI error object keeps method, URL and text; never the key.
    msg = got["not_openai_400"]["error_message"]
    assert msg.startswith(f"HTTP 400 from POST {server.base_url}/responses: 400 Bad Request from the gateway")
    assert "[redacted]" in msg
    # The key echoed in an OpenAI error's message and code, in an answer, as the request id: stored redacted
    # (the store, `show`, `report` and exports had it 19, 4 and 8 times).
    assert got["key_echo_json"]["error_message"] == "bad header Bearer [redacted]"
    assert got["key_echo_json"]["error_code"] == "Bearer [redacted]"
    assert got["key_echo_ok"]["request_id"] == "Bearer [redacted]"
    assert json.loads(got["key_echo_ok"]["response_body"])["output_text"] == "you sent Bearer [redacted]"
    for args in (["show", job, "key_echo_json"], ["show", job, "key_echo_ok"], ["report", job]):
        shown = cli(*args)
        assert shown.returncode == 0 and KEY not in shown.stdout + shown.stderr, args
    with sqlite3.connect(cli.db) as conn:
        for table in ("requests", "jobs"):
            for row in conn.execute(f"select * from {table}"):
                assert KEY not in repr(row)
    assert KEY not in out.read_text() and KEY not in r.stderr

    # An oversized header says so, and the request is not re-sent.
    assert got["big_header"]["state"] == "failed" and got["big_header"]["error_code"] == "invalid_reply_head"
    assert "must each fit in 8190 bytes" in got["big_header"]["error_message"]

    # A background poll answered with another response's id: asked again a few times, never stored.
    assert got["bg_ok"]["state"] == "completed" and got["bg_inf_headers"]["state"] == "completed"
    bad = got["bg_other_id"]
    assert bad["state"] == "failed" and bad["error_code"] == "response_id_mismatch"
    assert "returned a response with another id ('resp_someone_else') 3 times" in bad["error_message"]
    assert bad["response_body"] is None  # somebody else's answer is not stored as this line's
    assert server.stats()["polls"]["bg_other_id"] == 3

    # --timeout bounds the whole reply: the trickle is cut.
    assert got["trickle"]["state"] == "failed" and got["trickle"]["error_code"] == "timeout"
    assert "no complete reply within the timeout of 2 s" in got["trickle"]["error_message"]


def test_a_dry_rate_limit_window_is_said_once_while_the_run_waits(
    cli: Cli, server: Misbehaving, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["rl_dry", "ok_1", "ok_2", "ok_3"]))
    proc = cli.popen(
        "run", job, "--base-url", server.base_url, "--quiet", "--concurrency", "1", extra_env={"OPENAI_API_KEY": KEY}
    )
    procs.append(proc)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "window exhausted" in line:
            break
    # The run now stands still for the reset; the user is told why, once.
    time.sleep(0.5)
    proc.kill()
    _, rest = proc.communicate(timeout=10)
    text = "".join(seen) + rest
    said = [x for x in text.splitlines() if "window exhausted" in x]
    assert len(said) == 1, text
    assert "rate-limit request window exhausted; pausing 30 s until reset" in said[0]
    assert server.stats()["total_posts"] == 1
