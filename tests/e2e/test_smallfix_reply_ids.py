"""A foreground reply whose `id` is not a response id (too long, empty, a number) fails its line with
`invalid_response_body`, and a line continuing it fails unsent; the run goes on. Before, the id was stored as
sent and a continuing line was sent with a 300-character `previous_response_id`."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from typing import Any

import pytest

from tests.conftest import Cli
from tests.e2e.test_untrusted_replies import Misbehaving, server
from tests.servers import misbehaving

pytestmark = pytest.mark.e2e
__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests


def _line(custom_id: str, scenario: str, **more: Any) -> str:
    body = {"model": "gpt-test", "input": f"scenario:{scenario}", **more}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}) + "\n"


def test_a_bad_foreground_id_fails_its_line_and_the_lines_that_continue_it(cli: Cli, server: Misbehaving) -> None:
    path = cli.db.parent / "in.jsonl"
    bad = list(misbehaving.ODD_IDS)
    lines = [_line(s, s) for s in bad]
    lines.append(_line("child", "ok", previous_response_id="@id_long"))
    lines.append(_line("fine", "ok"))
    path.write_text("".join(lines))
    job = cli.submit(path)

    r = cli("run", job, "--base-url", server.base_url, "--max-attempts", "1", "--quiet")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    sql = "select custom_id, state, error_code, response_body from requests"
    with closing(sqlite3.connect(cli.db)) as conn:
        got = {cid: (state, code, body) for cid, state, code, body in conn.execute(sql)}
    for s in bad:
        state, code, body = got[s]
        assert (state, code) == ("failed", "invalid_response_body"), s
        assert "id" not in json.loads(body)  # the answer is kept, its id is not
    assert got["child"][:2] == ("failed", "parent_failed")
    assert got["fine"][:2] == ("completed", None)
    assert server.stats()["posts"].get("ok") == 1  # the child was never sent


def test_a_background_create_answered_without_a_usable_id_is_not_sent_again(cli: Cli, server: Misbehaving) -> None:
    # Created, perhaps billed, and not pollable: it was sent again up to --max-attempts times (6 POSTs each),
    # none of the ids kept, and `show` called each attempt "no HTTP reply".
    path = cli.db.parent / "in.jsonl"
    bad = [f"bg_{s}" for s in misbehaving.ODD_IDS]
    lines = [_line(s, s, background=True, store=True) for s in bad]
    lines.append(_line("fine", "bg_ok", background=True, store=True))
    path.write_text("".join(lines))
    job = cli.submit(path)

    r = cli("run", job, "--base-url", server.base_url, "--quiet")  # the default 6 attempts
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert server.stats()["posts"] == {**dict.fromkeys(bad, 1), "bg_ok": 1}
    with closing(sqlite3.connect(cli.db)) as conn:
        got = dict(
            conn.execute(
                "select custom_id, state || ' ' || error_code || ' ' || http_status from requests"
                " where custom_id != 'fine'"
            )
        )
        fine = conn.execute("select state from requests where custom_id = 'fine'").fetchone()[0]
    assert got == dict.fromkeys(bad, "failed invalid_response_body 200")
    assert fine == "completed"
    shown = cli("show", job, bad[0])
    assert "without a usable response id" in shown.stdout and "not sent again" in shown.stdout, shown.stdout


def test_a_404_for_one_lines_model_on_a_foreign_server_fails_that_line_not_the_job(
    cli: Cli, server: Misbehaving
) -> None:
    # vLLM's and LiteLLM's "model does not exist" stopped the whole job (exit 5, "no Responses API at this base
    # URL") on every run: the line was requeued, claimed first again, and the job never finished.
    path = cli.db.parent / "in.jsonl"
    first = ["vllm_404", "vllm_404_flat", "litellm_404"]  # sent first, one at a time: nothing has answered yet
    names = [*first, "ok", "unknown_404", "ok"]
    path.write_text("".join(_line(f"{s}-{i}", s) for i, s in enumerate(names)))
    job = cli.submit(path)

    r = cli("run", job, "--base-url", server.base_url, "--concurrency", "1", "--quiet")
    assert r.returncode == 1, r.stderr  # finished, some lines failed: not the doomed-job stop (5)
    counts = cli.status(job)["counts"]
    assert (counts["completed"], counts["failed"], counts["queued"]) == (2, 4, 0), counts
    assert server.stats()["posts"] == {**dict.fromkeys(first, 1), "ok": 2, "unknown_404": 1}  # none sent twice
    with closing(sqlite3.connect(cli.db)) as conn:
        statuses = {
            cid: (state, status)
            for cid, state, status in conn.execute(
                "select custom_id, state, http_status from requests where state = 'failed'"
            )
        }
    assert statuses == {f"{s}-{i}": ("failed", 404) for i, s in enumerate(names) if s != "ok"}


def test_a_whole_reply_that_orjson_refuses_but_json_allows_is_kept_not_paid_again(
    cli: Cli, server: Misbehaving
) -> None:
    # A byte order mark, or a lone surrogate escape: the reply was taken for a broken one, sent again (and paid)
    # up to --max-attempts times, then the line failed with no answer kept.
    path = cli.db.parent / "in.jsonl"
    path.write_text(_line("bom", "bom_ok") + _line("surrogate", "surrogate_ok"))
    job = cli.submit(path)
    r = cli("run", job, "--base-url", server.base_url, "--quiet")
    assert r.returncode == 0, r.stderr
    assert server.stats()["posts"] == {"bom_ok": 1, "surrogate_ok": 1}
    out = cli.db.parent / "out.jsonl"
    assert cli("export", job, "-o", str(out)).returncode == 0
    texts = {
        x["custom_id"]: x["response"]["body"]["output_text"] for x in map(json.loads, out.read_text().splitlines())
    }
    assert texts == {"bom": "fine", "surrogate": "half \ufffd of an emoji"}  # what cannot be UTF-8 is replaced


def test_usage_in_chat_completions_words_counts_toward_the_budget(cli: Cli, server: Misbehaving) -> None:
    # Read as 0 tokens, such replies cost nothing to --max-cost, which never stopped the run.
    path = cli.db.parent / "in.jsonl"
    path.write_text("".join(_line(f"c{i}", "usage_chat", model="gpt-4.1-mini") for i in range(3)))
    job = cli.submit(path)
    r = cli("run", job, "--base-url", server.base_url, "--quiet", "--concurrency", "1")
    assert r.returncode == 0, r.stderr
    usage = cli.status(job)["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (120, 27, 147)
