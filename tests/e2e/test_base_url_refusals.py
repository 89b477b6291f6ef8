"""A base URL the run cannot use is refused in one line before any line says that work starts, and the
refusal never shows a password the URL holds (the scheme's refusal echoed the whole URL back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, MockServer, write_jobfile

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        (
            "ftp://alice:pa55word@127.0.0.1/v1",
            "base URL must start with http:// or https:// (got 'ftp://127.0.0.1/v1')",
        ),
        ("sftp://alice:pa55word@127.0.0.1/v1", "base URL must start with http:// or https://"),
        # httpx refused it only at the first request: a traceback out of every sender
        ("http://alice:pa55word@127.0.0.1/v\x01", "base URL has a control character in it: a URL cannot hold it"),
        ("http://alice:pa55word@127.0.0.1:99999/v1", "base URL is not a valid URL: Port out of range"),
        ("http://127.0.0.1:8/v1?key=pa55word", "base URL must not have a query"),
        ("http://alice:pa55word@127.0.0.1:8/v1", "base URL holds a user name or password"),  # beside the key's header
    ],
)
def test_a_plain_run_refuses_a_bad_base_url_before_naming_its_jobs(
    cli: Cli, tmp_path: Path, base_url: str, said: str
) -> None:
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 2))

    r = cli("run", "--base-url", base_url, extra_env={"OPENAI_API_KEY": "sk-test-key-0123"})

    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"runner: {said}"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr  # no "starting job_..." line before the refusal
    assert "pa55word" not in r.stdout + r.stderr
    assert cli.status(job)["counts"]["queued"] == 2


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"OPENAI_BASE_URL": "ftp://127.0.0.1/v1"}, "base URL must start with http:// or https://"),
        ({}, "OPENAI_API_KEY is not set"),  # api.openai.com, the default, and no key
    ],
)
def test_a_refused_spec_run_creates_no_store_and_queues_nothing(
    cli: Cli, tmp_path: Path, extra: dict[str, str], said: str
) -> None:
    write_jobfile(tmp_path / "in.jsonl", 2)
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\nname = "n"\ninput = "in.jsonl"\n')

    r = cli("run", str(spec), extra_env=extra)

    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"runner: {said}"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert not cli.db.exists()


def test_white_space_around_the_base_url_and_the_key_is_dropped(cli: Cli, tmp_path: Path, mock_factory: object) -> None:
    # As a variable read from a file gives them (a Kubernetes secret, `$(cat url.txt)` kept by a wrapper):
    # the line end made every request a traceback.
    mock: MockServer = mock_factory("--api-key", "sk-test-key-0123")  # type: ignore[operator]
    job = cli.submit(write_jobfile(tmp_path / "in.jsonl", 2))
    env = {"OPENAI_BASE_URL": f" {mock.base_url}\n", "OPENAI_API_KEY": "sk-test-key-0123\r\n"}
    r = cli("run", "--quiet", extra_env=env)
    assert r.returncode == 0, r.stderr
    assert cli.status(job)["counts"]["completed"] == 2
