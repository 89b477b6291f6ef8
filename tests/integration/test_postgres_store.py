"""What only a PostgreSQL store promises: one schema from the same migrations, safe concurrent opens and
claims from many processes, leases on the database's clock, and a clear line for a URL that cannot be used."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from runner.errors import StoreMissing, StoreUnavailable
from runner.states import RequestState
from runner.store import NewRequest, Outcome, Store
from runner.store.migrate import HEAD_REVISION, include_object
from runner.store.tables import metadata, requests
from tests.integration.test_migrations import head_revision
from tests.pg import PgCluster

pytestmark = [pytest.mark.pg, pytest.mark.anyio]


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def schema_state(url: str) -> tuple[str | None, list[Any]]:
    """The database's revision and its differences from tables.py (alembic's compare_metadata)."""
    engine = create_async_engine(_async_url(url))

    def compare(conn: Connection) -> tuple[str | None, list[Any]]:
        opts = {"compare_type": True, "compare_server_default": True, "include_object": include_object("postgresql")}
        ctx = MigrationContext.configure(conn, opts=opts)
        return ctx.get_current_revision(), list(compare_metadata(ctx, metadata))

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def make_job(store: Store, job_id: str, n: int, conversations: list[str | None] | None = None) -> None:
    await store.begin_job(
        job_id=job_id, name=job_id, source="x.jsonl", fingerprint=f"fp-{job_id}", background=False, staged_by="h:1"
    )
    rows = [
        NewRequest(
            i, f"c-{i}", json.dumps({"model": "m", "input": str(i)}), conversations[i - 1] if conversations else None
        )
        for i in range(1, n + 1)
    ]
    await store.add_requests(job_id, rows)
    await store.publish_job(job_id, n)


async def test_upgrade_on_an_empty_database_matches_the_tables(pg_url: str) -> None:
    assert head_revision() == HEAD_REVISION
    store = await Store.open(pg_url)
    assert store.created  # the schema was made by this open
    await store.aclose()
    assert await schema_state(pg_url) == (HEAD_REVISION, [])
    again = await Store.open(pg_url, "existing")
    assert not again.created
    await again.aclose()


def test_three_processes_opening_a_new_database_at_once_all_succeed(pg_url: str) -> None:
    # Separate interpreters, like `runner` commands on three machines started together on a new store:
    # without the advisory lock two of them would both create the tables, and one would fail.
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
        subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert anyio.run(schema_state, pg_url) == (HEAD_REVISION, [])


async def test_a_command_that_needs_a_store_does_not_make_one_in_an_empty_database(pg_url: str) -> None:
    with pytest.raises(StoreMissing) as e:
        await Store.open(pg_url, "existing")
    assert "no store at postgresql://postgres@127.0.0.1" in str(e.value)
    assert (await schema_state(pg_url))[0] is None


async def test_an_unreachable_server_is_one_line_with_the_password_masked(pg_server: PgCluster) -> None:
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{pg_server.port + 1 if pg_server.port < 65535 else 1}/nope"
    with pytest.raises(StoreUnavailable) as e:
        await Store.open(url)
    msg = str(e.value)
    assert "s3cret-pw" not in msg and "alice:***@127.0.0.1" in msg
    assert "cannot connect to the server" in msg and "\n" not in msg


async def test_a_missing_database_is_named(pg_server: PgCluster) -> None:
    with pytest.raises(StoreUnavailable, match="the database does not exist"):
        await Store.open(f"{pg_server.url}/no_such_db")


async def test_without_asyncpg_the_error_names_the_extra(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real(name, *a))
    with pytest.raises(StoreUnavailable) as e:
        await Store.open(pg_url.replace("postgres@", "postgres:pw@"))
    assert "pip install 'responses-runner[postgres]'" in str(e.value)
    assert ":pw@" not in str(e.value)


async def test_claims_from_many_stores_at_once_never_hand_out_a_row_twice(pg_url: str) -> None:
    first = await Store.open(pg_url)
    stores = [first, *[await Store.open(pg_url) for _ in range(3)]]
    try:
        await make_job(first, "job_a", 300)
        got: dict[str, list[int]] = {}

        async def drain(i: int, s: Store) -> None:
            mine = got.setdefault(f"o{i}", [])
            while batch := await s.claim(f"o{i}", ["job_a"], 7, 60):
                assert [c.id for c in batch] == sorted(c.id for c in batch)
                mine += [c.line_no for c in batch]

        async with anyio.create_task_group() as tg:
            for i, s in enumerate(stores):
                tg.start_soon(drain, i, s)
        lines = [n for ns in got.values() for n in ns]
        assert sorted(lines) == list(range(1, 301))  # every row once, none twice
        assert sum(1 for ns in got.values() if ns) >= 2
    finally:
        for s in stores:
            await s.aclose()


async def test_the_conversation_rule_holds_across_stores(pg_url: str) -> None:
    a, b = await Store.open(pg_url), await Store.open(pg_url)
    try:
        await make_job(a, "job_a", 4, ["x", "x", None, "x"])
        one, two = await a.claim("a", ["job_a"], 10, 60), await b.claim("b", ["job_a"], 10, 60)
        assert [c.line_no for c in one] == [1, 3] and two == []
        assert await a.apply("a", [Outcome(one[0].id, RequestState.COMPLETED, http_status=200)]) == []
        assert [c.line_no for c in await b.claim("b", ["job_a"], 10, 60)] == [2]
        assert await a.claim("a", ["job_a"], 10, 60) == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_runner_whose_clock_runs_ten_minutes_ahead_does_not_steal_live_leases(pg_url: str) -> None:
    honest = await Store.open(pg_url)
    skewed = await Store.open(pg_url, clock=lambda: time.time() + 600)
    try:
        await make_job(honest, "job_a", 3)
        held = await honest.claim("honest", ["job_a"], 3, 60)
        assert await skewed.reclaim_expired(["job_a"]) == 0
        assert await skewed.claim("skewed", ["job_a"], 3, 60) == []
        assert (await skewed.job_stats("job_a")).stale_leases == 0

        async def owners(conn: AsyncConnection) -> set[str]:
            return {r[0] for r in await conn.execute(select(requests.c.lease_owner))}

        assert await skewed.read(owners) == {"honest"}
        assert len(held) == 3
    finally:
        await honest.aclose()
        await skewed.aclose()


async def test_a_result_postgresql_cannot_hold_fails_that_request_only(pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        await make_job(store, "job_a", 2)
        c1, c2 = await store.claim("me", ["job_a"], 2, 60)
        bad = Outcome(c1.id, RequestState.COMPLETED, http_status=200, response_body='{"output_text": "a\x00b"}')
        good = Outcome(c2.id, RequestState.COMPLETED, http_status=200, response_body='{"output_text": "fine"}')
        assert await store.apply("me", [bad, good]) == []
        st = await store.job_stats("job_a")
        assert st.counts["completed"] == 1 and st.counts["failed"] == 1
        detail = await store.request_detail("job_a", "c-1")
        assert detail.error_code == "store_refused"
    finally:
        await store.aclose()


async def test_connections_the_server_dropped_are_replaced_not_fatal(pg_server: PgCluster, pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        await make_job(store, "job_a", 4)
        assert len(await store.claim("me", ["job_a"], 2, 60)) == 2  # the hot path's pooled connection
        name = pg_url.rsplit("/", 1)[1]
        killed = pg_server.sql(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        assert int(killed) >= 1
        assert len(await store.claim("me", ["job_a"], 2, 60)) == 2  # hot path, on a new connection
        assert (await store.job_stats("job_a")).counts["in_progress"] == 4  # portable path too
    finally:
        await store.aclose()


async def test_a_claim_cannot_slip_in_while_runner_delete_holds_its_job(pg_url: str) -> None:
    import asyncpg

    store = await Store.open(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        await make_job(store, "job_a", 3)
        tr = conn.transaction()
        await tr.start()
        # What Store.delete_jobs does first: lock the job's row, then check for live leases, then delete.
        await conn.execute("SELECT id FROM jobs WHERE id = 'job_a' FOR UPDATE")
        got: list[int] = []

        async def claim() -> None:
            got.extend(c.id for c in await store.claim("me", ["job_a"], 3, 60))
            got.append(-1)  # the claim returned

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            await anyio.sleep(0.3)
            assert got == []  # waiting for the delete's lock, not leasing rows about to be deleted
            await conn.execute("DELETE FROM requests WHERE job_id = 'job_a'")
            await conn.execute("DELETE FROM jobs WHERE id = 'job_a'")
            await tr.commit()
        assert got == [-1]  # and then found nothing to lease
    finally:
        await conn.close()
        await store.aclose()


async def test_a_submit_chunk_for_a_job_that_does_not_exist_is_refused(pg_store_url: str) -> None:
    import asyncpg

    store = await Store.open(pg_store_url)
    try:
        await make_job(store, "job_a", 2)
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="job_none"):
            await store.add_requests("job_none", [NewRequest(1, "c-1", "{}"), NewRequest(2, "c-2", "{}")])
        assert await store.read(lambda c: c.scalar(select(func.count()).select_from(requests))) == 2
    finally:
        await store.aclose()


async def test_one_statement_naming_a_job_and_a_missing_one_is_refused_whole(pg_store_url: str) -> None:
    """The insert check counts the jobs it could lock against the jobs the statement names (migration 0014):
    one real job beside a missing one is still refused, naming the missing one, and nothing is inserted."""
    import asyncpg

    store = await Store.open(pg_store_url)
    conn = await asyncpg.connect(pg_store_url)
    try:
        await make_job(store, "job_a", 1)
        row = "('{}', {}, 'c-{}', '{{}}', 'queued', 0, 0, 0, 0, 0, 0, 0, 0, 0, {})"
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="job_none"):
            await conn.execute(
                "INSERT INTO requests (job_id, line_no, custom_id, body, state, attempts, next_attempt_at,"
                " input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited,"
                " created_at, sched) VALUES "
                + ", ".join(row.format(j, n, n, n) for j, n in (("job_a", 2), ("job_none", 1), ("job_a", 3)))
            )
        assert await conn.fetchval("SELECT count(*) FROM requests") == 1
    finally:
        await conn.close()
        await store.aclose()


async def test_a_job_whose_rows_are_being_inserted_cannot_be_deleted_under_them(pg_store_url: str) -> None:
    """Like the foreign key it replaces, the insert trigger holds the job's row until the rows are committed."""
    import asyncpg

    store = await Store.open(pg_store_url)
    conn, other = await asyncpg.connect(pg_store_url), await asyncpg.connect(pg_store_url)
    try:
        await make_job(store, "job_a", 1)
        tr = conn.transaction()
        await tr.start()
        await conn.execute(
            "INSERT INTO requests (job_id, line_no, custom_id, body, state, attempts, next_attempt_at, input_tokens,"
            " cached_tokens, output_tokens, reasoning_tokens, total_tokens, rate_limited, created_at, sched)"
            " VALUES ('job_a', 2, 'c-2', '{}', 'queued', 0, 0, 0, 0, 0, 0, 0, 0, 0, 2)"
        )
        await other.execute("SET lock_timeout = '200ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await other.execute("DELETE FROM jobs WHERE id = 'job_a'")
        await tr.commit()
        assert await other.execute("DELETE FROM jobs WHERE id = 'job_a'") == "DELETE 1"
        assert await other.fetchval("SELECT count(*) FROM requests") == 0  # the key's ON DELETE CASCADE
    finally:
        await conn.close()
        await other.close()
        await store.aclose()


async def test_every_index_the_migrations_make_is_the_one_tables_py_declares(pg_store_url: str) -> None:
    """Alembic's comparison skips partial indexes' WHERE clauses: compare the definitions PostgreSQL gives of
    the migrated tables and of tables.py made afresh in another schema."""
    engine = create_async_engine(_async_url(pg_store_url))
    defs = "SELECT indexname, replace(indexdef, 'expected.', 'public.') FROM pg_indexes WHERE schemaname = :s"
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA expected"))
            made = await conn.execution_options(schema_translate_map={None: "expected"})
            await made.run_sync(metadata.create_all)
            migrated = dict((await conn.execute(text(defs), {"s": "public"})).all())
            declared = dict((await conn.execute(text(defs), {"s": "expected"})).all())
    finally:
        await engine.dispose()
    migrated.pop("alembic_version_pkc")
    assert "WHERE ((state)::text = 'in_progress'::text)" in migrated["ix_requests_state"]
    assert migrated == declared
