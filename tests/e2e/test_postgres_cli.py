"""Every command on a PostgreSQL store, through the CLI: the URL in RUNNER_DB or --db, its password never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, run_args, write_jobfile
from tests.pg import PgCluster

pytestmark = [pytest.mark.e2e, pytest.mark.pg]


def test_every_command_on_a_postgresql_store(cli: Cli, mock_factory: Any, tmp_path: Path, pg_url: str) -> None:
    # Trust auth ignores the password: it is here to be masked wherever the URL is shown.
    cli.url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2-pw@")
    mock = mock_factory()
    src = write_jobfile(tmp_path / "in.jsonl", 40, extra={"metadata": {"team": "t"}})
    r = cli("-v", "submit", str(src))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    assert "postgres:***@127.0.0.1" in r.stderr and "hunter2" not in r.stderr + r.stdout

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


def test_a_postgresql_store_that_cannot_be_used_is_one_line_exit_2(cli: Cli, pg_server: PgCluster) -> None:
    cli.url = f"postgresql://postgres:hunter2-pw@127.0.0.1:{pg_server.port}/no_such_db"
    r = cli("status")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "the database does not exist" in r.stderr and "postgres:***@" in r.stderr and "hunter2" not in r.stderr
