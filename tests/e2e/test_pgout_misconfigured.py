"""A PostgreSQL store misconfigured the ways a newcomer does it: another driver's URL, a setting of the wrong type,
a port out of range, no database name, a read-only user, a database holding another tool's tables. Each is one
line naming what is wrong, exit 2, no traceback, no part of the password, and nothing changed."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, write_jobfile
from tests.pg import PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]


def _one_line_exit_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    assert "s3cret-pw" not in r.stderr + r.stdout, r.stderr
    return r.stderr


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_another_drivers_url_says_which_spelling_to_use(cli: Cli, driver: str) -> None:
    # SQLAlchemy URLs copied from another app's settings; the driver is not installed, and was imported anyway.
    cli.url = f"postgresql+{driver}://alice:s3cret-pw@127.0.0.1:1/runner"
    said = _one_line_exit_2(cli("status"))
    assert f"not {driver}: write the URL as postgresql://" in said, said
    assert f"postgresql+{driver}://alice:***@127.0.0.1:1/runner" in said, said


def test_a_setting_of_the_wrong_type_is_named(cli: Cli) -> None:
    cli.url = "postgresql://alice:s3cret-pw@127.0.0.1:1/runner?command_timeout=abc"
    said = _one_line_exit_2(cli("status"))
    assert "the URL's settings are wrong" in said and "command_timeout" in said, said


def test_a_port_out_of_range_is_named(cli: Cli) -> None:
    cli.url = "postgresql://alice:s3cret-pw@127.0.0.1:99999/runner"
    said = _one_line_exit_2(cli("status"))
    assert "the port 99999 is not a TCP port" in said, said


@pytest.mark.parametrize("tail", ["", "/"])
def test_a_url_without_a_database_says_so(cli: Cli, pg_server: PgCluster, tail: str, tmp_path: Path) -> None:
    # Without a name asyncpg falls back on the user's: the `postgres` user's is the maintenance database, which
    # `submit` made into a store; another user's was reported as a database that does not exist.
    cli.url = make_url(pg_server.url).set(password="s3cret-pw").render_as_string(hide_password=False) + tail
    said = _one_line_exit_2(cli("submit", str(write_jobfile(tmp_path / "in.jsonl", 2))))
    assert "the URL names no database" in said, said
    assert pg_server.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'").strip() == "0"


@pytest.fixture
def reader(pg_server: PgCluster, pg_store_url: str) -> Iterator[str]:
    """The store's URL as a user granted SELECT on its tables, and nothing else."""
    role = f"ro_{uuid.uuid4().hex[:12]}"
    database = make_url(pg_store_url).database
    assert database is not None
    pg_server.sql(f"CREATE ROLE {role} LOGIN")
    pg_server.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", database=database)
    yield make_url(pg_store_url).set(username=role, password="s3cret-pw").render_as_string(hide_password=False)
    pg_server.sql(f"DROP OWNED BY {role}", database=database)
    pg_server.sql(f"DROP ROLE {role}")


def test_a_read_only_user_reads_and_is_told_it_may_not_write(
    cli: Cli, pg_store_url: str, reader: str, tmp_path: Path
) -> None:
    cli.url = pg_store_url
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    cli.url = reader
    assert cli.status(job)["counts"]["queued"] == 4  # reading is all SELECT
    for args in (
        ["cancel", job],
        ["retry", job],
        ["delete", job, "--yes"],
        ["submit", "--new", str(tmp_path / "in.jsonl")],
    ):
        said = _one_line_exit_2(cli(*args))  # was a traceback (InsufficientPrivilegeError)
        assert "the database user may not do this (permission denied for table" in said, (args, said)
    cli.url = pg_store_url
    assert cli.status(job)["counts"]["queued"] == 4
    assert len(cli("jobs", "--json").stdout.split('"job_id"')) == 2  # one job: the refused submit added none


def test_another_tools_table_of_the_same_name_is_one_line(
    cli: Cli, pg_server: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    database = make_url(pg_url).database
    assert database is not None
    pg_server.sql("CREATE TABLE jobs (id serial PRIMARY KEY, title text)", database=database)
    cli.url = pg_url
    said = _one_line_exit_2(cli("submit", str(write_jobfile(tmp_path / "in.jsonl", 2))))
    assert 'the database holds tables that are not a runner store\'s (relation "jobs" already exists)' in said, said
    tables = pg_server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=database)
    assert tables.split() == ["jobs"]  # the migration was rolled back whole


def test_a_schema_revision_this_runner_does_not_know_is_one_line(
    cli: Cli, pg_server: PgCluster, pg_store_url: str
) -> None:
    # A store a newer runner upgraded (a fleet of mixed versions), or another tool's Alembic table.
    database = make_url(pg_store_url).database
    assert database is not None
    pg_server.sql("UPDATE alembic_version SET version_num = '0999'", database=database)
    cli.url = pg_store_url
    for command in ("status", "doctor"):
        said = _one_line_exit_2(cli(command))  # was Alembic's "Can't locate revision" traceback
        assert "the database's schema revision '0999' is not one this runner knows" in said, said
    assert pg_server.sql("SELECT version_num FROM alembic_version", database=database).strip() == "0999"


@pytest.mark.parametrize("scheme", ["mysql", "postgresq", "psql"])
def test_a_url_of_a_database_runner_does_not_use_is_one_line(cli: Cli, scheme: str) -> None:
    cli.url = f"{scheme}://alice:s3cret-pw@127.0.0.1:1/runner"
    said = _one_line_exit_2(cli("status"))  # was ModuleNotFoundError or NoSuchModuleError, a traceback
    assert f"{scheme}://alice:***@127.0.0.1:1/runner: not a store runner can use" in said, said
