"""An export from a PostgreSQL store read more slowly than the server waits: the export holds one read snapshot
(a transaction) while it writes, and a server with an idle_in_transaction_session_timeout ends the connection
under it when whatever reads the export (a pipe, `| less`) is slower than that. One line naming the setting,
exit 2, no traceback; and the export's own failures (a full disk) are still its own, not the store's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, run_args, write_jobfile
from tests.pg import PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

LINES = 3000  # more than one chunk of the export (EXPORT_CHUNK), each line ~0.5 KB: far more than a pipe holds


@pytest.fixture
def answered(cli: Cli, pg_server: PgCluster, pg_store_url: str, mock_factory: Any, tmp_path: Path) -> Iterator[str]:
    """A job of LINES completed requests on a PostgreSQL store (its id); the database's settings reset after."""
    cli.url = pg_store_url
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", LINES))
    r = cli("run", job, *run_args(mock_factory(), "--quiet", "--concurrency", "200", "--rpm", "600000"))
    assert r.returncode == 0, r.stderr
    yield job
    pg_server.sql(f"ALTER DATABASE {make_url(pg_store_url).database} RESET idle_in_transaction_session_timeout")


@pytest.mark.parametrize("fmt", ["batch", "jsonl-flat"])  # the server-written lines, and the rows read by SQLAlchemy
def test_a_reader_slower_than_the_servers_idle_timeout_is_one_line(
    cli: Cli, pg_server: PgCluster, pg_store_url: str, answered: str, fmt: str
) -> None:
    database = make_url(pg_store_url).database
    pg_server.sql(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '200ms'")
    export = cli.popen("export", answered, "--format", fmt, "-o", "-")
    # The reader is busy: the export blocks on the full pipe, its transaction idle on the server. Waited for as
    # the server sees it (a loaded machine may take seconds to start the export), then past the timeout.
    idle = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runner'"
        f" AND datname = '{database}' AND state LIKE 'idle in transaction%'"
    )
    deadline = time.monotonic() + 60
    while pg_server.sql(idle).strip() == "0" and export.poll() is None:
        assert time.monotonic() < deadline, "the export never waited on its reader"
        time.sleep(0.05)
    time.sleep(1.0)
    _, err = export.communicate(timeout=120)
    assert export.returncode == 2, err  # was a traceback out of asyncpg (InterfaceError), exit 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"runner: cannot use the store {pg_store_url}: the server ended the read after it waited")
    assert "idle_in_transaction_session_timeout for whatever reads the export: write it to a file (-o FILE)" in err

    pg_server.sql(f"ALTER DATABASE {database} RESET idle_in_transaction_session_timeout")
    r = cli("export", answered, "--format", fmt, "-o", "-")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == LINES, r.stderr


def test_a_full_disk_under_an_export_is_still_the_disk(cli: Cli, answered: str, tmp_path: Path) -> None:
    # The export's stream says the store's failures as the store's: what the writing side raises is not one.
    for fmt in ("batch", "jsonl-flat"):
        r = cli("export", answered, "--format", fmt, "-o", "/dev/full")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["runner: cannot write /dev/full: No space left on device"], r.stderr
