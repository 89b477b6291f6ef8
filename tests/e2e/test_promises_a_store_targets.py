"""README promises about files a command writes, tried as a user would break them: an export or an HTML
report aimed at the job store itself (`-o runner.db`, a slip of tab completion) is refused with one line and
exit 2, and the store is left as it was (it used to be replaced by the export, every job in it lost).
`--errors ""` (a script's unset variable) is refused too: failed lines used to go into the results file."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import anyio
import pytest

from runner import app
from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e


def test_an_export_or_report_aimed_at_the_store_is_refused_and_the_store_survives(cli: Cli) -> None:
    path = write_jobfile(cli.db.parent / "in.jsonl", 3)
    job = anyio.run(lambda: app.submit(path, db=str(cli.db))).job_id  # set-up only
    before = cli.db.read_bytes()
    for args in (["export", job, "-o", "runner.db"], ["report", job, "--html", "runner.db-wal"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr == f"runner: cannot write {args[-1]}: it is the job store; give another path\n", r.stderr
        assert cli.db.read_bytes() == before
    with closing(sqlite3.connect(f"file:{cli.db}?mode=ro", uri=True)) as conn:
        assert conn.execute("select count(*) from requests where job_id = ?", (job,)).fetchone() == (3,)


def test_an_empty_errors_path_is_refused_not_ignored(cli: Cli) -> None:
    path = write_jobfile(cli.db.parent / "in.jsonl", 2)
    job = anyio.run(lambda: app.submit(path, db=str(cli.db))).job_id  # set-up only
    with closing(sqlite3.connect(cli.db)) as conn, conn:
        conn.execute(
            "update requests set state = 'failed', attempts = 1, error_code = 'server_error', error_message = 'x',"
            " finished_at = 1 where job_id = ?",
            (job,),
        )
    r = cli("export", job, "-o", "results.jsonl", "--errors", "")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == "runner: --errors is empty: give a file path (or - for standard output)\n", r.stderr
    assert not (cli.db.parent / "results.jsonl").exists()
