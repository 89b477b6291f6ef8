"""The batch lane against a Files + Batches API that is wrong or hostile (tests/servers/batchodd.py).

The promises: never pay twice, never lose work, never take another job's lines; a bad reply fails that request
or that batch, not every run of the job; no traceback. Each test runs the CLI as a subprocess on a real SQLite
store and counts on the server what was uploaded, created and run.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl, write_jobfile
from tests.servers import batchodd, started

pytestmark = pytest.mark.e2e

SERVER = Path(batchodd.__file__)


@dataclass
class Odd:
    proc: subprocess.Popen[str]
    base_url: str

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url.removesuffix("/v1") + path, data=data)
        with urllib.request.urlopen(req, timeout=10) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def set(self, **odd: Any) -> None:
        self._call("/_odd", odd)


@pytest.fixture
def odd() -> Iterator[Odd]:
    with started(SERVER) as (proc, urls):
        yield Odd(proc, urls[0])


def _run(cli: Cli, odd: Odd, job: str, *flags: str) -> subprocess.CompletedProcess[str]:
    r = cli("run", job, "--lane", "batch", "--base-url", odd.base_url, "--quiet", *flags, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _export(cli: Cli, job: str, tmp_path: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """What `runner export` gives: custom_id -> the answer's text, and custom_id -> the error object."""
    out, err = tmp_path / f"{job}.jsonl", tmp_path / f"{job}-errors.jsonl"
    e = cli("export", job, "-o", str(out), "--errors", str(err))
    assert e.returncode == 0, e.stderr
    answers = {
        x["custom_id"]: x["response"]["body"]["output"][0]["content"][0]["text"]
        for x in read_jsonl(out)
        if x["response"] and x["response"]["status_code"] == 200
    }
    return answers, {x["custom_id"]: x["error"] for x in read_jsonl(err)}


def test_the_server_imports_nothing_of_the_runner() -> None:
    tree = ast.parse(SERVER.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n == "runner" or n.startswith(("runner.", "tests"))]


def test_a_file_list_that_pages_for_ever_is_given_up_and_the_run_ends(cli: Cli, odd: Odd, tmp_path: Path) -> None:
    # The upload's reply is lost, so the runner looks for the file by name; the list says `has_more` for ever
    # with a cursor that never moves. It was read page after page, without end (and without a pause).
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    odd.set(upload_500=1, files_loop=True)
    r = _run(cli, odd, job)
    assert r.returncode == 0, r.stderr
    stats = odd.stats()
    assert stats["file_lists"] <= 2, stats  # one look before the second upload, given up at the repeated cursor
    assert (stats["uploads"], stats["creates"], stats["most_runs_of_a_line"]) == (2, 1, 1), stats  # an upload is free
    assert sorted(_export(cli, job, tmp_path)[0]) == [f"c-{i:05d}" for i in range(1, 5)]


def test_a_batch_list_that_pages_for_ever_stops_the_run_and_never_creates_twice(
    cli: Cli, odd: Odd, tmp_path: Path
) -> None:
    # The create's reply is lost (the batch exists and will be billed); the list that should find it never ends.
    # Creating again could run every line twice: the run stops instead, and a later run finds the batch.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    odd.set(create_500=1, batches_loop=True)
    r = _run(cli, odd, job)
    assert r.returncode == 5, r.stderr
    said = [x for x in r.stderr.splitlines() if "listing batches" in x]
    assert len(said) == 1 and "its cursor" in said[0], r.stderr
    assert odd.stats()["creates"] == 1
    odd.set(batches_loop=False)
    r = _run(cli, odd, job)
    assert r.returncode == 0, r.stderr
    stats = odd.stats()
    assert (stats["uploads"], stats["creates"], stats["most_runs_of_a_line"]) == (1, 1, 1), stats


def test_a_poll_answered_with_another_jobs_batch_never_merges_its_answers(cli: Cli, odd: Odd, tmp_path: Path) -> None:
    # Two jobs in one store with the same custom ids (c-00001 ...), as most jobs have. Job A's batch is
    # batch-2. Every poll of job B's batch is answered with job A's: its output file names the same custom ids.
    first = cli.submit(write_jobfile(tmp_path / "a.jsonl", 3))
    odd.set(text="for job A")
    assert _run(cli, odd, first).returncode == 0
    second = cli.submit(write_jobfile(tmp_path / "b.jsonl", 3, extra={"temperature": 0.5}))
    odd.set(text="for job B", poll_as="batch-2")
    r = _run(cli, odd, second)
    assert r.returncode == 1, r.stderr
    answers, errors = _export(cli, second, tmp_path)
    assert answers == {}, f"job B was given job A's answers: {answers}"
    assert {x["code"] for x in errors.values()} == {"batch_id_mismatch"} and len(errors) == 3, errors
    assert "returned another batch ('batch-2')" in next(iter(errors.values()))["message"]
    assert odd.stats()["creates"] == 2  # job B's lines were not sent again: its batch may still run, billed


