"""`runner run --processes N`: worker processes on one store, one display and one verdict, signals passed on.

The `runner run` the user started is the first worker process and sends from the start; the others are its
children, found the way a user would (`ps`: the processes whose parent is that `runner run`), and each is in the
store's `runners` table once it sends. What was sent is read from the mock's ledger (its key is `job/line`, from
X-Client-Request-Id).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import app
from runner.cli.options import settings as cli_settings
from runner.cli.parser import parse_args
from runner.config import Lane, Settings
from runner.errors import ConfigError, StoreMissing
from runner.store import Store
from runner.store.fleet import fleet_view
from tests.conftest import Cli, MockServer, read_jsonl, run_args, write_jobfile

pytestmark = pytest.mark.e2e

_SPLIT = re.compile(r"this run: (\d+) requests finished by 2 processes \((\d+) \+ (\d+)\)")


def _creates(mock: MockServer, job: str) -> dict[str, int]:
    return {k: v for k, v in mock.stats()["creates_by_key"].items() if k.startswith(f"{job}/")}


def _wait_for_creates(mock: MockServer, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while mock.stats()["creates"] < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run sent nothing"
        time.sleep(0.05)


async def _live_runners(db: str) -> int:
    try:
        async with await Store.open(db, "existing") as store:
            return len((await fleet_view(store)).runners)
    except StoreMissing:  # not made yet
        return 0


def _wait_for_runners(db: str, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until `n` worker processes are in the store's fleet (a child registers when its parent lets it send)."""
    deadline = time.monotonic() + timeout
    while anyio.run(_live_runners, db) != n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{n} processes never sent together"
        time.sleep(0.05)


def _submit(tmp_path: Path, lines: int) -> str:
    """A job of `lines` requests in tmp_path/runner.db (in-process: a CLI start costs seconds on a busy machine)."""
    sub = anyio.run(lambda: app.submit(write_jobfile(tmp_path / "in.jsonl", lines), db=str(tmp_path / "runner.db")))
    return sub.job_id


