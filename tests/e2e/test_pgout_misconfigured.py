"""A PostgreSQL store misconfigured the ways a newcomer does it: another driver's URL, a setting of the wrong type,
a port out of range, no database name, a read-only user, a database holding another tool's tables; and a server
set up for other uses: a database that takes no writes, a statement_timeout, no connection free. Each is one
line naming what is wrong, exit 2, no traceback, no part of the password, and nothing changed. A lock_timeout
is waited out."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, run_args, write_jobfile
from tests.pg import PG_BIN, PgCluster

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


def _database(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


def test_a_database_that_takes_no_writes_reads_and_refuses_in_one_line(
    cli: Cli, pg_server: PgCluster, pg_store_url: str, pg_url: str, mock_factory: Any, tmp_path: Path
) -> None:
    # A read replica's URL, or `default_transaction_read_only` set for the database: every write was a
    # traceback (ReadOnlySQLTransactionError), `run` one out of its task group.
    cli.url = pg_store_url
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    mock = mock_factory()
    pg_server.sql(f"ALTER DATABASE {_database(pg_store_url)} SET default_transaction_read_only = on")
    assert cli.status(job)["counts"]["queued"] == 4  # reading needs no write
    for args in (["run", *run_args(mock)], ["cancel", job], ["submit", "--new", str(tmp_path / "in.jsonl")]):
        r = cli(*args)
        if args[0] == "run":  # it reads what it starts, then meets the first write
            assert r.stderr.startswith(f"starting {job} (in): 4 of 4 requests left\n"), r.stderr
            r.stderr = r.stderr.split("\n", 1)[1]
        said = _one_line_exit_2(r)
        assert f"cannot use the store {pg_store_url}: the database takes no writes here (a standby server" in said
        assert said.rstrip().endswith("read-only transaction)"), said  # the server's own words
    assert mock.stats()["creates"] == 0
    pg_server.sql(f"ALTER DATABASE {_database(pg_store_url)} RESET default_transaction_read_only")
    assert cli.status(job)["counts"]["queued"] == 4
    assert len(cli("jobs", "--json").stdout.split('"job_id"')) == 2

    # A new database on such a server: not made into a store.
    pg_server.sql(f"ALTER DATABASE {_database(pg_url)} SET default_transaction_read_only = on")
    cli.url = pg_url
    said = _one_line_exit_2(cli("submit", str(tmp_path / "in.jsonl")))
    assert "the database takes no writes here" in said, said
    assert (
        pg_server.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database=_database(pg_url)).strip()
        == "0"
    )


def test_a_statement_timeout_fails_the_submit_in_one_line_and_queues_nothing(
    cli: Cli, pg_server: PgCluster, pg_store_url: str, tmp_path: Path
) -> None:
    # Managed servers often set a statement_timeout for the user: the COPY of a big file passed it, and the
    # clean-up after it too, whose own traceback then hid the first.
    database = _database(pg_store_url)
    src = write_jobfile(tmp_path / "in.jsonl", 20_000)
    pg_server.sql(f"ALTER DATABASE {database} SET statement_timeout = '1ms'")
    cli.url = pg_store_url
    said = _one_line_exit_2(cli("submit", str(src)))
    assert f"cannot use the store {pg_store_url}: the server cancelled a statement (a statement_timeout" in said
    assert said.rstrip().endswith("(canceling statement due to statement timeout)"), said
    pg_server.sql(f"ALTER DATABASE {database} RESET statement_timeout")
    assert '"job_id"' not in cli("jobs", "--json").stdout  # all or nothing
    job = cli.submit(src)  # and the next submit is a whole one: what the first staged is gone
    assert cli.status(job)["counts"]["queued"] == 20_000
    assert pg_server.sql("SELECT count(*) FROM jobs", database=database).strip() == "1"
    assert pg_server.sql("SELECT count(*) FROM requests", database=database).strip() == "20000"


def test_a_user_the_server_gives_no_connection_is_told_so(
    cli: Cli, pg_server: PgCluster, pg_store_url: str, tmp_path: Path
) -> None:
    # A role's CONNECTION LIMIT (or the server's max_connections) reached by the others: tried again for a
    # few seconds, as the fleet's pools may pass it for a moment, then one line.
    role = f"nc_{uuid.uuid4().hex[:12]}"
    pg_server.sql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        cli.url = make_url(pg_store_url).set(username=role, password="s3cret-pw").render_as_string(hide_password=False)
        said = _one_line_exit_2(cli("status"))
        assert "the server has no connection free for this user or database (max_connections, or the role's" in said
        assert f'each runner process uses up to 12 (too many connections for role "{role}")' in said, said
    finally:
        pg_server.sql(f"DROP ROLE {role}")


def test_a_lock_timeout_is_waited_out(cli: Cli, pg_server: PgCluster, pg_store_url: str, tmp_path: Path) -> None:
    # A lock_timeout set for the user meets a lock another session holds (a migration, a VACUUM FULL, an
    # administrator's LOCK TABLE): the statement is tried again, as for a deadlock, not reported as a traceback.
    database = _database(pg_store_url)
    cli.url = pg_store_url
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    pg_server.sql(f"ALTER DATABASE {database} SET lock_timeout = '20ms'")
    holder = subprocess.Popen(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-d",
            pg_store_url,
            "-c",
            "BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        held = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'jobs' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        )
        while pg_server.sql(held, database=database).strip() != "1":
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        r = cli("status", job, "--json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert '"queued": 4' in r.stdout, r.stdout
        assert time.monotonic() - started > 0.5  # it did meet the lock, and waited it out
    finally:
        holder.wait(timeout=30)
        pg_server.sql(f"ALTER DATABASE {database} RESET lock_timeout")
