"""Graceful stops and concurrent runners: SIGTERM/SIGINT drain and commit, a second SIGINT stops at once,
two runners on one store share the work without sending anything twice, and a submit is idempotent."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, MockServer, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.kill]

THIS_RUN = re.compile(r"this run: (\d+) requests finished \(completed (\d+),")


def _q(db: Path, sql: str, *args: Any) -> Any:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return conn.execute(sql, args).fetchone()[0]


def _counts(db: Path, job: str) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return dict(conn.execute("select state, count(*) from requests where job_id=? group by state", (job,)))


def _completed_lines(db: Path, job: str) -> set[int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        rows = conn.execute("select line_no from requests where job_id=? and state='completed'", (job,))
        return {n for (n,) in rows}


# How long a fresh `runner run` may take to get going (start Python, import, open the store, send): the waits end
# as soon as it has, so this only matters on a loaded machine, where 10 s was not always enough.
START = 60


def _wait_for(cond: Callable[[], bool], timeout: float, what: str, p: subprocess.Popen[str] | None = None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert p is None or p.poll() is None, f"runner ended before {what}: {p.communicate()}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))


def _run(cli: Cli, mock: MockServer, job: str, concurrency: int, *extra: str) -> subprocess.Popen[str]:
    return cli.popen("run", job, "--base-url", mock.base_url, "--concurrency", str(concurrency), "--quiet", *extra)


def test_one_stop_delivered_twice_at_once_still_drains(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # GNU `timeout` (a cron line's `timeout 3h runner run`) sends its SIGTERM to the command and then to its
    # process group, which holds the command: two SIGTERMs at once. The second was taken as "stop now", and the
    # answers on the wire were dropped, paid for and sent again by the next run.
    mock = mock_factory("--latency", "1.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 60))
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", job, "--base-url", mock.base_url, "--concurrency", "20", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.environ(),
        cwd=cli.db.parent,
        start_new_session=True,  # its own process group, as under `timeout`
    )
    procs.append(p)
    _wait_for(lambda: mock.stats()["creates"] >= 20, START, "a full window in flight", p)
    os.kill(p.pid, signal.SIGTERM)
    time.sleep(0.02)  # apart enough to be delivered as two (at once, the kernel may merge them)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    counts, creates = _counts(cli.db, job), mock.stats()["creates"]
    assert counts == {"completed": creates, "queued": 60 - creates}, (counts, creates)  # those on the wire waited for

    mock.configure(latency=0.01)
    assert cli("run", job, "--base-url", mock.base_url, "--quiet").returncode == 0
    assert mock.stats()["creates"] == 60  # nothing paid twice


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_and_commits_every_result(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]], sig: int, code: int
) -> None:
    mock = mock_factory("--latency", "1.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    p = _run(cli, mock, job, 20)
    procs.append(p)
    _wait_for(
        lambda: mock.stats()["creates"] >= 1 or _counts(cli.db, job).get("in_progress", 0) >= 20,
        START,
        "requests in flight",
        p,
    )
    sent = time.monotonic()
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runner still running 10 s after {signal.Signals(sig).name}")
    took = time.monotonic() - sent
    print(f"{signal.Signals(sig).name}: exit {p.returncode} after {took:.2f} s")
    assert p.returncode == code, err
    assert "interrupted" in err
    assert "database is locked" not in err

    creates = mock.stats()["creates"]
    counts = _counts(cli.db, job)
    # Stopped claiming: only the first batch went out, and every answer the mock gave is committed.
    assert 1 <= creates <= 20
    assert counts.get("in_progress", 0) == 0, counts
    assert counts.get("completed", 0) == creates, (counts, creates)
    assert counts.get("queued", 0) == 200 - creates, counts
    m = THIS_RUN.search(err)
    assert m is not None and int(m.group(2)) == creates, err

    mock.configure(latency=0.01)
    r = cli("run", job, "--base-url", mock.base_url, "--concurrency", "20", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _counts(cli.db, job) == {"completed": 200}
    stats = mock.stats()
    assert stats["creates"] == 200  # nothing paid twice
    assert set(stats["creates_by_key"].values()) == {1}


def test_second_sigint_stops_at_once_and_keeps_committed_results(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines = 60
    mock = mock_factory("--latency", "0.1")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    p = _run(cli, mock, job, 10)
    procs.append(p)
    _wait_for(lambda: _counts(cli.db, job).get("completed", 0) >= 15, START, "some results", p)
    # From now on every new request hangs for 8 s; wait until a full batch of those is on the wire.
    mock.configure(latency=8.0)
    base = mock.stats()["creates"]
    _wait_for(lambda: mock.stats()["creates"] >= base + 10, 10, "slow requests in flight", p)
    committed = _completed_lines(cli.db, job)

    first = time.monotonic()
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("runner still running 10 s after a second SIGINT")
    took = time.monotonic() - first
    print(f"double SIGINT: exit {p.returncode} after {took:.2f} s, {len(committed)} results committed before")
    assert p.returncode == 130, err
    assert took < 3.5, f"a second SIGINT took {took:.2f} s to stop the run"

    after = _completed_lines(cli.db, job)
    assert committed <= after, f"committed results lost: {sorted(committed - after)}"
    with closing(sqlite3.connect(f"file:{cli.db}?mode=ro", uri=True)) as conn:
        owners = [o for (o,) in conn.execute("select lease_owner from requests where state='in_progress'")]
    live = [o for o in owners if o is None or _pid_alive(int(o.split(":")[1]))]
    assert not live, f"in-progress rows without a dead owner: {live}"
    assert _integrity(cli.db) == "ok"

    mock.configure(latency=0.0)
    r = cli("run", job, "--base-url", mock.base_url, "--concurrency", "10", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _counts(cli.db, job) == {"completed": lines}


def test_grace_runs_out_and_unfinished_requests_go_back_to_the_queue(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--latency", "8")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 20))
    # A budget turns the slow start off, so all ten slots fill at once (with none, eight would go first).
    p = _run(cli, mock, job, 10, "--grace", "1", "--rpm", "6000")
    procs.append(p)
    _wait_for(lambda: mock.stats()["creates"] >= 10, START, "requests in flight", p)
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("runner still running 10 s after SIGTERM with --grace 1")
    took = time.monotonic() - sent
    print(f"SIGTERM with --grace 1: exit {p.returncode} after {took:.2f} s")
    assert p.returncode == 143, err
    assert 0.9 <= took < 4, f"stopped {took:.2f} s after SIGTERM with a 1 s grace"
    assert _counts(cli.db, job) == {"queued": 20}
    # The abandoned attempts still count.
    assert _q(cli.db, "select sum(attempts) from requests where job_id=?", job) == 10


def test_two_runners_share_one_store(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines = 600
    mock = mock_factory("--latency", "0.03")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    pair = [_run(cli, mock, job, 12), _run(cli, mock, job, 12)]
    procs.extend(pair)
    finished: list[int] = []
    for p in pair:
        try:
            _, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("a runner did not finish within 90 s")
        assert p.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err, err
        m = THIS_RUN.search(err)
        assert m is not None, err
        finished.append(int(m.group(1)))
    print(f"two runners: {finished[0]} + {finished[1]} requests")
    stats = mock.stats()
    assert stats["creates"] == lines
    assert set(stats["creates_by_key"].values()) == {1}, "a request was submitted twice"
    assert len(stats["creates_by_key"]) == lines
    assert all(n > 0 for n in finished), finished
    assert sum(finished) == lines
    assert _counts(cli.db, job) == {"completed": lines}
    assert _integrity(cli.db) == "ok"


def test_submit_is_idempotent(cli: Cli, tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 50)
    first = cli.submit(src)
    assert cli.submit(src) == first
    fresh = cli.submit(src, "--new")
    assert fresh != first
    bg = cli.submit(src, "--background")
    assert bg not in (first, fresh)
    assert cli.submit(src, "--background") == bg
    assert _q(cli.db, "select count(*) from jobs") == 3
    assert _q(cli.db, "select count(*) from requests") == 150
