"""SQLite engine set-up: WAL, busy timeout, BEGIN IMMEDIATE for writes, Alembic upgrade on open."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 10_000


def database_url(db: str) -> URL:
    """A path or an SQLAlchemy URL -> an aiosqlite URL."""
    if "://" in db:
        url = make_url(db)
        if url.drivername == "sqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        return url
    return make_url(f"sqlite+aiosqlite:///{Path(db).expanduser()}")


def database_path(db: str) -> Path | None:
    """The file behind `db`, or None for a URL that names no file."""
    database = database_url(db).database
    return Path(database) if database and database != ":memory:" else None


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's begin event below (pysqlite's own BEGIN is deferred,
    # which lets two writers deadlock on upgrade from read to write lock).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against a killed process in WAL mode; only power loss can drop the last commits.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _on_begin(conn: Connection) -> None:
    # Writers take the write lock up front, so a busy database makes them wait (busy_timeout) instead of
    # failing half way; readers (status, export) stay deferred and never block writers in WAL mode.
    if conn.get_execution_options().get("readonly"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(db: str) -> AsyncEngine:
    """An async engine on the SQLite file `db`, configured for many short write transactions."""
    url = database_url(db)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine.sync_engine, "connect", _on_connect)
    event.listen(engine.sync_engine, "begin", _on_begin)
    return engine


# The newest migration. A store already at this revision opens without loading Alembic at all (that
# import is a third of a CLI start); tests/integration/test_migrations.py checks it matches the scripts.
HEAD_REVISION = "0003"


def _current_revision(conn: Connection) -> str | None:
    try:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except Exception:  # no alembic_version table yet: a new file
        return None


def _upgrade(conn: Connection) -> None:
    if _current_revision(conn) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (inside one IMMEDIATE transaction, so racing opens wait)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
