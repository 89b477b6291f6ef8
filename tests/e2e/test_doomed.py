"""The doomed-job stop: a bad key, a wrong base URL, or a server that cannot be reached stops the run after a
bounded number of requests, leaves every line queued with no attempt used, says why in one line and exits 5;
the same command with the fix then completes the job, sending each line once."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, MockServer, write_jobfile

pytestmark = pytest.mark.e2e

N = 30
CONCURRENCY = 4
GOOD_KEY = "sk-good-key-0001"
BAD_KEY = "sk-WRONG-SECRET-9999"
EXIT_DOOMED = 5


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# Each cause: (the --base-url and key of the doomed run, the line it must print, the mock's count of what it
# refused; None when the request never reaches the mock).
Cause = Callable[[MockServer], tuple[str, str, str, str | None]]

CAUSES: dict[str, Cause] = {
    "server down": lambda m: (
        (url := f"http://127.0.0.1:{_closed_port()}/v1"),
        GOOD_KEY,
        f"stopped: cannot reach {url}: connection refused; is the server up, and is the port right?",
        None,
    ),
    "wrong key": lambda m: (
        m.base_url,
        BAD_KEY,
        "stopped: the API answered 401 invalid_api_key: check OPENAI_API_KEY (or --api-key)",
        "401",
    ),
    "base URL ends in /responses": lambda m: (
        f"{m.base_url}/responses",
        GOOD_KEY,
        f"stopped: POST {m.base_url}/responses/responses: 404; the base URL should end in /v1",
        "404",
    ),
    "https to an http port": lambda m: (
        m.base_url.replace("http://", "https://"),
        GOOD_KEY,
        f"stopped: cannot reach {m.base_url.replace('http://', 'https://')}: the server speaks plain HTTP;"
        " did you mean http://?",
        None,
    ),
}


def _counts(cli: Cli, job: str) -> dict[str, int]:
    return {k: v for k, v in cli.status(job)["counts"].items() if v}


def _assert_untouched(cli: Cli, job: str) -> None:
    st = cli.status(job)
    assert {k: v for k, v in st["counts"].items() if v} == {"queued": N}
    assert st["attempts"] == 0  # the attempts that met the cause were refunded


def _assert_sent_once(mock: MockServer, job: str) -> None:
    stats = mock.stats()
    assert stats["creates"] == N
    assert stats["creates_by_key"] == {f"{job}/{i}": 1 for i in range(1, N + 1)}


def test_each_doomed_cause_stops_at_once_and_the_fix_finishes_the_job(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    # One job meets every cause in turn (each run must leave it as it was), then the fixed run finishes it.
    mock = mock_factory("--api-key", GOOD_KEY)
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", N))
    for cause, make in CAUSES.items():
        base_url, key, line, refused = make(mock)
        before = mock.stats()["faults"]
        started = time.monotonic()
        r = cli(
            "run", job, "--base-url", base_url, "--concurrency", str(CONCURRENCY), "--quiet",
            extra_env={"OPENAI_API_KEY": key},
        )  # fmt: skip
        assert r.returncode == EXIT_DOOMED, (cause, r.stderr)
        assert time.monotonic() - started < 30, cause
        assert [x for x in r.stderr.splitlines() if x.startswith("stopped:")] == [
            line + " (unfinished requests stay queued; run again after the fix)"
        ], cause
        assert "Traceback" not in r.stderr
        assert BAD_KEY not in r.stderr + r.stdout
        stats = mock.stats()
        if refused is not None:
            # Stopped at once: at most the requests already on the wire when the first answer came.
            assert 1 <= stats["faults"][refused] - before[refused] <= CONCURRENCY, cause
        assert stats["creates"] == 0, cause
        _assert_untouched(cli, job)

    r = cli("run", job, "--base-url", mock.base_url, "--quiet", extra_env={"OPENAI_API_KEY": GOOD_KEY})
    assert r.returncode == 0, r.stderr
    assert _counts(cli, job) == {"completed": N}
    _assert_sent_once(mock, job)


SPEC = """
[job]
name = "doomed"
input = "in.jsonl"

[limits]
concurrency = 4

[output]
results = "out/{job}.jsonl"
"""


def test_a_spec_run_with_a_wrong_key_stops_the_same_way(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--api-key", GOOD_KEY)
    write_jobfile(tmp_path / "in.jsonl", N, bare=True)
    spec = tmp_path / "doomed.toml"
    spec.write_text(SPEC)
    args = ("run", str(spec), "--base-url", mock.base_url, "--quiet")

    r = cli(*args, extra_env={"OPENAI_API_KEY": BAD_KEY})
    assert r.returncode == EXIT_DOOMED, r.stderr
    assert "stopped: the API answered 401 invalid_api_key: check OPENAI_API_KEY" in r.stderr
    assert BAD_KEY not in r.stderr + r.stdout
    assert 1 <= mock.stats()["faults"]["401"] <= 4
    jobs = cli("jobs", "--json")
    [job] = [j["job_id"] for j in json.loads(jobs.stdout)]
    _assert_untouched(cli, job)

    r = cli(*args, extra_env={"OPENAI_API_KEY": GOOD_KEY})
    assert r.returncode == 0, r.stderr
    assert _counts(cli, job) == {"completed": N}
    _assert_sent_once(mock, job)
    assert len((tmp_path / "out" / "doomed.jsonl").read_text().splitlines()) == N
