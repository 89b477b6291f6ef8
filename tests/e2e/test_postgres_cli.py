"""Every command on a PostgreSQL store, through the CLI: the URL in RUNNER_DB or --db, its password never shown."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, read_jsonl, run_args, write_jobfile
from tests.pg import PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]


def test_every_command_on_a_postgresql_store(cli: Cli, mock_factory: Any, tmp_path: Path, pg_url: str) -> None:
    cli.url, user, password = with_password(pg_url)
    host = make_url(pg_url).host
    mock = mock_factory()
    src = write_jobfile(tmp_path / "in.jsonl", 40, extra={"metadata": {"team": "t"}})
    r = cli("-v", "submit", str(src))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    assert f"{user}:***@{host}" in r.stderr and password not in r.stderr + r.stdout

    r = cli("run", *run_args(mock, "--concurrency", "8"))
    assert r.returncode == 0, r.stderr
    st = cli.status(job)
    assert st["status"] == "completed" and st["counts"]["completed"] + st["counts"]["incomplete"] == 40
    assert st["usage"]["total_tokens"] > 0 and mock.stats()["creates"] == 40

    r = cli("export", job, "-o", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0, r.stderr
    assert [x["custom_id"] for x in read_jsonl(tmp_path / "out.jsonl")] == [f"c-{i:05d}" for i in range(1, 41)]
    r = cli("export", job, "--format", "csv")
    assert r.returncode == 0, r.stderr
    head, first = r.stdout.splitlines()[:2]
    assert head.endswith("metadata.team") and "echo: Say something" in first, r.stdout[:300]
    r = cli("report", job, "--json")
    assert r.returncode == 0, r.stderr
    cost = json.loads(r.stdout)["cost"]  # the model is read out of the stored JSON on the server
    assert [(m["model"], m["requests"]) for m in cost["by_model"] + cost["unpriced"]] == [("gpt-test", 40)], cost
    r = cli("doctor")
    assert r.returncode == 0 and "integrity_check: ok" in r.stdout, r.stdout + r.stderr

    job2 = cli.submit(write_jobfile(tmp_path / "two.jsonl", 5))
    r = cli("cancel", job2)
    assert r.returncode == 0 and "cancelled 5 requests" in r.stderr, r.stdout + r.stderr
    assert cli.status(job2)["counts"]["cancelled"] == 5
    r = cli("delete", job2, "--yes")
    assert r.returncode == 0, r.stderr
    said = r.stderr  # the summary goes to stderr, the deleted ids to stdout
    assert re.search(r"deleted 1 job\(s\) and 5 requests; the store went from [0-9.]+ MB to [0-9.]+ MB", said), said
    assert [j["job_id"] for j in json.loads(cli("jobs", "--json").stdout)] == [job]


def with_password(url: str) -> tuple[str, str, str]:
    """`url` with a password in it, and its user and password: the server's own password when the URL has one
    (RUNNER_TEST_PG_URL may name a server that asks for it), else a made-up one that trust auth ignores, there
    to be masked wherever the URL is shown."""
    u = make_url(url)
    password = u.password or os.environ.get("PGPASSWORD") or "hunter2-pw"
    user = u.username or "postgres"
    return u.set(username=user, password=password).render_as_string(hide_password=False), user, str(password)


def test_a_postgresql_store_that_cannot_be_used_is_one_line_exit_2(cli: Cli, pg_server: PgCluster) -> None:
    # The server's own host, port and user (the throwaway cluster's, or RUNNER_TEST_PG_URL's), a database it lacks.
    url, user, password = with_password(pg_server.url)
    cli.url = make_url(url).set(database="no_such_db").render_as_string(hide_password=False)
    r = cli("status")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "the database does not exist" in r.stderr, r.stderr
    assert f"{user}:***@" in r.stderr and password not in r.stderr
