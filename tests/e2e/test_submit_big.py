"""A big file is parsed by a forked child process (runner/ingest.py, CHILD_MIN_BYTES): what a user sees is the
same as for a small file, and a Ctrl-C leaves neither a job nor that process behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from runner.ingest import CHILD_MIN_BYTES
from tests.conftest import Cli

pytestmark = [pytest.mark.e2e]

BAD = [
    b"{not json",
    b'{"custom_id": "x\xff", "method": "POST"}',
    b"[1, 2]",
    json.dumps(
        {"custom_id": "c-1", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "dup"}}
    ).encode(),
    json.dumps(
        {"custom_id": "t", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "inptu": "x"}}
    ).encode(),
] + [json.dumps({"custom_id": f"bad-{i}", "body": {"input": 3}}).encode() for i in range(25)]


def write(path: Path, lines: int, *, bad: bool) -> Path:
    """`lines` valid lines (custom ids c-1 ...), with the BAD lines after the first ten if `bad`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for i in range(1, lines + 1):
            body = {"model": "gpt-test", "input": f"Say something about item number {i}, at some length." * 2}
            line = {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line).encode())
            f.write(b"\n")
            if bad and i == 10:
                f.write(b"\n".join(BAD) + b"\n")
    return path


def lines_for(size: int) -> int:
    return size // 150 + 1  # each valid line above is over 150 bytes


def jobs(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def test_a_big_file_is_queued_and_its_bad_lines_named_as_in_a_small_one(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "small" / "in.jsonl", 20, bad=True)
    big = write(tmp_path / "big" / "in.jsonl", lines_for(CHILD_MIN_BYTES), bad=True)
    assert big.stat().st_size >= CHILD_MIN_BYTES
    r_small, r_big = cli("submit", "small/in.jsonl"), cli("submit", "big/in.jsonl")
    assert r_small.returncode == r_big.returncode == 2
    assert r_big.stderr.replace("big/", "small/") == r_small.stderr
    assert "30 invalid line(s)" in r_big.stderr
    assert "'c-1' is already used on line 1" in r_big.stderr

    fine = write(tmp_path / "fine.jsonl", lines_for(CHILD_MIN_BYTES), bad=False)
    job = cli.submit(fine)
    with closing(sqlite3.connect(cli.db)) as conn:
        rows = conn.execute("SELECT line_no, custom_id, body FROM requests WHERE job_id = ? ORDER BY id", (job,))
        got = list(rows)
    assert len(got) == lines_for(CHILD_MIN_BYTES)
    with fine.open("rb") as f:
        for (line_no, custom_id, body), raw in zip(got, f, strict=True):
            line = json.loads(raw)
            assert (custom_id, json.loads(body)) == (line["custom_id"], line["body"])
            assert line_no == int(custom_id.removeprefix("c-"))


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_ctrl_c_while_the_child_parses_leaves_no_job_and_no_process(cli: Cli, tmp_path: Path) -> None:
    cli.submit(write(tmp_path / "small.jsonl", 5, bad=False))  # a store that stays (a new one would be removed)
    big = write(tmp_path / "big.jsonl", lines_for(4 * CHILD_MIN_BYTES), bad=False)
    # Its own process group, as a shell gives a command: Ctrl-C signals the runner and its child alike.
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
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "runner: interrupted", err
    assert "Traceback" not in err
    assert jobs(cli.db) == 1  # the small file's
    assert not any(Path(f"/proc/{k}").exists() for k in kids)


def test_a_parsing_child_killed_fails_the_submit_in_one_line_and_queues_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.submit(write(tmp_path / "small.jsonl", 5, bad=False))  # a store that stays (a new one would be removed)
    big = write(tmp_path / "big.jsonl", lines_for(4 * CHILD_MIN_BYTES), bad=False)
    p = cli.popen("submit", str(big))
    try:
        deadline = time.monotonic() + 60
        while not (kids := children(p.pid)) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kids, "no parsing child was started"
        os.kill(kids[0], signal.SIGKILL)  # as the kernel's OOM killer would
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, err
    assert err.strip().splitlines()[-1] == (
        f"runner: {big}: the process parsing the file ended before the end of it; nothing was queued"
    )
    assert jobs(cli.db) == 1  # the small file's
