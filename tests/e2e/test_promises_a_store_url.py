"""README "Settings": RUNNER_DB / --db is a path, an SQLAlchemy URL or a PostgreSQL URL; only `submit` and
spec runs create a store, every other command says so and exits 2. An SQLite URL that names no file
(`sqlite://`, `sqlite:///:memory:`) used to be taken: `submit` said "queued 1 requests" and printed a job id,
exit 0, and the job was gone when the command ended; `jobs` and `run` then said "no jobs", exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("url", ["sqlite://", "sqlite+aiosqlite:///:memory:"])
def test_an_in_memory_store_is_refused_by_submit_and_the_rest(cli: Cli, tmp_path: Path, url: str) -> None:
    path = write_jobfile(tmp_path / "in.jsonl", 2)
    why = f"runner: cannot use the store {url}: an in-memory database keeps nothing once the command ends;"
    for args in (["submit", str(path)], ["jobs"]):
        r = cli(*args, extra_env={"RUNNER_DB": url})
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stdout == "" and r.stderr == f"{why} give a file path\n", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # and no file was made instead


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite://[::1", "sqlite://[::1"),  # a port that is not a number
        ("sqlite+aiosqlite://u:pw@/x.db", "sqlite+aiosqlite://u:***@/x.db"),  # SQLite takes no user
        ("sqlite:///x.db?timeout=abc", "sqlite:///x.db?timeout=abc"),  # a setting of the wrong type
    ],
)
def test_a_malformed_sqlite_url_is_one_line_not_a_traceback(cli: Cli, tmp_path: Path, url: str, shown: str) -> None:
    r = cli("jobs", extra_env={"RUNNER_DB": url})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"runner: cannot use the store {shown}: not a valid SQLite URL"), r.stderr
    assert r.stderr.endswith("; give a file path or sqlite:///PATH\n") and r.stderr.count("\n") == 1, r.stderr
    assert "pw" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_in_memory_url_with_a_password_is_shown_masked(cli: Cli) -> None:
    r = cli("status", extra_env={"RUNNER_DB": "sqlite://u:s3cret@"})
    assert r.returncode == 2 and r.stderr.startswith("runner: cannot use the store sqlite://u:***@: "), r.stderr
    assert "s3cret" not in r.stderr
