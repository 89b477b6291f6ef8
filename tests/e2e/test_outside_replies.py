"""What a server that is not our mock does to `runner cancel` and to the base URL a user types.

Against tests/servers/misbehaving.py, through the CLI, on a real SQLite store.
"""

from __future__ import annotations

import csv
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, read_jsonl
from tests.e2e.test_untrusted_replies import KEY, Misbehaving, job_file, rows, server

pytestmark = pytest.mark.e2e

__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests


def test_a_cancel_answered_with_another_response_is_not_taken_as_this_requests_answer(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    lines = ["bg_running_plain", "bg_running_cancel_other_id"]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines, background=tuple(lines)))
    run = cli.popen("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY})
    try:
        # Both responses are created and their ids committed: the run now only polls them (they never end).
        while not all(r["response_id"] for r in rows(cli.db).values()):
            assert run.poll() is None, run.communicate()
            threading.Event().wait(0.05)
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)

    r = cli("cancel", job, "--base-url", server.base_url, extra_env={"OPENAI_API_KEY": KEY}, timeout=60)

    assert server.stats()["cancels"] == {"bg_running_plain": 1, "bg_running_cancel_other_id": 1}
    after = rows(cli.db)
    assert after["bg_running_plain"]["state"] == "cancelled"
    other = after["bg_running_cancel_other_id"]
    # Somebody else's completed answer is not this request's: it is still running as far as anyone knows.
    assert other["state"] == "in_progress"
    assert "not yours" not in (other["response_body"] or "")
    assert "Traceback" not in r.stderr
    assert "cancel was answered with another response ('resp_someone_else')" in r.stdout + r.stderr
    assert "cancelled 1 requests of job" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        ("http://alice:pa55word@127.0.0.1:{port}/v1", "holds a user name or password (user:password@host) and the key"),
        ("http://127.0.0.1:{port}/v1?api-version=2024-10-01", "must not have a query"),
        ("http://127.0.0.1:{port}/v1?key=pa55word", "must not have a query"),
        ("http://127.0.0.1:{port}/v1#top", "must not have a query (?...) or fragment"),
    ],
)
def test_a_base_url_with_credentials_or_a_query_is_one_line_and_sends_nothing(
    cli: Cli, server: Misbehaving, tmp_path: Path, base_url: str, said: str
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["ok_0"]))
    port = server.base_url.rsplit(":", 1)[1].split("/")[0]

    r = cli("run", job, "--base-url", base_url.format(port=port), extra_env={"OPENAI_API_KEY": KEY}, timeout=60)

    assert r.returncode == 2, r.stderr
    assert said in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "pa55word" not in r.stdout + r.stderr
    assert server.stats()["total_posts"] == 0
    assert {r["state"] for r in rows(cli.db).values()} == {"queued"}


def test_base_url_credentials_without_a_key_work_and_their_password_is_never_shown(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["ok_0"]))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    down = cli("run", job, "--base-url", f"http://alice:pa55word@127.0.0.1:{closed}/v1", "--max-attempts", "1")
    assert down.returncode == 5, down.stderr
    assert f"cannot reach http://127.0.0.1:{closed}/v1: connection refused" in down.stderr
    assert "pa55word" not in down.stdout + down.stderr

    up = cli("run", job, "--base-url", server.base_url.replace("http://", "http://alice:pa55word@"), "--quiet")
    assert up.returncode == 0, up.stderr
    assert rows(cli.db)["ok_0"]["state"] == "completed"


def test_a_base_url_scheme_in_capitals_works(cli: Cli, server: Misbehaving, tmp_path: Path) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["ok_0"]))

    r = cli(
        "run",
        job,
        "--base-url",
        server.base_url.replace("http://", "HTTP://"),
        "--quiet",
        extra_env={"OPENAI_API_KEY": KEY},
        timeout=60,
    )

    assert r.returncode == 0, r.stderr
    assert rows(cli.db)["ok_0"]["state"] == "completed"


