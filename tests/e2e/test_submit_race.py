"""Several `runner submit` of one file at the same moment on one store (overlapping cron lines): one job, whose id
every one of them prints, and a `runner run` after them sends each line once. `--new` submits at once still make a
job each.

Each submit is a real CLI process. Started together, they would still reach the store up to a few hundred ms apart
(start-up on a busy machine), and whether their staging overlapped would be luck. So each reads its file from a
FIFO of its own (the same bytes, so the same job, as with stdin): a writer's open returns only once its reader has
opened it, so when the test has opened all of them every submit is past its start-up and waits for the bytes, which
all of them then get at once."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, run_args, write_jobfile

pytestmark = pytest.mark.e2e

LINES = 5_000
AT_ONCE = 3
NAME = "big.jsonl"


def use(cli: Cli, store_db: str) -> None:
    if "://" in store_db:  # PostgreSQL: the same commands against a fresh database
        cli.url = store_db


def submit_at_once(cli: Cli, procs: list[subprocess.Popen[str]], src: Path, *flags: str) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of AT_ONCE `runner submit big.jsonl FLAGS`, each in a directory of its own
    where big.jsonl is a FIFO, all of them given the bytes of `src` at once."""
    data = src.read_bytes()
    dirs = [src.parent / f"at-once-{i}" for i in range(AT_ONCE)]
    for d in dirs:
        d.mkdir()
        os.mkfifo(d / NAME)
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "runner", "submit", NAME, *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli.environ(),
            cwd=d,
        )
        for d in dirs
    ]
    procs.extend(started)
    fds = [open_when_read(d / NAME, p) for d, p in zip(dirs, started, strict=True)]
    writers = [threading.Thread(target=write_all, args=(fd, data)) for fd in fds]
    for w in writers:
        w.start()
    done = []
    for p in started:
        out, err = p.communicate(timeout=60)
        done.append((p.returncode, out, err))
    for w in writers:
        w.join()
    return done


def open_when_read(fifo: Path, reader: subprocess.Popen[str]) -> int:
    """The FIFO opened for writing, once `reader` has opened it (without waiting forever for one that died)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        else:
            os.set_blocking(fd, True)
            return fd
        assert reader.poll() is None, reader.communicate()
        assert time.monotonic() < deadline, "the submit never opened its file"
        time.sleep(0.005)


def write_all(fd: int, data: bytes) -> None:
    with open(fd, "wb") as f:
        f.write(data)


def without_created_store(err: str) -> str:
    # A new SQLite store's file is made by one of the submits, which says so.
    return "".join(x for x in err.splitlines(True) if not x.startswith("created store "))


def listed_jobs(cli: Cli) -> list[str]:
    r = cli("jobs", "--json")
    assert r.returncode == 0, r.stderr
    return [j["job_id"] for j in json.loads(r.stdout)]


def test_submits_of_one_file_at_once_make_one_job_and_a_run_sends_each_line_once(
    cli: Cli, mock_factory: Any, procs: list[subprocess.Popen[str]], tmp_path: Path, store_db: str
) -> None:
    use(cli, store_db)
    src = write_jobfile(tmp_path / NAME, LINES)
    done = submit_at_once(cli, procs, src)
    assert [code for code, _, _ in done] == [0] * AT_ONCE, [err for _, _, err in done]
    ids = {out.splitlines()[-1] for _, out, _ in done}
    assert len(ids) == 1, done
    (job,) = ids
    assert listed_jobs(cli) == [job]
    # One of them queued the file; the others say it was submitted before, as a submit after them does.
    said = sorted(without_created_store(err) for _, _, err in done)
    before = f"{NAME} was submitted before with the same options: job {job} (use --new for a separate job)\n"
    assert said == [before] * (AT_ONCE - 1) + [f"queued {LINES} requests from {NAME}\n"], said
    assert "half-submitted jobs: 0 " in cli("doctor").stdout  # the others' staged jobs are gone
    assert cli.submit(src) == job  # the same bytes from a plain file: the same job

    mock = mock_factory()
    r = cli("run", *run_args(mock, "--concurrency", "200", "--quiet"))
    assert r.returncode == 0, r.stderr
    assert mock.stats()["creates"] == LINES
    assert cli.status(job)["counts"]["completed"] == LINES


def test_new_submits_at_once_each_make_a_job(
    cli: Cli, procs: list[subprocess.Popen[str]], tmp_path: Path, store_db: str
) -> None:
    use(cli, store_db)
    src = write_jobfile(tmp_path / NAME, 50)
    done = submit_at_once(cli, procs, src, "--new")
    assert [code for code, _, _ in done] == [0] * AT_ONCE, [err for _, _, err in done]
    ids = {out.splitlines()[-1] for _, out, _ in done}
    assert len(ids) == AT_ONCE
    assert sorted(listed_jobs(cli)) == sorted(ids)
