"""Outputs as a user's disk and pipes take them: written whole or refused in one line naming what could not be
written (exit 2), a closed pipe ended quietly (exit 141), never over the job store, and a replaced file keeps
its permission bits.

A full disk is a file-size limit here (`ulimit -f` with SIGXFSZ ignored): a write past it writes what fits and
returns the short count, and the next one fails with EFBIG, as a disk that fills part way does with ENOSPC.
The CLI runs with PYTHONUNBUFFERED=1 (`Cli.environ`), as in many containers: stdout's bytes then go to a raw
file, whose short writes were lost silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, run_args, start_mock, write_jobfile

pytestmark = pytest.mark.e2e

LONG = 300_000  # characters of the one prompt: its flat export line is far past a pipe's 64 KB
LIMIT = 100_000  # bytes any file may grow to, in the tests of a full disk


def chat_file(path: Path, lines: int = 1, size: int = 10) -> Path:
    with path.open("w") as f:
        for i in range(lines):
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"{i} " + "x" * size}]}
            f.write(json.dumps(body) + "\n")
    return path


@pytest.fixture(scope="module")
def long_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, str]]:
    """A store with one answered job of one line whose prompt is LONG characters."""
    tmp = tmp_path_factory.mktemp("long")
    src = tmp / "in.jsonl"
    body = {"model": "gpt-4.1-mini", "input": "y" * LONG}
    src.write_text(json.dumps({"custom_id": "long", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    mock = start_mock()
    try:
        cli = Cli(tmp / "runner.db")
        job = cli.submit(src)
        r = cli("run", job, *run_args(mock, "--quiet"))
        assert r.returncode == 0, r.stderr
        yield cli, job
    finally:
        mock.stop()


def run_into(cli: Cli, out: Path, *args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout sent to `out` (`runner ARGS > out`), its files limited to `limit` bytes if given."""

    def limited() -> None:
        os.umask(0o022)
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with out.open("wb") as f:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=cli.environ(),
            cwd=cli.db.parent,
            preexec_fn=limited,
        )


def one_line(r: subprocess.CompletedProcess[str]) -> tuple[int, list[str]]:
    return r.returncode, r.stderr.strip().splitlines()


def test_convert_never_writes_over_the_job_store(cli: Cli, tmp_path: Path) -> None:
    # `runner convert chat.jsonl -o runner.db` (tab completion, or -o "$RUNNER_DB") replaced the store with
    # one converted line, exit 0: every paid answer was gone. Export and the HTML report refused it already.
    job = cli.submit(write_jobfile(tmp_path / "a.jsonl", 3))
    chat = chat_file(tmp_path / "chat.jsonl")
    before = hashlib.sha256(cli.db.read_bytes()).hexdigest()
    for target in ["runner.db", str(cli.db), "runner.db-wal"]:
        r = cli("convert", str(chat), "-o", target)
        assert one_line(r) == (2, [f"runner: cannot write {target}: it is the job store; give another path"])
    assert hashlib.sha256(cli.db.read_bytes()).hexdigest() == before
    jobs = cli("jobs")
    assert jobs.returncode == 0 and job in jobs.stdout, jobs.stderr
    r = cli("convert", str(chat), "-o", "other.jsonl")  # any other file is written as before
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "other.jsonl").read_text())["input"][0]["content"] == "0 xxxxxxxxxx"


def test_stdout_on_a_disk_that_fills_is_one_line_not_a_truncated_file(
    long_line: tuple[Cli, str], tmp_path: Path
) -> None:
    # `runner export > results.jsonl`: the one line's write went past the limit, its short count was ignored,
    # and the export said "exported 1 lines", exit 0, leaving 100 KB of a 300 KB line.
    cli, job = long_line
    r = run_into(cli, tmp_path / "out.jsonl", "export", job, "--format", "jsonl-flat", limit=LIMIT)
    assert one_line(r) == (2, ["runner: cannot write stdout: File too large"])
    # convert into a file (1.2 MB, past its writer's buffer): "runner: OSError: [Errno 27] File too large", exit 1.
    chat = chat_file(tmp_path / "chat.jsonl", lines=4, size=LONG)
    r = run_into(cli, tmp_path / "log", "convert", str(chat), "-o", str(tmp_path / "c.jsonl"), limit=LIMIT)
    assert one_line(r) == (2, [f"runner: cannot write {tmp_path / 'c.jsonl'}: File too large"])
    assert not (tmp_path / "c.jsonl").exists()  # whole or not at all