@pytest.mark.parametrize("output", ["404", "html"])
def test_an_output_file_that_cannot_be_read_fails_its_lines_not_every_run(
    cli: Cli, odd: Odd, tmp_path: Path, output: str
) -> None:
    # The batch completed, but its output file id names no file (404), or its content is a proxy's web page.
    # A 404 stopped every run of the job (exit 5), for ever; now the file settles nothing, as a missing line.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(output=output)
    r = _run(cli, odd, job, "--max-attempts", "2")
    assert r.returncode == 1, r.stderr
    counts = cli.status(job)["counts"]
    assert counts["failed"] == 3, counts
    assert odd.stats()["creates"] == 2  # --max-attempts bounds what a server that loses answers can cost
    why = next(iter(_export(cli, job, tmp_path)[1].values()))["message"]
    if output == "404":
        assert "the batch file file-gone could not be read: 404" in why, why
    else:  # the page's 2 lines, neither a Batch output line
        assert "held 2 lines that are not Batch output lines" in why, why
    r = _run(cli, odd, job)
    assert r.returncode == 1, r.stderr  # nothing left to do: the failed lines are `runner retry`'s
    assert odd.stats()["creates"] == 2


def test_an_upload_answered_with_an_earlier_files_id_never_runs_a_file_twice(
    cli: Cli, odd: Odd, tmp_path: Path
) -> None:
    # A proxy answers every upload with the first one's cached reply. Two chunks would become two batches of
    # the first chunk's file: its lines run and billed twice, the second chunk's never.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    odd.set(same_file_id=True)
    r = _run(cli, odd, job, "--batch-max-lines", "2")
    assert r.returncode == 1, r.stderr
    stats = odd.stats()
    assert (stats["creates"], stats["most_runs_of_a_line"]) == (1, 1), stats
    said = [x for x in r.stderr.splitlines() if "file-1" in x]
    assert said and "file-1 is already the input file of batch batch-2" in said[0], r.stderr
    assert sorted(_export(cli, job, tmp_path)[0]) == ["c-00001", "c-00002"]
    assert cli.status(job)["counts"]["queued"] == 2  # the second chunk waits for a run against a sane server


@pytest.mark.parametrize("batch_id", ["..", "b" * 10_000])
def test_a_batch_created_with_an_id_that_cannot_be_polled_is_never_created_again(
    cli: Cli, odd: Odd, tmp_path: Path, batch_id: str
) -> None:
    # `..` goes into the URL path (`batches/..` is GET /v1/); 10 KB is no id. The batch exists and will be billed:
    # the run stopped (exit 5), and the next, not finding it by metadata with a usable id, created another.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(batch_id=batch_id)
    r = _run(cli, odd, job)
    assert r.returncode == 1, r.stderr
    said = [x for x in r.stderr.splitlines() if "without a usable id" in x]
    assert len(said) == 1 and len(said[0]) < 400 and "it is not created again" in said[0], r.stderr
    _, errors = _export(cli, job, tmp_path)
    assert sorted(errors) == ["c-00001", "c-00002", "c-00003"], errors
    assert {x["code"] for x in errors.values()} == {"batch_id_invalid"}, errors
    r = _run(cli, odd, job)
    assert odd.stats()["creates"] == 1, r.stderr


