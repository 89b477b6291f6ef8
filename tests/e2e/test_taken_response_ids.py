"""A response id names one response: background lines that a caching proxy answers with the id another line of
the store holds fail (`response_id_taken`), are never created again, and never export the other line's answer.
Before, three different questions were all exported with the first one's answer, exit 0, nothing said."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Cli, read_jsonl
from tests.e2e.test_untrusted_replies import Misbehaving, server

pytestmark = pytest.mark.e2e
__all__ = ["server"]  # the fixture, shared with the untrusted-replies tests


def _line(custom_id: str, scenario: str, *, background: bool = False) -> str:
    body: dict[str, Any] = {"model": "gpt-test", "input": f"{custom_id}? scenario:{scenario}"}
    if background:
        body["background"] = True
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}) + "\n"


def test_lines_given_another_lines_response_id_fail_and_are_not_sent_again(
    cli: Cli, server: Misbehaving, store_db: str
) -> None:
    if "://" in store_db:
        cli.url = store_db
    path = cli.db.parent / "in.jsonl"
    path.write_text("".join([_line(f"q{i}", "bg_dupid", background=True) for i in range(3)] + [_line("ok", "ok")]))
    job = cli.submit(path)

    r = cli("run", job, "--base-url", server.base_url, "--quiet")
    assert r.returncode == 1, r.stderr  # some requests failed
    assert "Traceback" not in r.stderr
    assert r.stderr.count("is another line's") == 2
    counts = cli.status(job)["counts"]
    assert (counts["completed"], counts["failed"], counts["queued"]) == (2, 2, 0)
    assert server.stats()["posts"] == {"bg_dupid": 3, "ok": 1}

    r = cli("export", job, "-o", "out.jsonl", "--errors", "errors.jsonl")
    assert r.returncode == 0, r.stderr
    ids = [x["response"]["body"]["id"] for x in read_jsonl(cli.db.parent / "out.jsonl") if x["response"]]
    assert ids.count("resp_bg_dupid_0") == 1  # one line has that response; no other is given it
    errors = read_jsonl(cli.db.parent / "errors.jsonl")
    assert len(errors) == 2
    for e in errors:
        assert e["error"]["code"] == "response_id_taken"
        assert "'resp_bg_dupid_0'" in e["error"]["message"]
        assert "of job" in e["error"]["message"]  # names the line that holds it

    again = cli("run", job, "--base-url", server.base_url, "--quiet")
    assert again.returncode == 1, again.stderr  # the job still has its failed lines
    assert server.stats()["posts"] == {"bg_dupid": 3, "ok": 1}  # never created again (it may be billed)
