"""Lines that build on each other, through the CLI: submit refuses broken chains (exit 2, nothing stored), and a
`runner run` killed with SIGKILL mid-chain is finished by a second run with every child continuing its parent's
real, final response id (the mock server's ledger says what each create continued)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import app
from runner.config import Settings
from tests.conftest import Cli, run_args

pytestmark = pytest.mark.e2e


def line(cid: str, **body: Any) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/responses", "body": {"model": "m", **body}})


def use(cli: Cli, store_db: str) -> None:
    if "://" in store_db:  # PostgreSQL: the same commands against a fresh database
        cli.url = store_db


def test_submit_refuses_a_missing_parent_a_cycle_and_an_unstored_parent(
    cli: Cli, tmp_path: Path, store_db: str
) -> None:
    use(cli, store_db)
    src = tmp_path / "chat.jsonl"
    src.write_text(
        "\n".join(
            [
                line("a", input="hi", store=False),
                line("b", input="on", previous_response_id="@a"),  # line 2: its parent is not stored
                line("c", input="on", previous_response_id="@zz"),  # line 3: no such line
                line("d", input="on", previous_response_id="@e"),  # lines 4-5: a cycle
                line("e", input="on", previous_response_id="@d"),
                line("f", input="on", previous_response_id="@f"),  # line 6: itself
                line("g", input="on", previous_response_id="@a", conversation="conv_1"),
                line("h", input="fine"),
                line("i", input="fine too", previous_response_id="@h"),
            ]
        )
        + "\n"
    )
    r = cli("submit", "chat.jsonl")  # run in tmp_path
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    field = "field body.previous_response_id"
    assert r.stderr.splitlines() == [
        "runner: chat.jsonl: 5 invalid line(s); nothing was queued",
        f"chat.jsonl:line 2: {field}: '@a' continues line 1, whose body sets store: false; a response that is not"
        " stored cannot be continued",
        f"chat.jsonl:line 3: {field}: '@zz' names no line of this file (custom_id 'zz')",
        f"chat.jsonl:line 4: {field}: lines continue each other in a cycle: 'd' -> 'e' -> 'd'",
        f"chat.jsonl:line 6: {field}: '@f' names the line itself",
        "chat.jsonl:line 7: field body.conversation: cannot be used together with previous_response_id",
    ]
    if cli.url is None and not cli.db.exists():
        return  # not even a store
    assert anyio.run(lambda: app.jobs(db=cli.url or str(cli.db))) == []  # nothing stored


def test_a_run_killed_mid_chain_is_finished_with_every_child_continuing_its_parent(
    cli: Cli, mock_factory: Any, procs: list[subprocess.Popen[str]], tmp_path: Path, store_db: str
) -> None:
    # Only the run that is killed is a CLI process (what is promised is about it); the submit before it and
    # the run that finishes the job afterwards are the same code in-process, to keep the test short.
    use(cli, store_db)
    db = cli.url or str(cli.db)
    convs, turns = 12, 3
    src = tmp_path / "chat.jsonl"
    # Turn by turn, so the file's order is not the order the chains allow (every t2 before any t1 finishes).
    src.write_text(
        "".join(
            line(
                f"c{c}-t{t}",
                input=f"conversation {c}, turn {t}",
                **({"previous_response_id": f"@c{c}-t{t - 1}"} if t > 1 else {}),
            )
            + "\n"
            for t in range(1, turns + 1)
            for c in range(convs)
        )
    )
    job = anyio.run(lambda: app.submit(src, db=db)).job_id
    mock = mock_factory("--latency", "0.2")
    p = cli.popen("run", job, "--concurrency", "6", "--quiet", *run_args(mock), extra_env={"OPENAI_API_KEY": "k"})
    procs.append(p)
    deadline = time.monotonic() + 30
    while len(mock.stats()["continued"]) < 3:  # some children sent: the chains are under way
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before any child was sent"
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    sent = len(mock.stats()["continued"])
    assert sent < convs * (turns - 1)  # killed mid-chain: children were sent, and some were still to come

    async def finish() -> dict[str, str]:
        out = await app.run([job], Settings(db=db, base_url=mock.base_url, api_key="k"))
        assert out.result.reason == "done" and out.failed == 0
        return {r.custom_id: r.response["id"] async for r in app.results(job, db=db) if r.response}

    rid = anyio.run(finish)
    assert len(rid) == convs * turns
    ledger = {e["id"]: e for e in mock.stats()["continued"]}
    for c in range(convs):
        for t in range(2, turns + 1):
            entry = ledger[rid[f"c{c}-t{t}"]]
            assert entry["previous_response_id"] == rid[f"c{c}-t{t - 1}"], (c, t)
            assert entry["previous_status"] == "completed"