def test_a_messy_output_file_gives_each_line_its_own_first_answer_once(cli: Cli, odd: Odd, tmp_path: Path) -> None:
    # Around each line: a line that is not JSON, a made-up custom_id, the line without status_code, and after it
    # the same custom_id again with 100 times the tokens; then the lines of the job's other batch. The first
    # line's answer is 10 MB long.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    odd.set(output="messy", pad=10_000_000)
    r = _run(cli, odd, job, "--batch-max-lines", "2")
    assert r.returncode == 0, r.stderr
    answers, errors = _export(cli, job, tmp_path)
    big = answers.get("c-00001", "")
    assert big == "answer c-00001" + "x" * 10_000_000, len(big)
    answers["c-00001"] = "answer c-00001"
    assert answers == {f"c-{i:05d}": f"answer c-{i:05d}" for i in range(1, 5)} and errors == {}, (answers, errors)
    usage = cli.status(job)["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (40, 20), usage  # each line's tokens, once
    assert (odd.stats()["creates"], odd.stats()["most_runs_of_a_line"]) == (2, 1)


def test_a_batch_that_names_another_batchs_output_file_is_not_given_its_answers(
    cli: Cli, odd: Odd, tmp_path: Path, store_db: str
) -> None:
    # Job A's batch (batch-2) wrote its answers to file-3. Job B's batch is polled right, but names file-3 as
    # its output file: a proxy's mix-up. Job B has the same custom ids. On both store backends.
    if not store_db.endswith(".db"):
        cli.url = store_db
    first = cli.submit(write_jobfile(tmp_path / "a.jsonl", 3))
    odd.set(text="for job A")
    assert _run(cli, odd, first).returncode == 0
    second = cli.submit(write_jobfile(tmp_path / "b.jsonl", 3, extra={"temperature": 0.5}))
    odd.set(text="for job B", output_file="file-3")
    r = _run(cli, odd, second, "--max-attempts", "1")
    assert r.returncode == 1, r.stderr
    answers, errors = _export(cli, second, tmp_path)
    assert answers == {}, f"job B was given job A's answers: {answers}"
    assert {x["code"] for x in errors.values()} == {"missing_from_batch"} and len(errors) == 3, errors
    assert "file-3 is already the output file of batch batch-2" in next(iter(errors.values()))["message"]


def test_ctrl_c_while_a_download_is_retried_exits_130_without_a_traceback(
    cli: Cli, odd: Odd, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # A stop raised inside the merge (Ctrl-C in the wait between two tries of a download, or a download that
    # keeps failing) left its task group as an ExceptionGroup: the user saw a traceback.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(content_503=True)
    p = cli.popen("run", job, "--lane", "batch", "--base-url", odd.base_url, "--quiet")
    procs.append(p)
    deadline = time.monotonic() + 30
    while odd.stats().get("contents", 0) < 1:
        assert p.poll() is None and time.monotonic() < deadline, "the run never downloaded the output file"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    odd.set(content_503=False)
    r = _run(cli, odd, job)  # the batch is still open: the next run merges it
    assert r.returncode == 0, r.stderr
    assert odd.stats()["creates"] == 1


def test_a_status_the_runner_does_not_know_is_polled_and_shown_bounded(
    cli: Cli, odd: Odd, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    # A status of 100 KB, with a terminal escape in it, was stored as sent and printed whole by `runner status`.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(status="paused\x1b[2J" + "z" * 100_000)
    p = cli.popen("run", job, "--lane", "batch", "--base-url", odd.base_url, "--quiet")
    procs.append(p)
    deadline = time.monotonic() + 30
    while odd.stats().get("polls", 0) < 2:  # the first poll's status is stored before the second is sent
        assert p.poll() is None and time.monotonic() < deadline, "the run never polled its batch twice"
        time.sleep(0.05)
    shown = cli("status", job)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("  batch batch-2: "))
    assert "paused\\x1b[2Jzzz" in line and len(line) < 300, line[:300]
    p.send_signal(signal.SIGINT)  # a status it does not know is not final: the run polls on until stopped
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    odd.set(status=None)
    assert _run(cli, odd, job).returncode == 0


def test_a_failed_batch_whose_error_code_is_an_object_is_reported_not_a_traceback(
    cli: Cli, odd: Odd, tmp_path: Path
) -> None:
    # `code in LIMIT_CODES` on a code that is a JSON object: TypeError (unhashable), a traceback, every run.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(fail_errors={"object": "list", "data": [{"code": {"kind": "odd"}, "message": "no", "line": 1}]})
    r = _run(cli, odd, job)
    assert r.returncode == 1, r.stderr
    said = [x for x in r.stderr.splitlines() if "failed: " in x and "batch-2" in x]
    assert len(said) == 1 and "{'kind': 'odd'}: no (line 1)" in said[0], r.stderr
    assert cli.status(job)["counts"]["queued"] == 3  # queued again, for a run once the cause is fixed


def test_a_create_answered_with_an_earlier_batchs_id_is_not_made_again_and_again(
    cli: Cli, odd: Odd, tmp_path: Path
) -> None:
    # A proxy makes each batch but answers every create with the first one's cached reply. The second chunk
    # was recorded as batch-2 (the first's), its lines never merged, queued again and created again each time.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 4))
    odd.set(same_batch_id=True)
    r = _run(cli, odd, job, "--batch-max-lines", "2", "--max-attempts", "3")
    assert r.returncode == 1, r.stderr
    assert odd.stats()["creates"] == 2, r.stderr  # the second chunk's batch, made once
    answers, errors = _export(cli, job, tmp_path)
    assert sorted(answers) == ["c-00001", "c-00002"], answers
    assert sorted(errors) == ["c-00003", "c-00004"] and {x["code"] for x in errors.values()} == {"batch_id_invalid"}
    assert "already the batch of chunk 1" in errors["c-00003"]["message"], errors


def test_a_server_without_a_files_api_stops_the_run_and_uses_up_no_attempt(cli: Cli, odd: Odd, tmp_path: Path) -> None:
    # vLLM, llama.cpp and most gateways answer POST /v1/files with 404. Before, each run exited 1 saying "batch ...
    # failed" (no batch existed) and used up an attempt of every line: after 6 runs every line had failed for good.
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 3))
    odd.set(no_files=True)
    for _ in range(7):
        r = _run(cli, odd, job)
        assert r.returncode == 5, r.stderr
        said = [x for x in r.stderr.splitlines() if "no Files API at this base URL" in x]
        assert len(said) == 1 and "/files: 404" in said[0], r.stderr
        status = cli.status(job)
        assert (status["counts"]["queued"], status["attempts"]) == (3, 0), status  # every attempt given back
    assert "creates" not in odd.stats()  # nothing got as far as a batch
    odd.set(no_files=False)
    r = _run(cli, odd, job)
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 3
    stats = odd.stats()
    assert stats["most_runs_of_a_line"] == 1, stats
