"""What ends up as an id or a name in the store comes from a file or a flag: a NUL character (`\\u0000` in JSON,
`\\u0000` in TOML) cannot be kept in PostgreSQL's text, and a control character in a job name breaks the tables it
is shown in and the file names {job} makes. Refused line by line (or as the flag or key), on both backends,
nothing queued, no traceback: a NUL custom_id was the COPY's traceback on PostgreSQL, a NUL job name from a
spec the same on PostgreSQL and "embedded null byte" on SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e

REASON = r"must not hold a NUL character (\u0000): a store cannot keep it as an id"


def line(cid: str, **body: Any) -> str:
    body = {"model": "gpt-4.1-mini", "input": "hi", **body}
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": body})


def use(cli: Cli, store_db: str) -> None:
    if "://" in store_db:
        cli.url = store_db


def test_a_nul_in_an_id_is_that_lines_error_on_either_store(cli: Cli, store_db: str, tmp_path: Path) -> None:
    use(cli, store_db)
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                line("ok-1"),
                line("a\x00b"),  # json.dumps writes it as \u0000
                line("ok-2", conversation="conv\x00x"),
                line("ok-3", conversation={"id": "c\x00"}),
                line("ok-4"),
            ]
        )
        + "\n"
    )
    assert "\\u0000" in src.read_text()
    r = cli("submit", str(src))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"runner: {src}: 3 invalid line(s); nothing was queued",
        f"{src}:line 2: field custom_id: {REASON}",
        f"{src}:line 3: field body.conversation: {REASON}",
        f"{src}:line 4: field body.conversation.id: {REASON}",
    ]
    assert '"job_id"' not in cli("jobs", "--json").stdout
    # Without those lines, the same file is queued.
    src.write_text(line("ok-1") + "\n" + line("ok-4") + "\n")
    assert cli.submit(src)


def test_a_job_name_with_a_control_character_is_refused_before_anything_is_made(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(line("a") + "\n")
    r = cli("submit", str(src), "--name", "night\tly")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        "runner submit: argument --name: must not hold a control character (one at position 6)"
        " (see `runner submit --help`)"
    )
    spec = tmp_path / "n.toml"
    for name in (r"night\u0000ly", r"night\nly"):
        spec.write_text(f'[job]\nname = "{name}"\ninput = "in.jsonl"\n[defaults]\nmodel = "gpt-4.1-mini"\n')
        r = cli("run", str(spec))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith(
            f"runner: {spec}: [job] name: must not hold a control character (one at position 6)"
        ), r.stderr
    assert not cli.db.exists() and not (tmp_path / "runner.db").exists()  # no store made
