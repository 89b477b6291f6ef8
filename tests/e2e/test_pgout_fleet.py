"""A run SIGKILLed on one host, and the run started after it to resume, on a PostgreSQL store: the dead run is
out of the fleet at once (same host: its process is gone), as its leases are, not a live runner for a minute."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, MockServer, run_args, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

HOST = {"RUNNER_HOST_ID": "host-a"}


def _sending(mock: MockServer, job: str, more_than: int, proc: subprocess.Popen[str]) -> int:
    """Wait until the mock has had more than `more_than` creates of `job`; how many it has had."""
    deadline = time.monotonic() + 60
    while (sent := sum(v for k, v in mock.stats()["creates_by_key"].items() if k.startswith(job))) <= more_than:
        assert (proc.poll() is None or more_than < 0) and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return sent


def _runner_pids(cli: Cli, job: str) -> list[int]:
    """The pids `runner status` lists as live runners, asked on the runs' host."""
    r = cli("status", job, "--json", extra_env=HOST)
    assert r.returncode == 0, r.stderr
    return [x["pid"] for x in json.loads(r.stdout)["fleet"]["runners"]]


def test_a_killed_run_leaves_the_fleet_when_the_next_run_on_its_host_starts(
    cli: Cli, pg_store_url: str, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    cli.url = pg_store_url
    # 30 s of work at concurrency 4, and both runs are cut short: at 0.2 s latency (10 s) the first run had
    # finished the job before `runner status` had started, under a load of 9 on 2 cores.
    mock = mock_factory("--latency", "0.6")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 200))
    flags = run_args(mock, "--concurrency", "4", "--rpm", "6000")  # a budget: the fleet shares it

    first = cli.popen("run", *flags, extra_env=HOST)
    procs.append(first)
    _sending(mock, job, 8, first)
    assert _runner_pids(cli, job) == [first.pid]
    first.kill()
    first.communicate()
    assert _runner_pids(cli, job) == []  # status runs on its host: the killed run is not live, row or no row
    sent = _sending(mock, job, -1, first)  # what it sent before it died

    second = cli.popen("run", *flags, extra_env=HOST)
    procs.append(second)
    _sending(mock, job, sent + 4, second)
    # The killed run's row stayed live until its lease-long expiry: status listed it, and the new run took it
    # for a second runner (it waited for it to book from the shared budget, and paced at half the budget).
    assert _runner_pids(cli, job) == [second.pid]
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 130, err
    assert _runner_pids(cli, job) == []  # a clean exit leaves the fleet
