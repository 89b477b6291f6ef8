"""A nightly spec run that crosses midnight, is interrupted, and is started again after midnight resumes the
day before's job: before, "the same spec on the same day is the same job" made it a new day's job that bought
every answer again. The local day is moved with TZ (UTC-12, then UTC+12: always the next day)."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.kill]

SPEC = """
[job]
name = "eve"
input = "in.jsonl"

[limits]
concurrency = 4

[output]
results = "out/{job}-{date}.jsonl"
"""
BEFORE, AFTER = "Etc/GMT+12", "Etc/GMT-12"  # POSIX signs: GMT+12 is UTC-12


def _day(hours: int) -> dt.date:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=hours))).date()


def _completed(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            return int(conn.execute("select count(*) from requests where state = 'completed'").fetchone()[0])
        except sqlite3.OperationalError:  # the tables are not made yet
            return 0


def _jobs(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("select count(*) from jobs where phase = 'ready'").fetchone()[0])


def _interrupted_run(cli: Cli, spec: Path, mock: Any, procs: list[subprocess.Popen[str]]) -> None:
    p = cli.popen("run", str(spec), "--base-url", mock.base_url, extra_env={"TZ": BEFORE})
    procs.append(p)
    deadline = time.monotonic() + 60
    while _completed(cli.db) < 8:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no answers in 60 s"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert 8 <= _completed(cli.db) < 40


def test_a_rerun_after_midnight_resumes_the_day_befores_job(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--latency", "0.2")
    write_jobfile(tmp_path / "in.jsonl", 40)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC)
    day = _day(-12)
    _interrupted_run(cli, spec, mock, procs)

    r = cli("run", str(spec), "--base-url", mock.base_url, extra_env={"TZ": AFTER})

    assert r.returncode == 0, r.stderr
    assert f"resumed the unfinished job of {day}" in r.stderr
    assert _jobs(cli.db) == 1
    creates = mock.stats()["creates_by_key"]
    assert len(creates) == 40 and max(creates.values()) == 1  # every line bought once
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"eve-{day}.jsonl"]
    assert len((tmp_path / "out" / f"eve-{day}.jsonl").read_text().splitlines()) == 40


def test_a_finished_job_of_the_day_before_is_not_resumed(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    write_jobfile(tmp_path / "in.jsonl", 3)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC)
    assert cli("run", str(spec), "--base-url", mock.base_url, extra_env={"TZ": BEFORE}).returncode == 0

    r = cli("run", str(spec), "--base-url", mock.base_url, extra_env={"TZ": AFTER})

    assert r.returncode == 0, r.stderr
    assert "resumed" not in r.stderr
    assert _jobs(cli.db) == 2  # tonight's is a new night's job, as before
    assert mock.stats()["creates"] == 6