def _store(cli: Cli, sql: str) -> list[tuple[Any, ...]]:
    """Plain SQL on the store file, from outside the runner."""
    with closing(sqlite3.connect(cli.db, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


def _states(cli: Cli, job: str) -> dict[str, int]:
    return dict(_store(cli, f"select state, count(*) from requests where job_id = '{job}' group by state"))


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc, as `ps --ppid` would list them)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def test_a_spec_with_two_processes_shares_the_job_and_sends_nothing_twice(
    cli: Cli, store_db: str, mock_factory: Any, tmp_path: Path
) -> None:
    lines = 120
    # Slow answers until both processes send (the first sends at once, its child once it has started), then
    # quick ones: a second process that starts late on a busy machine still finds work.
    mock = mock_factory("--latency", "3")
    write_jobfile(tmp_path / "in.jsonl", lines, bare=True)
    spec = tmp_path / "two.toml"
    spec.write_text(
        '[job]\nname = "two"\ninput = "in.jsonl"\n[limits]\nconcurrency = 8\nprocesses = 2\n'
        '[output]\nresults = "out/two.jsonl"\n'
    )
    run = cli.popen("run", str(spec), "--db", store_db, *run_args(mock, "--quiet"))
    _wait_for_runners(store_db, 2, run)
    mock.configure(latency=0.05)
    out, err = run.communicate(timeout=120)
    r = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert r.returncode == 0, r.stderr
    # The parent alone speaks: one verdict, one report; it says what each process did.
    assert r.stderr.count("this run:") == 1 and r.stdout.count("requests/s") == 1, (r.stdout, r.stderr)
    split = _SPLIT.search(r.stderr)
    assert split is not None, r.stderr
    total, a, b = (int(x) for x in split.groups())
    assert total == lines and a + b == lines and a > 0 and b > 0, r.stderr  # both worked, together all of it
    assert len(read_jsonl(tmp_path / "out" / "two.jsonl")) == lines
    (job,) = {k.split("/")[0] for k in mock.stats()["creates_by_key"]}
    creates = _creates(mock, job)
    assert len(creates) == lines and max(creates.values()) == 1, "a request was sent twice"
    assert mock.stats()["creates"] == lines


def test_sigint_to_the_parent_drains_both_processes_and_a_second_run_finishes(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines = 60
    mock = mock_factory("--latency", "3")  # slow until both processes send, as in the test above
    job = _submit(tmp_path, lines)
    run = cli.popen("run", job, *run_args(mock, "--processes", "2", "--concurrency", "8", "--quiet"))
    procs.append(run)
    _wait_for_runners(str(cli.db), 2, run)
    mock.configure(latency=0.3)
    _wait_for_creates(mock, 12, run)
    assert len(_children(run.pid)) == 1  # the run itself is the first of the two
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "interrupted: every result received is saved" in err
    # Drained, not dropped: every request that reached the server has its answer recorded; nothing is leased,
    # and both processes left the fleet.
    states = _states(cli, job)
    assert states.get("in_progress", 0) == 0
    assert states["completed"] == mock.stats()["creates"] < lines
    assert _store(cli, "select count(*) from runners") == [(0,)]
    assert _store(cli, "select count(*) from requests where lease_owner is not null") == [(0,)]

    again = cli("run", job, *run_args(mock, "--quiet"))
    assert again.returncode == 0, again.stderr
    creates = _creates(mock, job)
    assert len(creates) == lines and max(creates.values()) == 1, "a request was sent twice"
    assert _states(cli, job) == {"completed": lines}


def test_a_killed_process_is_reported_and_the_other_finishes_its_work(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines, concurrency = 80, 8
    mock = mock_factory("--latency", "3")  # slow until both processes send, as in the tests above
    job = _submit(tmp_path, lines)
    run = cli.popen("run", job, *run_args(mock, "--processes", "2", "--concurrency", str(concurrency), "--quiet"))
    procs.append(run)
    _wait_for_runners(str(cli.db), 2, run)
    mock.configure(latency=0.1)
    _wait_for_creates(mock, 16, run)
    (victim,) = _children(run.pid)
    os.kill(victim, signal.SIGKILL)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 0, err  # the job's code: it finished
    assert re.search(rf"process \d of 2 \(pid {victim}\) ended without finishing its run \(killed by signal 9\)", err)
    assert _states(cli, job) == {"completed": lines}
    # Sent twice: at most what the killed process had in flight (its share of the concurrency).
    assert lines <= mock.stats()["creates"] <= lines + concurrency // 2


@pytest.mark.parametrize("value", ["0", "-1", "x", "65"])
def test_a_bad_processes_value_is_one_line_naming_the_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["run", "--processes", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("runner run: argument --processes: must be a whole number from 1 to 64"), err
    assert len(err.splitlines()) == 1


def test_a_bad_processes_variable_names_the_flag_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PROCESSES", "0")
    with pytest.raises(ConfigError, match=r"invalid --processes / RUNNER_PROCESSES: "):
        cli_settings(parse_args(["run"]))


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"max_cost": 1.0}, r"--max-cost needs --processes 1 \(got 2\)"),
        ({"concurrency": 1}, r"--processes 2 needs --concurrency 2 or more \(got 1\)"),
        ({"lane": Lane.BATCH}, r"--processes 2 is for the sync and flex lanes"),
    ],
)
def test_what_several_processes_cannot_share_is_refused_before_anything_is_sent(
    update: dict[str, Any], message: str, tmp_path: Path
) -> None:
    db = str(tmp_path / "runner.db")
    sub = anyio.run(lambda: app.submit(write_jobfile(tmp_path / "in.jsonl", 3), db=db))
    s = Settings(db=db, base_url="http://127.0.0.1:9/v1", processes=2, **update)  # nothing listens there
    with pytest.raises(ConfigError, match=message):
        anyio.run(lambda: app.run([sub.job_id], s))
    st = anyio.run(lambda: app.status(sub.job_id, db=db))
    assert st.attempts == 0 and st.counts["queued"] == sum(st.counts.values()) == 3


def test_a_refused_spec_exits_2_with_one_line_and_queues_nothing(cli: Cli, tmp_path: Path) -> None:
    write_jobfile(tmp_path / "in.jsonl", 3, bare=True)
    spec = tmp_path / "s.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\n[limits]\nprocesses = 2\nmax_cost = 1.0\n')
    r = cli("run", str(spec), "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "runner: --max-cost needs --processes 1 (got 2): the spending budget is kept in one process"
    ], r.stderr
    assert list(tmp_path.glob("*.db*")) == []  # not even a store was created (RUNNER_DB names one in tmp_path)
