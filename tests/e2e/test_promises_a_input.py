"""README "Input": UTF-8 BOMs, CRLF line endings and blank lines are fine; a gzip file is recognised by its
first bytes (not its name); the "same file" is the file's bytes as given, so a gzip file and its uncompressed
twin are two jobs, while the same bytes through stdin are the same job."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e


def _line(custom_id: str, text: str) -> bytes:
    body = {"model": "m", "input": text}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}).encode()


def _rows(cli: Cli, job: str) -> list[tuple[int, str, str]]:
    with closing(sqlite3.connect(f"file:{cli.db}?mode=ro", uri=True)) as conn:
        sql = "select line_no, custom_id, json_extract(body, '$.input') from requests where job_id = ? order by line_no"
        return list(conn.execute(sql, (job,)))


def test_bom_crlf_blank_lines_and_gzip_by_its_bytes(cli: Cli) -> None:
    text = (
        b"\xef\xbb\xbf" + _line("a", "café 🎉") + b"\r\n"
        b"\r\n"
        b"   \t\r\n" + _line("b", "two") + b"\r\n"
        b'{"model": "m", "input": "bare"}'  # and no line end at the end
    )
    plain = cli.db.parent / "twin.jsonl"
    plain.write_bytes(text)
    disguised = cli.db.parent / "disguised.jsonl"  # gzip, named like a plain file
    disguised.write_bytes(gzip.compress(text))

    r = cli("submit", str(disguised), str(plain))
    assert r.returncode == 0, r.stderr
    gz_job, plain_job = r.stdout.split()[-2:]
    assert gz_job != plain_job  # the same lines, but not the same bytes
    expected = [(1, "a", "café 🎉"), (4, "b", "two"), (5, "line-5", "bare")]
    assert _rows(cli, gz_job) == _rows(cli, plain_job) == expected

    # The gzip file's bytes through stdin: the same job, not a third one.
    again = subprocess.run(
        [sys.executable, "-m", "runner", "submit", "-"],
        input=disguised.read_bytes(),
        capture_output=True,
        timeout=120,
        env=cli.environ(),
        cwd=cli.db.parent,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().split()[-1] == gz_job
