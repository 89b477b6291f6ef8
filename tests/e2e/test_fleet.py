"""A fleet on one store: several `runner run` processes, each playing a different machine (RUNNER_HOST_ID).

They share one job without sending a request twice, take over the leases of a runner that was killed,
are not fooled by a clock that runs ahead, and keep one rate budget together. Every test runs on an SQLite
file (a fleet on one machine) and on PostgreSQL (`store_db`; the test id names the backend).

The kill loop's random points come from RUNNER_KILL_SEED (default: a fresh seed, printed).
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, MockServer, write_jobfile
from tests.pg import PgCluster

pytestmark = pytest.mark.e2e

SEED_ENV = os.environ.get("RUNNER_KILL_SEED")  # read at import: clean_env removes RUNNER_* before a test runs
_THIS_RUN = re.compile(r"this_run=(\d+)")


def _creates(mock: MockServer, job: str) -> dict[int, int]:
    """line number -> creates the mock saw for it (its key is `job/line` from X-Client-Request-Id)."""
    prefix = f"{job}/"
    return {int(k[len(prefix) :]): v for k, v in mock.stats()["creates_by_key"].items() if k.startswith(prefix)}


def _runner(cli: Cli, host: str, job: str, mock: MockServer, *flags: str, **env: str) -> subprocess.Popen[str]:
    extra = {"RUNNER_HOST_ID": host, "RUNNER_PROGRESS_EVERY": "60", **env}
    return cli.popen("run", job, "--base-url", mock.base_url, *flags, extra_env=extra)


@dataclass
class Db:
    """Plain SQL on the store under test, from outside the runner: sqlite3 on the file, psql on PostgreSQL."""

    path: Path
    cluster: PgCluster | None = None
    name: str = ""

    def rows(self, sql: str, *args: Any) -> list[tuple[str, ...]]:
        """The rows `sql` gives (`?` placeholders), each value as text."""
        if self.cluster is None:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                rows = conn.execute(sql, args).fetchall()
                conn.commit()
            return [tuple("" if v is None else str(v) for v in r) for r in rows]
        for a in args:  # test values only: numbers and plain names
            sql = sql.replace("?", str(a) if isinstance(a, int | float) else "'" + str(a).replace("'", "''") + "'", 1)
        out = self.cluster.sql(sql, self.name)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def count(self, sql: str, *args: Any) -> int:
        return int(self.rows(sql, *args)[0][0])

    def states(self, job: str) -> dict[str, int]:
        return {
            st: int(n) for st, n in self.rows("select state, count(*) from requests where job_id=? group by state", job)
        }


@pytest.fixture
def db(cli: Cli, store_db: str, request: pytest.FixtureRequest) -> Db:
    """The store of `cli` on each backend."""
    if "://" not in store_db:
        return Db(cli.db)
    cli.url = store_db
    return Db(cli.db, request.getfixturevalue("pg_server"), store_db.rsplit("/", 1)[1])


def test_three_runners_on_one_store_share_a_job_and_send_nothing_twice(
    cli: Cli, db: Db, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines = 3000
    mock = mock_factory("--latency", "0.04")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    hosts = ("host-a", "host-b", "host-c")
    runners = [_runner(cli, h, job, mock, "--concurrency", "24") for h in hosts]
    procs.extend(runners)

    # While they run, `runner status` lists each of them: host, pid, requests in flight, heartbeat age.
    seen: dict[str, dict[str, Any]] = {}
    busy = 0  # the most requests in flight one runner reported
    while (len(seen) < 3 or not busy) and any(p.poll() is None for p in runners):
        for r in cli.status(job)["fleet"]["runners"]:
            seen[r["host"]] = r
            busy = max(busy, r["in_flight"])
        time.sleep(0.2)
    assert set(seen) == set(hosts), seen
    assert {r["pid"] for r in seen.values()} == {p.pid for p in runners}
    assert all(0 <= r["heartbeat_age_seconds"] < 10 for r in seen.values()), seen
    assert 0 < busy <= 24, seen  # its sends on the wire: at most its --concurrency

    done = []
    for p in runners:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        done.append(int(_THIS_RUN.findall(err)[-1]))
    print(f"requests finished per runner: {dict(zip(hosts, done, strict=True))}")
    assert all(n > 0 for n in done), done  # every process did work ...
    assert sum(done) == lines  # ... and each request was finished by exactly one of them
    creates = _creates(mock, job)
    assert set(creates) == set(range(1, lines + 1))
    assert max(creates.values()) == 1, "a request was sent twice"
    assert mock.stats()["creates"] == lines
    st = cli.status(job)
    assert st["counts"]["completed"] == lines
    assert st["fleet"] == {"runners": [], "stale_leases": 0, "oldest_stale_lease_seconds": None}  # all left cleanly


@pytest.mark.kill
@pytest.mark.timeout(300)
def test_killed_runners_lose_nothing_and_their_leases_are_taken_over(
    cli: Cli, db: Db, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    seed = int(SEED_ENV) if SEED_ENV else random.randrange(2**32)
    print(f"kill seed: {seed}")
    rng = random.Random(seed)
    lines, concurrency, kills = 3000, 24, 3
    mock = mock_factory("--latency", "0.03")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    # Short leases, so a killed runner's work comes back within the test; every runner is a new machine,
    # so only expiry (never the same-host dead-pid shortcut) can free what a killed one held.
    env = {"RUNNER_LEASE_SECONDS": "2"}
    names = iter(f"host-{i}" for i in range(100))
    flags = ("--concurrency", str(concurrency), "--quiet")
    live = {h: _runner(cli, h, job, mock, *flags, **env) for h in (next(names), next(names), next(names))}
    procs.extend(live.values())
    killed: list[str] = []
    held_at_kill: list[int] = []
    held_sql = "select count(*) from requests where state='in_progress' and lease_owner like ?"
    for _ in range(kills):
        victim = rng.choice(sorted(h for h, p in live.items() if p.poll() is None))
        started = time.monotonic()  # kill it while it holds work, at a random point after it took some
        while db.count(held_sql, f"{victim}:%") == 0 and time.monotonic() - started < 30:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 0.5))
        held = db.count(held_sql, f"{victim}:%")
        os.kill(live[victim].pid, signal.SIGKILL)
        live.pop(victim).communicate(timeout=30)
        killed.append(victim)
        held_at_kill.append(held)
        print(f"killed {victim} holding {held} leases")
        fresh = next(names)
        live[fresh] = _runner(cli, fresh, job, mock, *flags, **env)
        procs.append(live[fresh])
    # Within a lease (2 s) and a claim loop's look (5 s), the others take over what the killed ones held.
    deadline = time.monotonic() + 60
    orphans = -1
    while time.monotonic() < deadline and orphans != 0:
        marks = " or ".join("lease_owner like ?" for _ in killed)
        orphans = db.count(
            f"select count(*) from requests where state='in_progress' and ({marks})", *[f"{k}:%" for k in killed]
        )
        time.sleep(0.2)
    assert orphans == 0, f"{orphans} requests still leased by killed runners (seed {seed})"
    for h, p in live.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{h}: {err} (seed {seed})"

    assert db.states(job) == {"completed": lines}, f"seed {seed}"  # nothing lost
    creates = _creates(mock, job)
    assert set(creates) == set(range(1, lines + 1)), f"lines never sent (seed {seed})"
    dup = sum(v - 1 for v in creates.values())
    print(f"fleet kill loop: kills {kills} · requests {lines} · foreground duplicates {dup} · lost 0 · seed {seed}")
    assert dup <= kills * concurrency, f"{dup} duplicates for {kills} kills (seed {seed})"
    assert dup <= sum(held_at_kill), f"{dup} duplicates, more than the {sum(held_at_kill)} leases held at the kills"
    fleet = cli.status(job)["fleet"]
    assert fleet["runners"] == [] and fleet["stale_leases"] == 0, fleet


def test_a_runner_whose_clock_runs_ahead_does_not_steal_live_leases(
    cli: Cli, db: Db, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lines = 40
    mock = mock_factory("--latency", "0.02")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    # Lines 1-10 are leased by a live runner on another machine, for 4 more seconds of real time.
    live_until = time.time() + 4.0
    held = "state='in_progress', attempts=1, lease_owner=?, lease_expires_at=?"
    db.rows(f"update requests set {held} where line_no <= 10", "elsewhere:1:aaaaaa", live_until)
    # This runner's clock is 10 minutes ahead: by it, that lease ran out long ago.
    p = _runner(cli, "skewed", job, mock, "--concurrency", "8", RUNNER_CLOCK_SKEW_SECONDS="600")
    procs.append(p)
    first_sent: dict[int, float] = {}
    while p.poll() is None:
        now = time.time()
        for n in _creates(mock, job):
            first_sent.setdefault(n, now)
        time.sleep(0.05)
    _, err = p.communicate()
    assert p.returncode == 0, err
    # The runner sets its clock by the store's, and SQLite's says whole seconds (fleet.calibrate takes the
    # middle of one): within a second is as right as it can be; the skew it corrects is 600 s. Under a loaded
    # test suite the runner started 1.5 s after the lease was set, and a 2 s lease was taken 0.5 s early.
    early = sorted(n for n in range(1, 11) if first_sent.get(n, live_until) < live_until - 1.0)
    assert not early, f"lines {early} were sent while another runner's lease on them was live"
    assert "this machine's clock is 600 s ahead of the store's" in err, err
    assert db.states(job) == {"completed": lines}
    assert set(_creates(mock, job).values()) == {1}


def test_three_runners_share_one_rpm_budget(
    cli: Cli, db: Db, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # The server allows 11 requests in each one-second window: 600 RPM's share of a second, plus 10 %.
    # 100 lines, so that two runners have work of their own at once (a runner claims up to 64 at a time).
    lines = 100
    mock = mock_factory("--rpm", "660", "--latency", "0.02")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", lines))
    runners = [_runner(cli, h, job, mock, "--concurrency", "8", "--rpm", "600") for h in ("a", "b", "c")]
    procs.extend(runners)
    done = []
    for p in runners:
        _, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        done.append(int(_THIS_RUN.findall(err)[-1]))
    assert db.states(job) == {"completed": lines}
    faults = mock.stats()["faults"]["429"]
    sent = sorted(float(t) for (t,) in db.rows("select submitted_at from requests"))
    busiest = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
    span = sent[-1] - sent[0]
    print(f"3 runners (finished {done}), --rpm 600 each: {lines} requests over {span:.1f} s; busiest window {busiest}")
    assert sum(1 for n in done if n > 0) >= 2, done  # the budget was shared by runners that sent at the same time
    assert faults == 0, f"the server refused {faults} requests over 11 in a second"
    assert busiest <= 10 * 1.1 + 1, busiest  # any window, not only whole seconds (one more at its edges)
    # Separate budgets of 600 would send them in about 6 s; one shared budget takes 10 s.
    assert span > (lines - 1) / 10 * 0.9, span


def test_a_bad_host_id_is_one_line_and_exit_2(cli: Cli, tmp_path: Path) -> None:
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 2))
    r = cli("run", job, extra_env={"RUNNER_HOST_ID": "host:1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "invalid RUNNER_HOST_ID" in r.stderr, r.stderr
    assert Db(cli.db).states(job) == {"queued": 2}  # nothing changed
