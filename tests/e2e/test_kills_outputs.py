"""Outputs that cannot be written: a nightly spec run whose output directory goes away under it (a cleanup job)
keeps the answers in the store, says in one line what failed and that nothing is lost, and running the spec again
writes the files without sending anything again; an export that fills the disk (here: a file size limit) names
its file in one line, exit 2, and leaves the previous export whole."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, write_jobfile

pytestmark = pytest.mark.e2e

LINES = 30

SPEC = """
[job]
name = "nightly"
input = "in.jsonl"

[output]
results = "out/{job}.jsonl"
report = "out/{job}.report.json"
"""


def test_an_output_directory_gone_mid_run_loses_no_answer(
    cli: Cli, mock_factory: Any, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    mock = mock_factory("--latency", "1.0")
    write_jobfile(tmp_path / "in.jsonl", LINES)
    spec = tmp_path / "nightly.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in cli.environ().items() if k != "RUNNER_DB"}  # the spec's store, beside it
    args = [sys.executable, "-m", "runner", "run", str(spec), "--base-url", mock.base_url, "--quiet"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    procs.append(p)
    deadline = time.monotonic() + 60
    while mock.stats()["creates"] == 0:  # checked at the start (it was there): now it is sending
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    shutil.rmtree(out)
    out.write_text("")  # and a file now stands where the directory was: nothing can be written under it
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert "Traceback" not in err, err
    said = err.strip().splitlines()
    assert said[:-1] == [f"created store {tmp_path / 'runner.db'}"], err  # and then one line, the error
    assert said[-1] == (
        f"runner: cannot write {out / 'nightly.jsonl'}: Not a directory; every answer is saved in the store:"
        f" fix it and run {spec} again to write the outputs (nothing is sent again)"
    )

    out.unlink()
    r = subprocess.run([*args[:-1]], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(read_jsonl(out / "nightly.jsonl")) == LINES
    assert json.loads((out / "nightly.report.json").read_text())["counts"]["completed"] == LINES
    stats = mock.stats()
    assert stats["creates"] == LINES and set(stats["creates_by_key"].values()) == {1}  # nothing paid twice


def test_an_export_that_runs_out_of_room_names_its_file_and_keeps_the_last_one(
    cli: Cli, mock_factory: Any, tmp_path: Path
) -> None:
    mock = mock_factory()
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 300))
    assert cli("run", job, "--base-url", mock.base_url, "--quiet").returncode == 0
    out = tmp_path / "results.jsonl"
    assert cli("export", job, "-o", str(out)).returncode == 0
    whole = out.read_bytes()
    assert len(whole) > 200_000

    def room_for_64_kb() -> None:  # as a full disk or quota would: writes past it fail
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    r = subprocess.run(
        [sys.executable, "-m", "runner", "export", job, "-o", str(out)],
        capture_output=True,
        text=True,
        env=cli.environ(),
        cwd=tmp_path,
        timeout=120,
        preexec_fn=room_for_64_kb,
    )
    # Was `runner: OSError: [Errno 27] File too large`, exit 1, naming no file.
    assert (r.returncode, r.stderr) == (2, f"runner: cannot write {out}: File too large\n")
    assert out.read_bytes() == whole
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]  # its temporary file is gone too