@pytest.fixture
def drops_tls() -> Iterator[int]:
    """A plain server that reads a little of what it is sent and closes (a TLS hello it cannot parse is reset)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.1)  # so that the thread sees `stop` (closing the socket does not wake an accept)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()
    t.join(timeout=10)


def test_https_to_a_server_that_drops_the_tls_hello_says_to_try_http(cli: Cli, drops_tls: int, tmp_path: Path) -> None:
    # Ten lines: the ten failed connections of the doomed-job stop come at once, not over ten backoffs.
    job = cli.submit(job_file(tmp_path / "in.jsonl", [f"ok_{i}" for i in range(10)]))

    r = cli(
        "run",
        job,
        "--base-url",
        f"https://127.0.0.1:{drops_tls}/v1",
        "--quiet",
        extra_env={"OPENAI_API_KEY": KEY},
        timeout=120,
    )

    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr
    assert "does it speak plain HTTP (http://)?" in r.stderr.strip().splitlines()[-1]
    assert {r["state"] for r in rows(cli.db).values()} == {"queued"}


def test_an_answer_with_a_nul_character_is_exported_whole_in_every_format(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["text_nul", "ok_0"]))
    r = cli("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY}, timeout=60)
    assert r.returncode == 0, r.stderr
    whole = "before\x00after, and the rest"

    texts: dict[str, list[str]] = {}
    for fmt in ("batch", "jsonl-flat", "csv", "parquet"):
        out = tmp_path / f"out.{fmt}"
        r = cli("export", job, "--format", fmt, "-o", str(out))
        assert r.returncode == 0, r.stderr
        if fmt == "batch":
            texts[fmt] = [row["response"]["body"]["output_text"] for row in read_jsonl(out)]
        elif fmt == "jsonl-flat":
            texts[fmt] = [row["output_text"] for row in read_jsonl(out)]
        elif fmt == "csv":
            with out.open(newline="") as f:
                texts[fmt] = [row["output_text"] for row in csv.DictReader(f)]
        else:
            import pyarrow.parquet as pq  # the optional extra, installed by make

            texts[fmt] = [row["output_text"] for row in pq.read_table(out).to_pylist()]

    assert texts == {fmt: [whole, "fine"] for fmt in texts}


def test_a_402_without_an_error_code_stops_the_run_in_a_line_that_names_no_none(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["pay_402_plain"]))

    r = cli("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY}, timeout=60)

    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: the API refused for billing reasons (402: HTTP 402 from POST "), last
    assert "None" not in last
    assert rows(cli.db)["pay_402_plain"]["state"] == "queued"


def test_export_refuses_one_file_for_results_and_errors_instead_of_keeping_half(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["ok_0", "escapes"]))
    r = cli("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY}, timeout=60)
    assert r.returncode == 1, r.stderr
    out = tmp_path / "out.jsonl"
    (tmp_path / "link.jsonl").symlink_to(out)

    for errors in (str(out), str(tmp_path / "." / "out.jsonl"), str(tmp_path / "link.jsonl")):
        r = cli("export", job, "-o", str(out), "--errors", errors)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"runner: -o and --errors name the same file ({errors}): give --errors another path"
        ]
        assert not out.exists()

    r = cli("export", job, "-o", str(out), "--errors", str(tmp_path / "errors.jsonl"))
    assert r.returncode == 0, r.stderr
    assert [row["custom_id"] for row in read_jsonl(out)] == ["ok_0"]
    assert [row["custom_id"] for row in read_jsonl(tmp_path / "errors.jsonl")] == ["escapes"]


def test_a_reply_in_an_encoding_never_offered_fails_its_line_and_the_message_names_the_encoding(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["brotli_unasked", "ok_0"]))

    r = cli("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY}, timeout=60)

    assert r.returncode == 1, r.stderr
    got = rows(cli.db)
    assert got["ok_0"]["state"] == "completed"
    bad = got["brotli_unasked"]
    assert (bad["state"], bad["error_code"]) == ("failed", "invalid_reply_head")
    assert bad["error_message"].startswith(
        "the server's reply could not be read: its header lines must each fit in 8190 bytes, be valid HTTP and"
        " name a content-encoding the request accepts (gzip, deflate) (Can not decode content-encoding: br"
    )
    assert server.stats()["posts"]["brotli_unasked"] == 1  # not sent again


def test_a_poll_hint_of_zero_on_every_reply_does_not_become_a_loop_of_gets(
    cli: Cli, server: Misbehaving, tmp_path: Path
) -> None:
    job = cli.submit(job_file(tmp_path / "in.jsonl", ["bg_hint_zero"], background=("bg_hint_zero",)))

    r = cli("run", job, "--base-url", server.base_url, "--quiet", extra_env={"OPENAI_API_KEY": KEY}, timeout=60)

    assert r.returncode == 0, r.stderr
    assert rows(cli.db)["bg_hint_zero"]["state"] == "completed"
    # The response runs for a second: polled as fast as the round trip, that was hundreds of GETs.
    assert server.stats()["polls"]["bg_hint_zero"] <= 12


@pytest.mark.parametrize("wait", ["retry_after", "rpm"])
def test_a_stop_while_a_line_waits_for_its_turn_ends_the_run_at_once_and_gives_its_attempt_back(
    cli: Cli, server: Misbehaving, tmp_path: Path, wait: str
) -> None:
    # The second line waits for its turn, unsent: behind a 429 whose Retry-After pauses every request for the
    # 300 s cap, or a minute away at --rpm 1.
    first = "pause_429" if wait == "retry_after" else "ok_first"
    lines = [first, "ok_waiting"]
    job = cli.submit(job_file(tmp_path / "in.jsonl", lines))
    flags = ["--concurrency", "1", "--grace", "10", *(["--rpm", "1"] if wait == "rpm" else [])]
    run = cli.popen("run", job, "--base-url", server.base_url, "--quiet", *flags, extra_env={"OPENAI_API_KEY": KEY})
    try:
        deadline = time.monotonic() + 30
        while server.stats()["posts"].get(first) != 1:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            threading.Event().wait(0.05)
        threading.Event().wait(1.0)  # the second line is claimed, and waits
        started = time.monotonic()
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    assert run.returncode == 130, err
    # Nothing was on the wire: the run ends without waiting out the grace (10 s).
    assert took < 5, f"Ctrl-C took {took:.1f} s to end the run"
    assert server.stats()["posts"] == {first: 1}
    got = rows(cli.db)
    # Never sent, so never counted: one POST, one attempt.
    assert got["ok_waiting"]["state"] == "queued" and got["ok_waiting"]["attempts"] == 0
    assert cli.status(job)["attempts"] == 1
