"""`refuse_store_file`: which export targets would replace the job store (README: an export never costs a job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ConfigError
from runner.files import atomic_writer, refuse_store_file


@pytest.mark.parametrize("name", ["runner.db", "runner.db-wal", "runner.db-shm", "runner.db-journal", "link.db"])
def test_the_store_and_sqlites_files_beside_it_are_refused(tmp_path: Path, name: str) -> None:
    store = tmp_path / "runner.db"
    store.write_bytes(b"SQLite format 3\x00")
    (tmp_path / "link.db").symlink_to(store)
    with pytest.raises(ConfigError, match=r"it is the job store; give another path$"):
        refuse_store_file(tmp_path / name, store)


def test_other_paths_and_stores_without_a_file_pass(tmp_path: Path) -> None:
    store = tmp_path / "runner.db"
    store.write_bytes(b"SQLite format 3\x00")
    refuse_store_file(tmp_path / "runner.db.jsonl", store)
    refuse_store_file(tmp_path / "runner.db", None)  # PostgreSQL: no file to protect
    refuse_store_file(Path("/dev/null"), store)


def test_a_target_under_a_file_says_the_file_is_not_a_directory(tmp_path: Path) -> None:
    # `-o results.jsonl/x.jsonl`: the directory it names is a file. The message said "File exists".
    (tmp_path / "results.jsonl").write_text("kept\n")
    for target in (tmp_path / "results.jsonl" / "x.jsonl", tmp_path / "results.jsonl" / "sub" / "x.jsonl"):
        with pytest.raises(ConfigError) as info, atomic_writer(target) as f:
            f.write(b"never\n")
        assert str(info.value) == f"cannot write {target}: Not a directory", str(info.value)
    assert (tmp_path / "results.jsonl").read_text() == "kept\n"
