"""`runner submit` and `runner convert` as a user runs them: typo and Chat Completions keys, stdin, several
files, gzip, a Chat Completions file converted and submitted, a bad spec override named once."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli, read_jsonl, write_jobfile


def submit_stdin(cli: Cli, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "submit", *args],
        input=data,
        capture_output=True,
        timeout=120,
        env=cli.environ(),
        cwd=cli.db.parent,
    )


def chat_file(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(1, n + 1):
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 20}
            if i % 2:
                body["messages"].insert(0, {"role": "system", "content": "Be brief."})
            f.write(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
            f.write("\n")
    return path


def test_typo_and_chat_keys_are_named_and_lenient_queues_them_with_warnings(cli: Cli, tmp_path: Path) -> None:
    path = write_jobfile(tmp_path / "in.jsonl", 24, extra={"temprature": 0.2})
    with path.open("a") as f:
        f.write(json.dumps({"model": "gpt-test", "input": "x", "max_tokens": 9}) + "\n")
    r = cli("submit", str(path))
    assert r.returncode == 2
    err = r.stderr.splitlines()
    assert err[:3] == [
        f"runner: {path}: 25 invalid line(s); nothing was queued",
        f"{path}:line 1: field body.temprature: unknown field; did you mean 'temperature'?",
        f"{path}:line 2: field body.temprature: unknown field; did you mean 'temperature'?",
    ]
    assert err[-1] == "... and 5 more invalid line(s)"
    assert r.stdout == ""
    r = cli("submit", str(path.with_name("last.jsonl")), extra_env={})  # (no such file: exit 2, nothing else)
    assert (r.returncode, r.stderr) == (
        2,
        f"runner: {path.with_name('last.jsonl')}: no such file; nothing was queued\n",
    )

    r = cli("submit", str(path), "--lenient")
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    assert err[0] == f"warning: {path}:line 1: field body.temprature: unknown field; did you mean 'temperature'?"
    assert err[20:] == [
        f"created store {cli.db}",  # the first successful submit made the store
        f"warning: {path}: 5 more warning(s) not shown",
        f"queued 25 requests from {path}",
    ]


def chat_only(path: Path) -> Path:
    path.write_text(json.dumps({"model": "gpt-test", "input": "x", "max_tokens": 9}) + "\n")
    return path


def test_a_chat_completions_key_is_named_with_its_counterpart(cli: Cli, tmp_path: Path) -> None:
    path = chat_only(tmp_path / "one.jsonl")
    r = cli("submit", str(path))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"runner: {path}: 1 invalid line(s); nothing was queued",
        f"{path}:line 1: field max_tokens: Chat Completions field; write 'max_output_tokens' instead",
    ]


def test_a_chat_completions_file_gets_a_summary_and_its_conversion_submits(cli: Cli, tmp_path: Path) -> None:
    chat = chat_file(tmp_path / "chat.jsonl", 30)
    r = cli("submit", str(chat))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == (
        f"runner: {chat}: this looks like a Chat Completions file (messages, max_tokens); runner sends the"
        f" Responses API \N{EM DASH} convert it with `runner convert {chat} > out.jsonl`"
    )
    assert lines[1] == f"{chat}: 30 invalid line(s); nothing was queued"
    assert lines[-1] == "... and 27 more invalid line(s)"

    out = tmp_path / "out.jsonl"
    r = cli("convert", str(chat), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"converted 30 lines from {chat} to {out}\n"
    first = read_jsonl(out)[0]
    assert first["url"] == "/v1/responses"
    assert first["body"]["input"][0] == {"role": "system", "content": "Be brief."}
    r = cli("submit", str(out))
    # The failed submit above left no store behind, so this first good one makes it.
    assert (r.returncode, r.stderr) == (0, f"created store {cli.db}\nqueued 30 requests from {out}\n")


def test_convert_refuses_a_file_it_cannot_convert_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    chat = chat_file(tmp_path / "chat.jsonl", 2)
    with chat.open("a") as f:
        f.write(json.dumps({"model": "m", "messages": [], "stop": ["\n"]}) + "\n")
    out = tmp_path / "out.jsonl"
    r = cli("convert", str(chat), "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"runner: {chat}: 1 invalid line(s); nothing was written",
        f"{chat}:line 3: field stop: has no Responses API counterpart; remove it (or pass --drop-unsupported)",
    ]
    assert not out.exists()


def test_stdin_two_files_and_gzip_in_one_submit(cli: Cli, tmp_path: Path) -> None:
    a = write_jobfile(tmp_path / "a.jsonl", 4)
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(write_jobfile(tmp_path / "b.jsonl", 6, bare=True).read_bytes()))
    stdin = write_jobfile(tmp_path / "c.jsonl", 5).read_bytes()
    r = submit_stdin(cli, stdin, str(a), "-", str(gz))
    assert r.returncode == 0, r.stderr
    jobs = r.stdout.decode().split()
    listed = json.loads(cli("jobs", "--json").stdout)
    assert {j["job_id"]: j["counts"]["queued"] for j in listed} == dict(zip(jobs, [4, 5, 6], strict=True))
    assert r.stderr.decode().splitlines() == [
        f"created store {cli.db}",
        f"queued 4 requests from {a}",
        "queued 5 requests from <stdin>",
        f"queued 6 requests from {gz}",
    ]
    # The same input and options again: the same jobs, stdin included.
    again = submit_stdin(cli, stdin, str(a), "-", str(gz))
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().split() == jobs


def test_one_invalid_file_among_several_queues_none(cli: Cli, tmp_path: Path) -> None:
    good = write_jobfile(tmp_path / "good.jsonl", 3)
    bad = write_jobfile(tmp_path / "bad.jsonl", 2, extra={"top_p": 3})
    r = cli("submit", str(good), str(bad))
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == "1 of 2 input files are invalid; no file was queued"
    assert f"{bad}:line 1: field body.top_p: must be between 0 and 1 (got 3)" in r.stderr
    # Nothing changed: not even an empty store is left behind.
    assert not cli.db.exists()
    r = cli("jobs", "--json")
    assert (
        r.returncode == 2
        and r.stderr == f"runner: no store at {cli.db} (run `runner submit FILE` first, or pass --db)\n"
    )


def test_a_bad_override_is_reported_once_against_the_spec_key(cli: Cli, tmp_path: Path) -> None:
    write_jobfile(tmp_path / "in.jsonl", 20, bare=True)
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\n[overrides]\nmax_output_tokens = 0\nmax_tokens = 5\n')
    r = cli("run", str(spec))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"runner: {spec}: [overrides] max_output_tokens: must be at least 1 (got 0)",
        f"{spec}: [overrides] max_tokens: Chat Completions field; write 'max_output_tokens' instead",
    ]
