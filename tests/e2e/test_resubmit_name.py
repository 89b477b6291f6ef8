"""Submitting a file again gives back its job, which keeps the name it was given: a `--name` that says otherwise
is not applied, and the line that says "submitted before" now names the job's name, so the user is not left
looking for a job of the new name."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli, write_jobfile
from tests.e2e.test_leftover_pipe_name import _names


def test_a_new_name_for_a_file_submitted_before_is_said_not_taken(cli: Cli, tmp_path: Path) -> None:
    src = write_jobfile(tmp_path / "in.jsonl", 3)
    first = cli("submit", str(src), "--name", "monday")
    assert first.returncode == 0, first.stderr
    job = first.stdout.split()[-1]
    again = cli("submit", str(src), "--name", "tuesday")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-1] == job
    assert again.stderr == (
        f"{src} was submitted before with the same options: job {job}, named 'monday', not 'tuesday'"
        " (use --new for a separate job)\n"
    )
    assert _names(cli) == {job: "monday"}
    # The same name, or none: nothing to say about it.
    for extra in (["--name", "monday"], []):
        same = cli("submit", str(src), *extra)
        assert same.stderr == (
            f"{src} was submitted before with the same options: job {job} (use --new for a separate job)\n"
        )


def test_several_files_compare_with_the_name_each_would_have_had(cli: Cli, tmp_path: Path) -> None:
    a, b = write_jobfile(tmp_path / "a.jsonl", 2), write_jobfile(tmp_path / "b.jsonl", 3)
    assert cli("submit", str(a), str(b), "--name", "grp").returncode == 0
    again = cli("submit", str(a), str(b), "--name", "grp")  # the same names: grp-a, grp-b
    assert ", named" not in again.stderr, again.stderr
    other = cli("submit", str(a), str(b), "--name", "other")
    assert other.stderr.count(", named 'grp-") == 2, other.stderr
    assert "not 'other-a'" in other.stderr and "not 'other-b'" in other.stderr, other.stderr
