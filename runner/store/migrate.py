"""Schema migrations: the newest revision, and the upgrade a backend runs under its own migration lock (or, for
a new SQLite store, the schema made at the newest revision at once)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, inspect, text

# The newest migration. A store already at this revision opens without loading Alembic at all (that
# import is a third of a CLI start); tests/integration/test_migrations.py checks it matches the scripts.
HEAD_REVISION = "0016"


def include_object(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """An Alembic `include_object` hook for `dialect`: leaves out what tables.py declares for another
    database only (`info={"only_on": ...}`), which Alembic's comparison would otherwise call missing."""
    if dialect == "postgresql":
        from runner.store.tables import postgres_options

        postgres_options()  # compared with a PostgreSQL database: its indexes' options count

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        only_on = getattr(obj, "info", {}).get("only_on")
        return only_on is None or only_on == dialect

    return include


def current_revision(conn: Connection) -> str | None:
    """The store's schema revision, or None for a database without one (a new store)."""
    # Asked, not tried: on PostgreSQL a failed SELECT would spoil the transaction the upgrade runs in.
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def known_revision(revision: str) -> bool:
    """Whether `revision` is one of the migrations shipped here (a store newer than this runner's has one that
    is not, and so has a database where another tool keeps an Alembic table)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory(str(files("runner._migrations"))).get_revision(revision) is not None
    except CommandError:  # Alembic's error for a revision it cannot locate
        return False


def unknown_revision_reason(revision: str) -> str:
    """Why a store at `revision`, which this runner does not ship, is not opened (one spelling, both backends)."""
    return (
        f"the database's schema revision {revision!r} is not one this runner knows (a store made by a newer"
        " runner, or another tool's tables): upgrade runner, or give it a database of its own"
    )


def foreign_schema(conn: Connection) -> str | None:
    """Why the database on `conn` is not a store this runner can open or make, or None.

    Checked before an upgrade, which would end in Alembic's "Can't locate revision" traceback for a revision it
    does not ship, or in "table jobs already exists" for another tool's tables of the same names.
    """
    found = current_revision(conn)
    if found is not None:
        return None if found == HEAD_REVISION or known_revision(found) else unknown_revision_reason(found)
    from runner.store.tables import metadata

    taken = sorted(set(inspect(conn).get_table_names()) & set(metadata.tables))
    if not taken:
        return None
    return (
        f"the database holds tables that are not a runner store's ({', '.join(taken)}): give runner a"
        " database of its own"
    )


def upgrade(conn: Connection) -> None:
    """Bring the schema on `conn` to HEAD_REVISION (the caller holds the backend's migration lock)."""
    if current_revision(conn) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("runner._migrations")))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def create_at_head(conn: Connection) -> None:
    """Make a new SQLite store's schema at HEAD_REVISION in one step, as Alembic's docs recommend for a database
    built from scratch: tables.py's tables, and Alembic's version table stamped at the head (the caller holds
    the migration lock and has found no revision and no store tables).

    Replaying the migrations (and loading Alembic to do it) took 0.2-0.3 s of the first command on every new
    store (0.06 s now), ~80 of the test suite's ~940 CPU-seconds. tests/integration/test_migrations.py checks
    that both ways make the same schema. PostgreSQL stores still replay the migrations: they hold functions that
    only the migrations create, and are made seldom.
    """
    from runner.store.tables import metadata

    metadata.create_all(conn)
    version = Table(  # Alembic's own definition of its table
        "alembic_version",
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )
    version.create(conn)
    conn.execute(version.insert().values(version_num=HEAD_REVISION))
