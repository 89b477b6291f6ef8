"""Submit and convert, as a user sees them: an empty model name is a line error (or a flag error), and
convert's refusal reads as English."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e


def test_an_empty_model_is_refused_naming_the_file_line_and_field(cli: Cli) -> None:
    path = cli.db.parent / "in.jsonl"
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": {"model": "", "input": "x"}},
        {"model": " ", "input": "y"},
        {"model": "gpt-4.1-mini", "input": "z"},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    r = cli("submit", "in.jsonl")  # run in its folder: the error names it as given
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "runner: in.jsonl: 2 invalid line(s); nothing was queued",
        "in.jsonl:line 1: field body.model: must not be empty",
        "in.jsonl:line 2: field model: must not be empty",
    ]
    assert not cli.db.exists()  # nothing was changed: no store made


def test_an_empty_model_flag_is_refused(cli: Cli) -> None:
    path = cli.db.parent / "in.jsonl"
    path.write_text(json.dumps({"input": "a line that names no model"}) + "\n")

    r = cli("submit", str(path), "--model", "")
    assert r.returncode == 2
    assert r.stderr == "runner submit: argument --model: must not be empty (see `runner submit --help`)\n"
    assert not cli.db.exists()


def test_convert_names_the_part_it_cannot_convert_in_english(cli: Cli) -> None:
    path = cli.db.parent / "chat.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}))

    r = cli("convert", "chat.jsonl")
    assert r.returncode == 2
    assert r.stderr.splitlines()[1] == (
        "chat.jsonl:line 1: field body.messages[0].content[0].type: cannot convert a part of type 'input_audio'"
        " in an input message"
    )
