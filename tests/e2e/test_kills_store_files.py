"""A store file in the states a kill, a full disk or a careless copy leave: an empty file, a store made but not yet
given its tables, a truncated copy. Each command says so in one line, exits 2 and leaves the file as it was (but
for SQLite's own recovery of a write a kill cut short);
`submit` makes a store of the first two, as it would of no file at all."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Cli, write_jobfile

pytestmark = pytest.mark.e2e

# A command that reads, and one that would write (each CLI start is most of a second: two stand for the rest).
READERS = [["jobs"], ["run", "--base-url", "http://127.0.0.1:9/v1"]]


def _one_line_exit_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


def _files(cli: Cli) -> dict[str, str]:
    """Each file of the store (the database, its -wal and -shm) by name, with a digest of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in cli.db.parent.glob(cli.db.name + "*")}


def _as_sqlite_recovers(cli: Cli, side: Path) -> dict[str, str]:
    """The store's files as a plain SQLite read of a copy leaves them: what any reader must first do to a store a
    kill cut short (roll back a hot -journal, drop a -wal's uncommitted frames), and nothing else."""
    side.mkdir()
    for p in cli.db.parent.glob(cli.db.name + "*"):
        (side / p.name).write_bytes(p.read_bytes())
    with closing(sqlite3.connect(side / cli.db.name)) as c:
        c.execute("SELECT name FROM sqlite_master").fetchall()
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in side.glob(cli.db.name + "*")}


def _tables(db: Path) -> list[str]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return sorted(n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def test_an_empty_file_is_no_store_to_read_and_becomes_one_at_submit(cli: Cli, tmp_path: Path) -> None:
    cli.db.touch()  # `touch runner.db`, or a submit killed right as it made the file
    for args in READERS:
        said = _one_line_exit_2(cli(*args))
        # Was: `jobs` said "no jobs" (exit 0), `run` "nothing to run", each turning the file into a store.
        assert said == f"runner: no store at {cli.db}: the file is empty (run `runner submit FILE` first, or pass --db)"
        assert cli.db.stat().st_size == 0 and _files(cli) == {cli.db.name: hashlib.sha256(b"").hexdigest()}
    r = cli("submit", str(write_jobfile(tmp_path / "in.jsonl", 3)))
    assert r.returncode == 0, r.stderr
    assert f"created store {cli.db}" in r.stderr
    with closing(sqlite3.connect(cli.db)) as c:  # made as a new store is, not with SQLite's defaults
        assert c.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert cli("jobs").returncode == 0


def test_a_store_killed_before_its_tables_were_made_is_finished_by_the_next_submit(cli: Cli, tmp_path: Path) -> None:
    # What a submit killed between making the file and committing the schema leaves: a database, no tables.
    with closing(sqlite3.connect(cli.db)) as c:
        c.execute("PRAGMA page_size=16384")
        c.execute("PRAGMA journal_mode=WAL")
    before = _files(cli)
    for args in READERS:
        said = _one_line_exit_2(cli(*args))
        assert said.startswith(f"runner: no store at {cli.db}: an SQLite database without tables"), said
    assert _files(cli) == before and _tables(cli.db) == []
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    assert cli.status(job)["counts"]["queued"] == 3


def test_a_store_whose_first_write_a_kill_cut_short_is_rolled_back_and_named(cli: Cli, tmp_path: Path) -> None:
    # A process killed inside its first transaction, after SQLite spilled pages to the file: a hot -journal.
    killed = (
        "import os, sqlite3\n"
        f"c = sqlite3.connect({str(cli.db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA cache_size=1')\n"
        "c.execute('BEGIN'); c.execute('CREATE TABLE t(x)')\n"
        "c.executemany('INSERT INTO t VALUES (?)', [(b'x' * 1000,) for _ in range(300)])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", killed], check=True)
    assert cli.db.stat().st_size > 0 and cli.db.with_name(cli.db.name + "-journal").exists()
    recovered = _as_sqlite_recovers(cli, tmp_path / "side")
    said = _one_line_exit_2(cli("jobs"))
    assert said.startswith(f"runner: no store at {cli.db}: an SQLite database without tables"), said
    assert _files(cli) == recovered and _tables(cli.db) == []  # rolled back, as SQLite must; nothing more
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    assert cli.status(job)["counts"]["queued"] == 3


def test_a_truncated_copy_of_a_store_is_named_damaged_and_left_alone(cli: Cli, tmp_path: Path) -> None:
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 400))
    with closing(sqlite3.connect(cli.db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    whole = cli.db.read_bytes()
    for name in ("wal", "shm"):
        cli.db.with_name(f"{cli.db.name}-{name}").unlink(missing_ok=True)
    cli.db.write_bytes(whole[: len(whole) * 2 // 3])  # a copy cut short (a full disk, an interrupted scp)
    before = _files(cli)
    for args in [*READERS, ["submit", str(tmp_path / "in.jsonl"), "--new"], ["retry", job]]:
        said = _one_line_exit_2(cli(*args))
        assert said == f"runner: cannot use the store {cli.db}: the SQLite file is damaged", (args, said)
    assert _files(cli) == before


def test_a_submit_killed_as_it_makes_the_store_is_finished_by_the_next(
    cli: Cli, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    jobfile = write_jobfile(tmp_path / "in.jsonl", 3)
    p = cli.popen("submit", str(jobfile))
    procs.append(p)
    while not cli.db.exists():  # SQLite has just made the file: the store's layout and schema come next
        assert p.poll() is None, p.communicate()
    p.kill()
    p.communicate()
    # A kill inside SQLite's first write leaves a -journal that the next reader must roll back: that is SQLite's
    # recovery, and the only change a read may make (compared byte for byte, this failed CI once). `jobs` may
    # also leave it for the writer to roll back: an empty file beside it is named empty without opening SQLite.
    left = [_files(cli), _as_sqlite_recovers(cli, tmp_path / "side")]
    r = cli("jobs")
    if r.returncode == 0:  # the whole store was made before the kill landed
        assert (r.stdout + r.stderr).strip() == "no jobs", r
    else:  # an empty file, or one without tables (here SQLite and the migration were cut short)
        assert _one_line_exit_2(r).startswith(f"runner: no store at {cli.db}: "), r.stderr
        assert _files(cli) in left
    job = cli.submit(jobfile)
    assert cli.status(job)["counts"]["queued"] == 3
    with closing(sqlite3.connect(cli.db)) as c:
        assert c.execute("PRAGMA page_size").fetchone()[0] == 16384
