"""The live display as a user sees it: `runner run` on a real pseudo-terminal 80 columns wide, its output fed
through a terminal emulator (pyte), checked for the progress count, the ETA, concurrency as now/max, this
run's counts apart from the job's, the message during the grace period, and an accurate last frame."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pyte
import pytest

from runner import app
from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e

COLS, ROWS = 80, 24


@dataclass
class Tty:
    """A runner process whose stderr is a pseudo-terminal, and the screen it draws."""

    proc: subprocess.Popen[str]
    master: int
    screen: pyte.Screen = field(default_factory=lambda: pyte.Screen(COLS, ROWS))

    def __post_init__(self) -> None:
        self.stream = pyte.ByteStream(self.screen)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    def pump(self, wait: float = 0.05) -> bool:
        """Feed what the process wrote to the screen; False once the terminal is closed."""
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the process and its terminal are gone
            return False
        if not data:
            return False
        self.stream.feed(data)
        return True

    def wait_for(self, cond: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond(self.lines()):
                return self.lines()
            if not self.pump() and self.proc.poll() is not None:
                break
        screen = self.text()
        self.proc.kill()  # not left running into the next test on this worker (a ResourceWarning there)
        self.proc.communicate()
        os.close(self.master)
        pytest.fail(f"never saw {what}; screen:\n{screen}")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        end = time.monotonic() + timeout
        while self.pump() and time.monotonic() < end:
            pass
        out, _ = self.proc.communicate(timeout=max(end - time.monotonic(), 1))
        os.close(self.master)
        return self.proc.returncode, out


def run_on_tty(cli: Cli, *args: str) -> Tty:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = cli.environ({"TERM": "xterm-256color"})
    for k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR"):  # the width must come from the terminal itself
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        env=env,
        cwd=cli.db.parent,
    )
    os.close(slave)
    return Tty(proc, master)


def _submit(cli: Cli, path: Path) -> str:
    """Set-up in this process (the CLI's submit is tested elsewhere): each runner start costs a second."""
    return anyio.run(lambda: app.submit(path, db=str(cli.db))).job_id


def _has(pattern: str) -> Callable[[list[str]], bool]:
    rx = re.compile(pattern)
    return lambda lines: any(rx.search(line) for line in lines)


def test_live_display_at_80_columns_shows_progress_eta_and_an_accurate_last_frame(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory("--latency", "0.1", "--p5xx", "0.25", "--seed", "7")
    job = _submit(cli, write_jobfile(tmp_path / "in.jsonl", 40))
    tty = run_on_tty(cli, "run", job, "--base-url", mock.base_url, "--concurrency", "4", "--max-attempts", "1")
    # Mid-run, at 80 columns: the job's count, the percentage and a numeric ETA on one line, with a bar, and
    # the figures below it. One frame, whole: the screen is read as the bytes come, so a frame can be seen
    # half drawn (on a loaded machine the bar was there and the lines below it not yet).
    bar, in_flight, conc = _has(r"[━─]{20,} \d+/40 \d+% · ETA \d+"), _has(r"in flight \d+"), _has("concurrency 4/4")
    mid = tty.wait_for(lambda s: bar(s) and in_flight(s) and conc(s), 20, "the progress line with an ETA and figures")
    assert all(len(line) <= COLS for line in mid)
    code, out = tty.finish()
    final = tty.lines()
    text = "\n".join(final)
    assert code == 1, text  # some lines failed (503 with one attempt allowed)
    failed = int(re.search(r"failed (\d+)", text).group(1))  # type: ignore[union-attr]
    assert failed > 0, text
    # The last frame: the whole job, this run's counts, no stale in-flight figures, and what to do next.
    assert any(re.search(r"40/40 100% · finished in \d", line) for line in final), text
    assert any(f"this run 40 · ok {40 - failed} · failed {failed}" in line for line in final), text
    assert "in flight" not in text and "polling" not in text, text
    assert f"runner report {job}" in text and f"runner retry {job}" in text, text
    assert "Traceback" not in text and f"job {job}" in out

    # Run again after `retry`: the frame keeps the lines done before apart from this run's.
    assert anyio.run(lambda: app.retry(job, db=str(cli.db))) == failed
    mock.configure(p5xx=0.0)
    tty = run_on_tty(cli, "run", job, "--base-url", mock.base_url, "--concurrency", "4")
    code, _ = tty.finish()
    text = tty.text()
    assert code == 0, text
    assert f"this run {failed} · ok {failed} · failed 0 · {40 - failed} done before" in text, text
    assert "runner retry" not in text, text


def test_after_ctrl_c_the_display_says_it_is_waiting_for_requests_in_flight(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory("--latency", "20")
    job = _submit(cli, write_jobfile(tmp_path / "in.jsonl", 12))
    tty = run_on_tty(cli, "run", job, "--base-url", mock.base_url, "--concurrency", "6", "--grace", "9")
    tty.wait_for(_has(r"in flight 6"), 20, "six requests in flight")
    tty.proc.send_signal(signal.SIGINT)
    lines = tty.wait_for(_has(r"stopping: waiting up to [5-9] s for 6"), 10, "the stopping message")
    text = " ".join(lines)  # the message may wrap at 80 columns; it is never cut
    assert re.search(r"stopping: waiting up to [5-9] s for 6 requests in flight \(Ctrl-C again to stop now\)", text)
    tty.proc.send_signal(signal.SIGINT)
    code, _ = tty.finish(timeout=10)
    assert code == 130, tty.text()
    assert "stopping" not in tty.text()  # the last frame does not keep saying it
    assert "Traceback" not in tty.text()
