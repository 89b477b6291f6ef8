"""Job names of inputs that are not named files: `runner submit <(zcat x.jsonl.gz)` named its job "63" (the
descriptor's number), and `--name N` with stdin among several files named it after stdin's temporary copy."""

from __future__ import annotations

import gzip
import json
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli, write_jobfile


def _bash(cli: Cli, line: str) -> subprocess.CompletedProcess[str]:
    runner = f"{shlex.quote(sys.executable)} -m runner"
    return subprocess.run(
        ["bash", "-c", line.replace("RUNNER", runner)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli.environ(),
        cwd=cli.db.parent,
    )


def _names(cli: Cli) -> dict[str, str]:
    r = cli("jobs", "--json")
    assert r.returncode == 0, r.stderr
    return {j["job_id"]: j["name"] for j in json.loads(r.stdout)}


def test_a_process_substitution_is_named_pipe_and_the_same_bytes_give_the_same_job(cli: Cli, tmp_path: Path) -> None:
    plain = write_jobfile(tmp_path / "in.jsonl", 5)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    first = _bash(cli, f"RUNNER submit <(zcat {shlex.quote(str(gz))})")
    assert first.returncode == 0, first.stderr
    job = first.stdout.split()[-1]
    assert _names(cli)[job] == "pipe"
    again = _bash(cli, f"RUNNER submit <(zcat {shlex.quote(str(gz))})")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-1] == job, again.stderr  # same bytes, same job, as for stdin
    assert "was submitted before with the same options" in again.stderr
    status = cli("status", job)
    assert f"job {job} (pipe)" in status.stdout, status.stdout


def test_name_prefix_with_stdin_and_a_pipe_among_several_files(cli: Cli, tmp_path: Path) -> None:
    a, b, c = (write_jobfile(tmp_path / f"{x}.jsonl", n) for x, n in (("a", 2), ("b", 3), ("c", 4)))
    r = _bash(cli, f"RUNNER submit --name nightly - <(cat {shlex.quote(str(b))}) {shlex.quote(str(a))} < {c}")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()[-3:]
    names = _names(cli)
    assert [names[i] for i in ids] == ["nightly-stdin", "nightly-pipe", "nightly-a"], names


def test_a_descriptor_open_on_a_file_is_named_after_the_file(cli: Cli, tmp_path: Path) -> None:
    f = write_jobfile(tmp_path / "tonight.jsonl", 2)
    r = _bash(cli, f"RUNNER submit /dev/fd/3 3< {shlex.quote(str(f))}")
    assert r.returncode == 0, r.stderr
    assert _names(cli)[r.stdout.split()[-1]] == "tonight"
