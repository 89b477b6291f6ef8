"""A PostgreSQL URL typed the way psql and tutorials spell it, or with a mistake in it: the store works or the
command says what is wrong in one line, exit 2, never a traceback, and never any part of the password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, write_jobfile
from tests.pg import PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]


def _one_line_exit_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_libpq_sslmode_is_understood(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    # `?sslmode=disable` is how psql's URLs say it; asyncpg calls it `ssl` (it used to end in a TypeError).
    cli.url = f"{pg_url}?sslmode=disable"
    r = cli("submit", str(write_jobfile(tmp_path / "in.jsonl", 3)))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_a_url_setting_the_driver_does_not_take_is_named(cli: Cli, pg_server: PgCluster) -> None:
    base = make_url(pg_server.url).set(database="postgres").render_as_string(hide_password=False)
    cli.url = f"{base}?password=s3cret-pw&colour=blue"
    said = _one_line_exit_2(cli("status"))
    assert "the URL's setting 'colour' is not one the PostgreSQL driver (asyncpg) takes" in said, said
    assert "s3cret-pw" not in said and "password=***" in said, said


def test_a_bad_sslmode_names_the_setting_and_its_values(cli: Cli) -> None:
    cli.url = "postgresql://alice:s3cret-pw@127.0.0.1:1/db?sslmode=bogus"
    said = _one_line_exit_2(cli("status"))
    assert "sslmode" in said and "verify-full" in said, said
    assert "s3cret-pw" not in said and "alice:***@127.0.0.1:1/db" in said, said


def test_no_part_of_a_password_with_an_unencoded_at_sign_is_shown(cli: Cli) -> None:
    # An `@` in a password must be written %40; unencoded, the URL parses as password "first" and host
    # "second-half@127.0.0.1", and the second half was shown as if it were the host.
    cli.url = "postgresql://alice:first@second-half@127.0.0.1:1/db"
    said = _one_line_exit_2(cli("status"))
    assert "first" not in said and "second-half" not in said, said
    assert "alice:***@127.0.0.1:1/db" in said, said


@pytest.mark.parametrize(
    ("db", "shown"),
    [
        ("postgresql://alice:s3cret-pw@127.0.0.1:1/db\n", "'postgresql://alice:***@127.0.0.1:1/db\\n'"),
        ("{tmp}/run\nner.db", "'{tmp}/run\\nner.db'"),  # a file path as well
        ("{tmp}/runner.db\t", "'{tmp}/runner.db\\t'"),  # a tab, which printed as it is could not be seen
    ],
)
def test_a_store_named_with_a_control_character_is_refused_on_one_line_and_not_made(
    cli: Cli, tmp_path: Path, db: str, shown: str
) -> None:
    # As a variable read from a file leaves it: `submit` made a store named `runner.db\n` beside the one meant
    # (the next command found no jobs), and the line break printed as it was made one-line errors two.
    db = db.format(tmp=tmp_path)
    for command in (["status"], ["submit", str(write_jobfile(tmp_path / "in.jsonl", 2))]):
        said = _one_line_exit_2(cli(*command, "--db", db))
        assert f"cannot use the store {shown.format(tmp=tmp_path)}: the name has a control character" in said, said
        assert "position" not in said  # counted in the URL as given, it would tell the password's length
        assert "s3cret-pw" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no store made, however named


def test_a_store_named_with_a_space_at_its_end_or_nothing_is_refused_and_not_made(cli: Cli, tmp_path: Path) -> None:
    # `RUNNER_DB="x.db "` from an .env file made a second store `x.db ` (shown as `x.db`), and the next command,
    # given `x.db`, found no jobs; `RUNNER_DB=` opened the working directory ("it is a directory").
    src = write_jobfile(tmp_path / "in.jsonl", 2)
    for db in (f"{tmp_path}/x.db ", f" {tmp_path}/x.db"):
        said = _one_line_exit_2(cli("submit", str(src), extra_env={"RUNNER_DB": db}))
        assert (
            said.strip() == f"runner: cannot use the store {db!r}: the name has white space at its start or end;"
            " check how it was set"
        ), said
    said = _one_line_exit_2(cli("submit", str(src), extra_env={"RUNNER_DB": ""}))
    assert said.strip() == "runner: the store's name is empty (RUNNER_DB or --db set to nothing): give a file path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
