"""A job spec whose `[job] store` is a PostgreSQL URL: the job goes to that database, never to a file named
after the URL beside the spec, and the URL's password is shown nowhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Cli, run_args, write_jobfile

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

SPEC = """
[job]
name = "eval"
input = "in.jsonl"
store = "%s"

[output]
results = "out/{job}-{date}.jsonl"
"""


def _spec_run(cli: Cli, spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`runner run SPEC` without RUNNER_DB, as cron runs it: the spec names the store."""
    env = {k: v for k, v in cli.environ().items() if k != "RUNNER_DB"}
    return subprocess.run(
        [sys.executable, "-m", "runner", "-v", "run", str(spec), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=spec.parent,
    )


def test_a_spec_naming_a_postgresql_store_uses_it(cli: Cli, pg_url: str, mock_factory: Any, tmp_path: Path) -> None:
    mock = mock_factory()
    url = make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    write_jobfile(tmp_path / "in.jsonl", 5)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC % url)
    r = _spec_run(cli, spec, *run_args(mock, "--quiet"))
    assert r.returncode == 0, r.stderr
    assert "s3cret-pw" not in r.stdout + r.stderr, r.stderr
    # It was read as a path: an SQLite store under ./postgresql:/USER:s3cret-pw@HOST:PORT/, its name printed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "nightly.toml", "out"]
    cli.url = url
    jobs = cli("jobs", "--json")
    assert jobs.returncode == 0 and '"eval"' in jobs.stdout, jobs.stdout + jobs.stderr

    spec.write_text(SPEC % make_url(url).set(database="no_such_db").render_as_string(hide_password=False))
    r = _spec_run(cli, spec, *run_args(mock, "--quiet"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("the database does not exist (create it first: createdb NAME)")
    assert "s3cret-pw" not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stderr
