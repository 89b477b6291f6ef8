"""HTTP as foreign servers speak it (gateways, proxies, self-hosted): the CLI against tests/servers/foreign.py.

What is checked is what a user relies on: no line is lost, nothing is sent (and paid for) again without
need, the key goes nowhere but the configured server, and a bad reply fails its line, never the run.
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.test_untrusted_replies import job_file, rows
from tests.servers import foreign, started

pytestmark = pytest.mark.e2e

SERVER = Path(foreign.__file__)
KEY = "sk-test-KEY-never-followed-5678"


@dataclass
class Foreign:
    proc: subprocess.Popen[str]
    base_url: str  # the API
    other: str  # another origin, where cross-origin redirects point
    proxy: str  # a proxy that answers everything 502 and counts what it was sent

    def stats(self) -> dict[str, Any]:
        # Straight to the server, whatever proxy the test environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.base_url.removesuffix("/v1") + "/_stats", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data


@pytest.fixture
def server() -> Iterator[Foreign]:
    with started(SERVER, urls=3) as (proc, urls):
        yield Foreign(proc, *urls)


def run(cli: Cli, server: Foreign, job: str, *flags: str, env: dict[str, str] | None = None) -> Any:
    return cli(
        "run",
        job,
        "--base-url",
        server.base_url,
        "--quiet",
        *flags,
        extra_env={"OPENAI_API_KEY": KEY, **(env or {})},
        timeout=60,
    )


def stop_line(r: Any) -> str:
    """The run's one `stopped:` line (a doomed-job stop says it once, not once per request)."""
    said = [x for x in r.stderr.splitlines() if x.startswith("stopped:")]
    assert len(said) == 1, r.stderr
    return str(said[0])


def test_the_server_imports_nothing_of_the_runner() -> None:
    tree = ast.parse(SERVER.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n == "runner" or n.startswith(("runner.", "tests"))]


@pytest.mark.parametrize("scenario", ["redirect_307_other", "redirect_308_same"])
def test_a_redirected_create_is_not_followed_and_stops_the_run_with_every_line_queued(
    cli: Cli, server: Foreign, tmp_path: Path, scenario: str
) -> None:
    # The whole API answers with the redirect (a gateway moved it, or wants https): every line would meet it.
    lines = [scenario, f"{scenario}_b", f"{scenario}_c"]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--concurrency", "1")

    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr
    status, where = scenario.split("_")[1:]
    moved = (server.other if where == "other" else server.base_url.removesuffix("/v1")) + "/v1/responses/moved"
    said = stop_line(r)
    assert f"POST {server.base_url}/responses: {status} redirect to {moved}" in said
    assert "not followed" in said and "--base-url" in said
    # Neither the key nor the redirect's query (it may hold a token) is shown.
    assert KEY not in r.stdout + r.stderr and "s3cret" not in r.stdout + r.stderr
    stats = server.stats()
    assert stats["other"] == []  # nothing went to the other origin: not the key, not the request
    assert stats["total_posts"] == 1  # the redirected POST was not sent again anywhere
    # Nothing is lost: every line is still queued, with no attempt used up, for a run after the fix.
    got = rows(cli.db)
    assert {(row["state"], row["attempts"]) for row in got.values()} == {("queued", 0)}, got


