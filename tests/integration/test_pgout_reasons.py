"""Why a PostgreSQL store cannot be used, as the one line says it, for errors a test cannot cause on demand: a
server met while it shuts down (a reconnect during `pg_ctl stop`), which ended a `--processes` run in a
traceback."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from runner.store.postgres import PostgresBackend

pytestmark = [pytest.mark.anyio, pytest.mark.pg]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ],
)
async def test_a_server_going_down_is_named(error: Exception) -> None:
    backend = PostgresBackend("postgresql://alice:s3cret-pw@127.0.0.1:1/runner")
    try:
        wrapped = DBAPIError("connect", None, error)  # as SQLAlchemy hands it on
        problem = backend.file_problem(wrapped)
        assert problem is not None
        said = str(problem)
        assert said.startswith("cannot use the store postgresql://alice:***@127.0.0.1:1/runner: the server is")
        assert f"shutting down or restarting ({error})" in said, said
    finally:
        await backend.aclose()
