"""The throwaway PostgreSQL server of the tests (tests/pg.py): loopback only, not root, one database per test."""

from __future__ import annotations

import os

import pytest

from tests.pg import PgCluster

pytestmark = pytest.mark.pg


def test_each_test_gets_its_own_empty_database(pg_server: PgCluster, pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    assert pg_server.sql("SELECT current_database()", name).strip() == name
    assert pg_server.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", name).strip() == "0"
    other = pg_server.create_database()
    assert other != pg_url
    pg_server.drop_database(other)
    assert pg_server.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{other.rsplit('/', 1)[1]}'").strip() == "0"


def test_server_listens_on_loopback_only_and_not_as_root(pg_server: PgCluster) -> None:
    assert pg_server.sql("SHOW listen_addresses").strip() == "127.0.0.1"
    assert pg_server.sql("SHOW unix_socket_directories").strip() == ""
    assert pg_server.sql("SHOW fsync").strip() == "off"
    if os.geteuid() == 0 and pg_server.external is None:
        pid = int((pg_server.dir / "data" / "postmaster.pid").read_text().split()[0])  # type: ignore[operator]
        assert os.stat(f"/proc/{pid}").st_uid != 0
