"""Input a newcomer gives `runner submit` that is not a regular file: a named pipe, process substitution, a device."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e

LINES = "".join(
    json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "hi"}})
    + "\n"
    for i in range(3)
)


def feed(fifo: Path, data: str | bytes) -> threading.Thread:
    """A writer for the named pipe (opening it waits for the reader, as `zcat > fifo` would)."""

    def write() -> None:
        with fifo.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_named_pipe_is_queued_like_a_file_and_again_is_the_same_job(cli: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "requests.jsonl"
    os.mkfifo(fifo)

    writer = feed(fifo, LINES)
    r = cli("submit", str(fifo))
    writer.join(timeout=30)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    assert cli.status(job)["counts"]["queued"] == 3
    assert "requests" in cli("jobs").stdout  # named after the pipe, as a file is

    writer = feed(fifo, LINES)
    again = cli("submit", str(fifo))
    writer.join(timeout=30)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == job  # same bytes, same job (as for stdin)
    assert not list(Path(tempfile.gettempdir()).glob("runner-pipe.*"))  # the copy is removed


def test_a_bad_line_through_a_pipe_names_the_pipe_and_line(cli: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)

    writer = feed(fifo, LINES + "{oops\n")
    r = cli("submit", str(fifo))
    writer.join(timeout=30)

    assert r.returncode == 2
    assert f"{fifo}:line 4: is not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr


def test_dev_null_is_an_empty_input_not_a_missing_file(cli: Cli) -> None:
    r = cli("submit", "/dev/null")

    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["runner: /dev/null: has no requests (it is empty); nothing was queued"]


def test_a_file_without_requests_is_refused_by_estimate_as_by_submit(cli: Cli, tmp_path: Path) -> None:
    # `estimate` said "0 lines to send ... $0.0000", exit 0, for what `submit` refuses; and a file of blank lines
    # was called empty.
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\r\n")
    for name, why in (("empty.jsonl", "it is empty"), ("blank.jsonl", "only blank lines")):
        for command, consequence in (("submit", "nothing was queued"), ("estimate", "nothing was estimated")):
            r = cli(command, str(tmp_path / name))
            assert r.returncode == 2, (command, r.stderr)
            assert r.stderr.strip() == f"runner: {tmp_path / name}: has no requests ({why}); {consequence}"


@pytest.mark.parametrize("compressed", [False, True])
def test_convert_and_estimate_read_a_named_pipe_gzip_or_not(cli: Cli, tmp_path: Path, compressed: bool) -> None:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    data = gzip.compress(LINES.encode()) if compressed else LINES.encode()

    writer = feed(fifo, data)
    r = cli("convert", str(fifo))
    writer.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["custom_id"] for x in r.stdout.splitlines()] == ["q-0", "q-1", "q-2"]

    writer = feed(fifo, data)
    r = cli("estimate", str(fifo), "--json")
    writer.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lines"] == 3
