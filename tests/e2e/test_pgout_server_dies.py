"""The PostgreSQL server stops while `runner run` works: the run ends in one line, exit 2; once the server is
back, a second run finishes the job with nothing lost, and nothing sent twice beyond what was in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args, write_jobfile
from tests.pg import _SETTINGS, PG_BIN, PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

LINES = 400
CONCURRENCY = 40
FLAGS = ("--concurrency", str(CONCURRENCY), "--rpm", "60000")  # a budget given: no slow start


@pytest.fixture
def own_server() -> Iterator[PgCluster]:
    """A server of this test's own, to stop and start again (the session's is shared by every test)."""
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.stop()


def _pg_ctl(cluster: PgCluster, *args: str) -> None:
    assert cluster.dir is not None
    opts = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in _SETTINGS.items())
    data, log = str(cluster.dir / "data"), str(cluster.dir / "server.log")
    command = [str(PG_BIN / "pg_ctl"), *args, "-w", "-D", data, "-l", log, "-o", f"-p {cluster.port} {opts}"]
    cluster._run(*command)


def test_a_server_that_stops_mid_run_ends_it_in_one_line_and_a_rerun_finishes(
    cli: Cli, own_server: PgCluster, mock_factory: Any, tmp_path: Path
) -> None:
    cli.url = own_server.create_database()
    mock = mock_factory("--latency", "0.2")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", LINES))
    run = cli.popen("run", *run_args(mock, *FLAGS))
    deadline = time.monotonic() + 60
    while mock.stats()["creates"] < 100:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    _pg_ctl(own_server, "stop", "-m", "fast")  # the server closes every connection, then is gone
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"runner: cannot use the store {cli.url}"), err

    _pg_ctl(own_server, "start")
    r = cli("run", *run_args(mock, *FLAGS))
    assert r.returncode == 0, r.stderr
    counts = cli.status(job)["counts"]
    assert counts["completed"] == LINES, counts
    sent = {k: v for k, v in mock.stats()["creates_by_key"].items() if k.startswith(job)}
    assert len(sent) == LINES  # nothing lost
    # What the first run had in flight when its store went away is sent again: at most --concurrency. Slots
    # cancelled by the lost store used to start the requests claimed ahead of them, sent and never written.
    assert sum(sent.values()) - LINES <= CONCURRENCY, sum(sent.values()) - LINES
