from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from runner.store import Store
from runner.store.migrate import HEAD_REVISION, include_object
from runner.store.tables import metadata


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    # The store skips Alembic when a file is at HEAD_REVISION; a new migration must move the constant too.
    assert head_revision() == HEAD_REVISION


def schema_diff(db: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True, "include_object": include_object("sqlite")}
            ctx = MigrationContext.configure(conn, opts=opts)
            diff: list[Any] = compare_metadata(ctx, metadata)
            return diff
    finally:
        engine.dispose()


def current_revision(db: Path) -> str | None:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rev: str | None = MigrationContext.configure(conn).get_current_revision()
            return rev
    finally:
        engine.dispose()


def sqlite_one(db: Path, sql: str) -> Any:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.mark.anyio
async def test_upgrade_on_an_empty_file_matches_the_tables(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    store = await Store.open(str(db))
    await store.aclose()

    assert current_revision(db) == head_revision()
    assert schema_diff(db) == []
    engine = create_engine(f"sqlite:///{db}")
    try:
        insp = inspect(engine)
        assert {"jobs", "requests", "alembic_version"} <= set(insp.get_table_names())
        assert {c["name"] for c in insp.get_columns("requests")} == {c.name for c in metadata.tables["requests"].c}
        assert {i["name"] for i in insp.get_indexes("requests")} >= {"ix_requests_state", "ix_requests_job_id_state"}
    finally:
        engine.dispose()
    assert sqlite_one(db, "PRAGMA journal_mode") == "wal"


def sqlite_schema(db: Path) -> dict[str, Any]:
    """Every table, index and constraint of a SQLite file, by name: a table's columns and constraints as a set
    (the order SQLite keeps them in is not part of the schema)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    schema: dict[str, Any] = {}
    for type_, name, table, sql in rows:
        if type_ == "table" and sql:
            head, _, body = sql.partition("(")
            parts = frozenset(p.strip().rstrip(",").strip() for p in body.rsplit(")", 1)[0].splitlines())
            sql = (head.replace('"', "").strip(), parts - {""})
        schema[name] = (type_, table, sql)
    return schema


def upgrade_with_alembic(db: Path) -> None:
    """Replay every migration on `db`, as a store made by an older runner is upgraded."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


@pytest.mark.anyio
async def test_a_new_store_has_the_schema_the_migrations_make(tmp_path: Path) -> None:
    # A new SQLite store is made at the head in one step (migrate.py); every older store is upgraded by the
    # migrations. Both must end with the same tables, columns, constraints and indexes.
    new, replayed = tmp_path / "new.db", tmp_path / "replayed.db"
    await (await Store.open(str(new))).aclose()
    upgrade_with_alembic(replayed)

    assert current_revision(replayed) == current_revision(new) == head_revision()
    assert schema_diff(replayed) == []
    assert sqlite_schema(new) == sqlite_schema(replayed)
    assert len(sqlite_schema(new)) > 10  # tables and indexes, not two empty files


@pytest.mark.anyio
async def test_store_opens_in_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "s.db"
    store = await Store.open(str(db))
    try:
        assert await store.list_jobs() == []
    finally:
        await store.aclose()
    assert current_revision(db) == head_revision()


@pytest.mark.anyio
async def test_reopening_a_migrated_store_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = await Store.open(str(db))
    try:
        await store.begin_job(
            job_id="job_a", name="a", source="a.jsonl", fingerprint="fp", background=False, staged_by="h:1"
        )
        await store.publish_job("job_a", 0)
    finally:
        await store.aclose()

    for _ in range(2):
        again = await Store.open(str(db))
        try:
            assert [j.id for j in await again.list_jobs()] == ["job_a"]
            assert await again.integrity_check() == "ok"
        finally:
            await again.aclose()
    assert current_revision(db) == head_revision()
    assert sqlite_one(db, "SELECT count(*) FROM alembic_version") == 1
    assert schema_diff(db) == []


@pytest.mark.anyio
async def test_store_opens_from_a_sqlalchemy_url(tmp_path: Path) -> None:
    db = tmp_path / "url.db"
    store = await Store.open(f"sqlite:///{db}")
    await store.aclose()
    assert current_revision(db) == head_revision()


@pytest.mark.anyio
async def test_two_stores_opening_a_fresh_file_at_once_both_succeed(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    opened: list[Store] = []

    async def open_one() -> None:
        opened.append(await Store.open(str(db)))

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(open_one)
        assert len(opened) == 4
        for s in opened:
            assert await s.list_jobs() == []
    finally:
        for s in opened:
            await s.aclose()
    assert current_revision(db) == head_revision()
    assert sqlite_one(db, "SELECT count(*) FROM alembic_version") == 1
    assert schema_diff(db) == []


def test_two_processes_opening_a_fresh_file_at_once_both_succeed(tmp_path: Path) -> None:
    # Separate interpreters, like two `runner` commands started together on a new store.
    db = tmp_path / "procs.db"
    code = (
        "import sys, warnings, anyio\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from runner.store import Store\n"
        "async def main():\n"
        "    s = await Store.open(sys.argv[1])\n"
        "    await s.list_jobs()\n"
        "    await s.aclose()\n"
        "anyio.run(main)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert current_revision(db) == head_revision()
    assert schema_diff(db) == []


@pytest.mark.anyio
async def test_a_store_made_by_an_older_runner_is_upgraded_with_its_data(tmp_path: Path) -> None:
    from alembic import command

    db = tmp_path / "old.db"
    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    cfg.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{db}")
    await anyio.to_thread.run_sync(command.upgrade, cfg, "0001")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "insert into jobs (id, name, source, fingerprint, background, total, phase, created_at)"
            " values ('job_old', 'old', 'x.jsonl', 'fp', 0, 1, 'ready', 1.0)"
        )
        conn.execute(
            "insert into requests (job_id, line_no, custom_id, body, state, attempts, next_attempt_at, input_tokens,"
            " cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited, created_at)"
            " values ('job_old', 1, 'c1', '{}', 'queued', 0, 0, 0, 0, 0, 0, 0, 0, 1.0)"
        )
    store = await Store.open(str(db))
    try:
        assert (await store.get_job("job_old")).total == 1
        assert (await store.job_stats("job_old")).counts["queued"] == 1
    finally:
        await store.aclose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone()[0] == HEAD_REVISION