def test_a_reply_that_cannot_be_read_fails_its_line_once_and_the_others_complete(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    lines = ["status_600", "status_999", "gzip_bomb", "ok_1", "ok_2"]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--max-attempts", "3")

    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    got = rows(cli.db)
    for s in ("status_600", "status_999"):
        # Not a 5xx: the server answered something that is not HTTP, perhaps a paid answer; not sent again.
        assert (got[s]["state"], got[s]["error_code"], got[s]["http_status"]) == (
            "failed",
            "invalid_reply_head",
            int(s[-3:]),
        )
        assert f"status {s[-3:]}, which is not an HTTP status" in got[s]["error_message"]
    # 256 KB of gzip that decodes to 256 MiB: cut at the body limit as it is decoded, not held whole.
    bomb = got["gzip_bomb"]
    assert (bomb["state"], bomb["error_code"]) == ("failed", "reply_too_large")
    assert got["ok_1"]["state"] == got["ok_2"]["state"] == "completed"
    assert server.stats()["posts"] == dict.fromkeys(lines, 1)


WORDED = [
    "gzip",
    "deflate",
    "chunked_trickle",
    "text_plain",
    "no_content_type",
    "charset_utf16",
    "http10",
    "conn_close",
    "early_hints",
    "ok",
]


def test_replies_worded_as_foreign_servers_word_them_are_read_and_sent_once(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", WORDED))

    r = run(cli, server, job, "--concurrency", "4")

    assert r.returncode == 0, r.stderr
    got = rows(cli.db)
    for s in WORDED:
        assert got[s]["state"] == "completed", (s, got[s]["error_code"], got[s]["error_message"])
        assert json.loads(got[s]["response_body"])["output_text"] == "fine", s
        assert got[s]["total_tokens"] == 8, s
    assert server.stats()["posts"] == dict.fromkeys(WORDED, 1)


def test_a_reply_lost_after_the_request_was_sent_is_sent_again_and_the_line_completes(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # The server read each request, then hung up: before any reply, after half a body, after half a chunk.
    lost = ["drop_once", "half_once", "half_chunked_once", "drop_once_bg"]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lost, background=("drop_once_bg",)))

    r = run(cli, server, job)

    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    got = rows(cli.db)
    assert {s: got[s]["state"] for s in lost} == dict.fromkeys(lost, "completed")
    assert got["drop_once_bg"]["response_id"].startswith("resp_drop_once_bg_")  # created, then polled to the end
    stats = server.stats()
    # Sent a second time (the first may have been paid: the README says so), and no more.
    assert stats["posts"] == dict.fromkeys(lost, 2)
    # Each attempt carries its own x-client-request-id (job/line/attempt): the server's logs can tell them apart.
    for s in lost:
        first, second = stats["client_ids"][s]
        assert first.endswith("/1") and second.endswith("/2") and first.rsplit("/", 1)[0] == second.rsplit("/", 1)[0]
    assert {got[s]["attempts"] for s in lost} == {2}


def test_proxy_variables_are_not_used_and_a_failed_connection_names_them(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # Every variable other clients route by, pointing at a proxy of the server's (it answers 502 and counts).
    proxies = {name: server.proxy for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")}
    proxies.update(NO_PROXY="", no_proxy="")
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["ok_1", "ok_2"]))

    r = run(cli, server, job, env=proxies)

    assert r.returncode == 0, r.stderr
    assert {row["state"] for row in rows(cli.db).values()} == {"completed"}
    stats = server.stats()
    assert stats["proxied"] == [] and stats["posts"] == {"ok_1": 1, "ok_2": 1}  # straight to the server

    # Behind a proxy the runner does not use, the one line that stops a run says why it may not get through.
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    # Ten lines: ten refused connections at once reach the doomed-job stop without a backoff in between.
    job2 = cli.submit(job_file(tmp_path / "in2.jsonl", [f"ok_{i}" for i in range(3, 13)]))
    down = cli(
        "run", job2, "--base-url", f"http://127.0.0.1:{closed}/v1", "--max-attempts", "1", extra_env=proxies, timeout=60
    )
    assert down.returncode == 5, down.stderr
    assert (
        "connection refused; is the server up, and is the port right? (HTTPS_PROXY is set, but the runner uses"
        in down.stderr
    )
    assert server.stats()["proxied"] == []


def test_a_server_down_for_a_while_after_answering_is_waited_out_without_using_attempts(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # The first line is answered, then the server is down for 2 s (a restart): every connection is refused.
    lines = ["outage_2", *(f"ok_{i}" for i in range(1, 7))]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--max-attempts", "2", "--concurrency", "1")

    assert r.returncode == 0, r.stderr
    got = rows(cli.db)
    assert {s: got[s]["state"] for s in lines} == dict.fromkeys(lines, "completed")
    # A refused connection never reached the server: it used up no attempt, and nothing was sent twice.
    assert {got[s]["attempts"] for s in lines} == {1}
    assert server.stats()["posts"] == dict.fromkeys(lines, 1)


def test_a_server_that_stays_down_after_answering_stops_the_run_with_every_line_queued(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # The other lines are answered late, so the outage comes first whichever request the server reads first
    # (answered at once, a line read before the outage's was answered before it, and under load all 13 were).
    lines = ["outage_100000", *(f"late_ok_{i}" for i in range(1, 13))]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    # --timeout 1: an outage is waited out for as long as one attempt may take, here 1 s.
    r = run(cli, server, job, "--concurrency", "12", "--timeout", "1")

    assert r.returncode == 5, r.stderr
    assert f"cannot reach {server.base_url}: connection refused" in stop_line(r), r.stderr
    got = rows(cli.db)
    assert got["outage_100000"]["state"] == "completed"
    # Nothing failed: every other line waits, queued, for a run once the server is back.
    assert {got[s]["state"] for s in lines if s != "outage_100000"} == {"queued"}


def test_a_server_that_closes_every_connection_unanswered_stops_the_run_instead_of_failing_every_line(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # As a TLS server sent plain HTTP (http:// for https://) does: it reads the request and hangs up.
    lines = [f"drop_after_body_{i}" for i in range(12)]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--concurrency", "12")

    assert r.returncode == 5, r.stderr
    said = stop_line(r)
    assert f"cannot reach {server.base_url}: the server closed the connection without answering" in said
    assert "the base URL should start with https://" in said
    # Not every line through every attempt: each was sent at most once, and all stay queued for the fix.
    assert sum(server.stats()["posts"].values()) <= len(lines)
    assert {row["state"] for row in rows(cli.db).values()} == {"queued"}


@pytest.mark.parametrize("kind", ["loading", "gateway"])
def test_a_server_that_answers_every_request_5xx_for_a_while_is_waited_out_without_using_attempts(
    cli: Cli, server: Foreign, tmp_path: Path, kind: str
) -> None:
    # For 4 s every POST is answered 503 "Loading model" (llama.cpp after a restart) or an nginx 502 page, the
    # first line's included. Three attempts back off over ~1.5 s: spent on the outage, every line would fail.
    lines = [f"{kind}_4", *(f"ok_{i}" for i in range(1, 8))]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--max-attempts", "3", "--concurrency", "4", "--timeout", "30")

    assert r.returncode == 0, r.stderr
    got = rows(cli.db)
    assert {s: got[s]["state"] for s in lines} == dict.fromkeys(lines, "completed")
    # Only the first replies, before they showed the whole server down (5 in a row), used up attempts; the
    # rest were given back: each line was sent once more than its 503s or 502s that counted.
    attempts = {s: got[s]["attempts"] for s in lines}
    assert max(attempts.values()) <= 2, attempts
    status = cli.status(job)
    assert status["attempts"] == sum(attempts.values()) <= len(lines) + 4, status
    # The pool paused while the server was down: tried again a round at a time, not every line on its own clock.
    posts = server.stats()["posts"]
    assert set(posts) == set(lines)
    assert sum(posts.values()) <= 8 * len(lines), posts
    assert "waiting for it to come back" in r.stderr


def test_a_server_that_keeps_answering_503_stops_the_run_in_one_line_with_every_line_queued(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    lines = ["loading_100000", *(f"ok_{i}" for i in range(1, 12))]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    # --timeout 2: an outage is waited out for as long as one attempt may take, here 2 s.
    r = run(cli, server, job, "--concurrency", "4", "--timeout", "2")

    assert r.returncode == 5, r.stderr
    said = stop_line(r)
    assert f"the server at {server.base_url} answered 503 to every request for " in said
    assert "Loading model" in said
    got = rows(cli.db)
    # Nothing failed: every line waits, queued, for a run once the server is back, with few attempts spent.
    assert {got[s]["state"] for s in lines} == {"queued"}
    assert sum(got[s]["attempts"] for s in lines) <= 4, {s: got[s]["attempts"] for s in lines}


def test_one_line_that_keeps_failing_with_503_while_the_others_complete_fails_after_its_attempts(
    cli: Cli, server: Foreign, tmp_path: Path
) -> None:
    # More attempts than the replies in a row that show a whole server down: one line alone is not an outage.
    lines = ["always_503", *(f"ok_{i}" for i in range(1, 6))]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))

    r = run(cli, server, job, "--max-attempts", "12", "--concurrency", "2", "--timeout", "30")

    assert r.returncode == 1, r.stderr
    got = rows(cli.db)
    assert got["always_503"]["state"] == "failed"
    assert got["always_503"]["attempts"] == 12
    assert "gave up after 12 attempt(s)" in got["always_503"]["error_message"]
    assert {got[s]["state"] for s in lines[1:]} == {"completed"}
    assert server.stats()["posts"]["always_503"] == 12
