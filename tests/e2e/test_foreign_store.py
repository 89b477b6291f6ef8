"""An SQLite file that is not a runner store: another tool's database with a table of the same name, or a store
made by a newer runner (an Alembic revision this one does not ship). Each command says so in one line, exit 2,
and the file is left as it was (PostgreSQL: tests/e2e/test_pgout_misconfigured.py)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e


def _schema(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return sorted(c.execute("SELECT type, name FROM sqlite_master"))


def _one_line_exit_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_another_tools_table_of_the_same_name_is_refused_and_left_alone(cli: Cli, tmp_path: Path) -> None:
    with sqlite3.connect(cli.db) as c:
        c.execute("CREATE TABLE jobs (ticket TEXT, owner TEXT)")  # some other tool's jobs
        c.execute("INSERT INTO jobs VALUES ('T-1', 'ops')")
    before = _schema(cli.db)
    for command in (["submit", str(write_jobfile(tmp_path / "in.jsonl", 3))], ["jobs"], ["status"]):
        said = _one_line_exit_2(cli(*command))  # submit was SQLAlchemy's "table jobs already exists" traceback
        assert f"cannot use the store {cli.db}" in said, said
        assert "the database holds tables that are not a runner store's (jobs)" in said, said
    assert _schema(cli.db) == before
    with sqlite3.connect(cli.db) as c:
        assert c.execute("SELECT * FROM jobs").fetchall() == [("T-1", "ops")]


def test_a_newer_runners_store_is_refused_and_left_alone(cli: Cli, tmp_path: Path) -> None:
    cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    with sqlite3.connect(cli.db) as c:
        c.execute("UPDATE alembic_version SET version_num = '0999'")  # as a later release would leave it
    before = _schema(cli.db)
    for command in (["jobs"], ["status"], ["run", "--base-url", "http://127.0.0.1:9/v1"]):
        said = _one_line_exit_2(cli(*command))  # was Alembic's "Can't locate revision" traceback
        assert "the database's schema revision '0999' is not one this runner knows" in said, said
    assert _schema(cli.db) == before
    with sqlite3.connect(cli.db) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchall() == [("0999",)]