@pytest.mark.parametrize("command", ["export", "convert"])
def test_a_pipe_that_closes_during_the_last_write_ends_with_141(
    long_line: tuple[Cli, str], tmp_path: Path, command: str
) -> None:
    # `runner export --format jsonl-flat | head -c 100`: the reader left while the one long line was being
    # written, and the export said "exported 1 lines", exit 0 (README: a closed pipe stops quietly, 141).
    # convert copies its output to stdout in one piece, and said "converted 1 lines".
    cli, job = long_line
    args = ["export", job, "--format", "jsonl-flat"]
    if command == "convert":
        args = ["convert", str(chat_file(tmp_path / "chat.jsonl", size=LONG))]
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.environ(),
        cwd=cli.db.parent,
    )
    os.close(write)
    try:
        assert os.read(read, 100)  # the line is being written: the pipe holds 64 KB of it, the rest waits
    finally:
        os.close(read)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, "")


ALL_FULL: list[tuple[list[str], str]] = [
    (["status"], "stdout"),
    (["jobs"], "stdout"),
    (["report"], "stdout"),
    (["report", "--json"], "stdout"),
    (["estimate", "in.jsonl"], "stdout"),
    (["convert", "chat.jsonl"], "stdout"),
    (["convert", "chat.jsonl", "-o", "/dev/full"], "/dev/full"),
]


def test_a_full_stdout_or_device_is_one_line_naming_it(long_line: tuple[Cli, str], tmp_path: Path) -> None:
    # Each read "runner: OSError: [Errno 28] No space left on device", exit 1 ("some requests failed").
    cli, _ = long_line
    chat_file(cli.db.parent / "chat.jsonl")
    for args, named in ALL_FULL:
        r = run_into(cli, Path("/dev/full"), *args)
        assert one_line(r) == (2, [f"runner: cannot write {named}: No space left on device"]), args


def test_a_submit_into_a_full_stdout_says_the_job_is_queued(cli: Cli, tmp_path: Path) -> None:
    # The job is in the store before its id is printed: the id goes to stderr with the failure.
    src = write_jobfile(tmp_path / "a.jsonl", 3)
    r = run_into(cli, Path("/dev/full"), "submit", str(src))
    code, lines = one_line(r)
    jobs = cli("jobs", "--json")
    [job] = [j["job_id"] for j in json.loads(jobs.stdout)]
    assert (code, lines[-1]) == (
        2,
        f"runner: cannot write stdout: No space left on device; queued all the same: {job}"
        " (submitting the same again gives back the same id)",
    )
    assert cli.submit(src) == job


WRITERS: dict[str, list[str]] = {
    "export": ["export", "{job}", "-o", "{out}"],
    "html": ["report", "{job}", "--html", "{out}"],
    "convert": ["convert", "chat.jsonl", "-o", "{out}"],
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_replaced_file_keeps_its_permission_bits(long_line: tuple[Cli, str], tmp_path: Path, writer: str) -> None:
    # A results file made private (chmod 600) came back 644, world-readable, from the next export.
    cli, job = long_line
    chat_file(cli.db.parent / "chat.jsonl")
    private, new = tmp_path / f"{writer}-private.out", tmp_path / f"{writer}-new.out"
    private.write_text("yesterday's\n")
    private.chmod(0o600)
    for out in (private, new):
        args = [a.format(job=job, out=out) for a in WRITERS[writer]]
        r = run_into(cli, tmp_path / "stdout", *args)
        assert r.returncode == 0, r.stderr
        assert out.read_text() != "yesterday's\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(new.stat().st_mode) == 0o644  # a new file is made as any other, under the umask
