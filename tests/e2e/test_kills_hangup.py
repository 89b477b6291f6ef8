"""SIGHUP, the signal of a closed terminal (a closed window, a dropped ssh session): a run drains as on Ctrl-C and
exits 129, a submit ends with one line and queues nothing, and `nohup` keeps a run going.

It used to be the default action: the run died on the spot, the answers on the wire were paid for and lost (sent
again by the next run), and the exit was 129 without a word.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from runner.ingest import CHILD_MIN_BYTES
from tests.conftest import Cli, MockServer, write_jobfile
from tests.e2e.test_submit_big import children, jobs, lines_for, write

pytestmark = [pytest.mark.e2e, pytest.mark.kill]

LINES = 40
CONCURRENCY = 8


def _counts(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return dict(conn.execute("select state, count(*) from requests group by state").fetchall())


def _wait_for(cond: Callable[[], bool], p: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        assert p.poll() is None, f"runner ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _each_answer_saved_once(cli: Cli, mock: MockServer, job: str) -> None:
    """What the run sent came back and is saved; the next run finishes the job, sending nothing twice."""
    sent = mock.stats()["creates"]
    assert 1 <= sent <= CONCURRENCY
    assert _counts(cli.db) == {"completed": sent, "queued": LINES - sent}
    mock.configure(latency=0.0)
    r = cli("run", job, "--base-url", mock.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _counts(cli.db) == {"completed": LINES}
    stats = mock.stats()
    assert stats["creates"] == LINES and set(stats["creates_by_key"].values()) == {1}


def test_closing_the_terminal_drains_the_run_and_exits_129(cli: Cli, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory("--latency", "1.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", LINES))
    master, terminal = pty.openpty()

    def own_terminal() -> None:  # a session of its own with this terminal, as a login shell's command has
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", job, "--base-url", mock.base_url, "--concurrency", str(CONCURRENCY)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli.environ(),
        cwd=tmp_path,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        _wait_for(lambda: mock.stats()["creates"] >= 1, p, "requests on the wire")
        # Close the window: the kernel hangs the terminal up and sends SIGHUP; every later write to it fails.
        os.close(master)
        code = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # Was exit 1: the drained run died writing its summary to the terminal that was gone.
    assert code == 129
    _each_answer_saved_once(cli, mock, job)


@pytest.mark.parametrize("nohup", [False, True], ids=["kill-HUP", "nohup"])
def test_sighup_to_a_run_drains_it_unless_nohup(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]], nohup: bool
) -> None:
    mock = mock_factory("--latency", "1.5")
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", LINES))
    args = [sys.executable, "-m", "runner", "run", job, "--base-url", mock.base_url]
    p = subprocess.Popen(
        [*args, "--concurrency", str(CONCURRENCY), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.environ(),
        cwd=tmp_path,
        # What `nohup` does before it execs the command.
        preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None,
    )
    procs.append(p)
    _wait_for(lambda: mock.stats()["creates"] >= 1, p, "requests on the wire")
    p.send_signal(signal.SIGHUP)
    if nohup:
        mock.configure(latency=0.0)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert _counts(cli.db) == {"completed": LINES}
        assert set(mock.stats()["creates_by_key"].values()) == {1}
        return
    _, err = p.communicate(timeout=60)
    assert p.returncode == 129, err
    assert err.strip().splitlines()[-1] == "interrupted: every result received is saved; `runner run` resumes.", err
    _each_answer_saved_once(cli, mock, job)


def test_a_terminal_closed_during_a_big_submit_queues_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.submit(write(tmp_path / "small.jsonl", 5, bad=False))
    big = write(tmp_path / "big.jsonl", lines_for(4 * CHILD_MIN_BYTES), bad=False)
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", "submit", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.environ(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (kids := children(p.pid)) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kids, "no parsing child was started"
        os.killpg(p.pid, signal.SIGHUP)  # a hang-up reaches the whole foreground process group
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, err) == (129, "runner: interrupted\n")
    assert jobs(cli.db) == 1  # the small file's; the big one is not half there
    assert not any(Path(f"/proc/{k}").exists() for k in kids)
