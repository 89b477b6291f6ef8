"""Cache scheduling in the store: the keys written at submit and the claim order, on both backends.

A group is the lines of one model whose prompts share their first 4,096 characters (runner/cachekeys.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import app
from runner.cachekeys import cache_key
from runner.store import Store

pytestmark = pytest.mark.anyio

# Three long, different instructions: three groups.
TEMPLATES = [f"Template {t}: " + f"rule {t} of the house. " * 200 for t in "ABC"]


def line(i: int, template: int, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4.1-mini", "instructions": TEMPLATES[template], "input": f"item {i}", **extra},
    }


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


async def claim_all(db: str, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Claim one request at a time until none is left, finishing each: (custom_id, body as stored)."""
    store = await Store.open(db)
    order: list[tuple[str, dict[str, Any]]] = []
    try:
        while claimed := await store.claim("me", [job_id], 1, 60.0):
            (c,) = claimed
            order.append((c.custom_id, json.loads(c.body)))
            await store.write(
                lambda conn, i=c.id: conn.exec_driver_sql(
                    f"UPDATE requests SET state = 'completed', lease_owner = NULL WHERE id = {int(i)}"
                )
            )
    finally:
        await store.aclose()
    return order


async def test_a_groups_lines_are_claimed_together_and_share_one_key(store_db: str, tmp_path: Path) -> None:
    # Lines interleave the templates A B C A B C ...; c5 brings its own key, c7 has no group (short).
    lines = [line(i, (i - 1) % 3) for i in range(1, 10)]
    lines[4]["body"]["prompt_cache_key"] = "mine"
    lines[6]["body"]["instructions"] = "short"
    job = await app.submit(write(tmp_path / "in.jsonl", lines), db=store_db)

    order = await claim_all(store_db, job.job_id)
    # Groups A (c1, c4; c7 is short: its own place), B (c2, c5, c8), C (c3, c6, c9), each together; the first
    # line of each group goes one group early, so it is cached by the time the rest of its group is sent.
    assert [cid for cid, _ in order] == ["c1", "c2", "c4", "c3", "c5", "c8", "c6", "c9", "c7"]
    keys = {cid: body.get("prompt_cache_key") for cid, body in order}
    assert keys["c5"] == "mine"  # a line's own key is kept
    assert keys["c7"] is None  # too short to be cached: no key
    assert keys["c1"] == keys["c4"] == cache_key(lines[0]["body"])
    assert keys["c2"] == keys["c8"] == cache_key(lines[1]["body"]) != keys["c1"]
    assert keys["c3"] == keys["c6"] == keys["c9"] not in (keys["c1"], keys["c2"])


async def test_no_cache_keys_claims_in_file_order_and_adds_no_key(store_db: str, tmp_path: Path) -> None:
    lines = [line(i, (i - 1) % 3) for i in range(1, 10)]
    job = await app.submit(write(tmp_path / "in.jsonl", lines), db=store_db, cache_keys=False)
    order = await claim_all(store_db, job.job_id)
    assert [cid for cid, _ in order] == [f"c{i}" for i in range(1, 10)]
    assert all("prompt_cache_key" not in body for _, body in order)
    # Another fingerprint: the same file with keys is another job.
    keyed = await app.submit(tmp_path / "in.jsonl", db=store_db)
    assert keyed.job_id != job.job_id and not keyed.existing


async def test_conversation_order_holds_across_groups(store_db: str, tmp_path: Path) -> None:
    # Lines 1 and 4 share a conversation; line 4's group (A, first line 1) would put it before line 2...
    lines = [line(i, (i - 1) % 3) for i in range(1, 7)]
    for i in (1, 4):
        lines[i - 1]["body"]["conversation"] = "conv_1"
    job = await app.submit(write(tmp_path / "in.jsonl", lines), db=store_db)
    store = await Store.open(store_db)
    try:
        first = await store.claim("me", [job.job_id], 100, 60.0)
    finally:
        await store.aclose()
    # ... but while line 1 is in flight, line 4 waits: every other line is claimed, line 4 is not.
    assert sorted(c.custom_id for c in first) == ["c1", "c2", "c3", "c5", "c6"]
    conv = [json.loads(c.body) for c in first if c.custom_id == "c1"]
    assert "prompt_cache_key" not in conv[0]  # continuing server-side state: no group, no key


async def test_the_jobs_of_one_run_go_one_after_the_other(store_db: str, tmp_path: Path) -> None:
    first = await app.submit(write(tmp_path / "a.jsonl", [line(i, (i - 1) % 3) for i in range(1, 7)]), db=store_db)
    second = await app.submit(write(tmp_path / "b.jsonl", [line(i, i % 2) for i in range(1, 5)]), db=store_db)
    store = await Store.open(store_db)
    try:
        head = await store.claim("me", [first.job_id, second.job_id], 4, 60.0)
        rest = await store.claim("me", [first.job_id, second.job_id], 10, 60.0)
    finally:
        await store.aclose()
    # The first job's c1, c2 (B's first line, one group early), c4, c3: the second job waits for the first.
    assert [(c.job_id, c.custom_id) for c in head] == [(first.job_id, x) for x in ("c1", "c2", "c4", "c3")]
    assert [c.job_id for c in rest].count(first.job_id) == 2 and len(rest) == 6


class Recorder:
    """Answers every create at once, keeping the bodies sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.sent.append(body)
        usage = {"input_tokens": 10, "output_tokens": 1, "total_tokens": 11}
        reply = {"id": f"resp_{len(self.sent)}", "object": "response", "status": "completed", "model": body["model"]}
        return httpx.Response(200, json={**reply, "output": [], "usage": usage})


@pytest.mark.parametrize("setting", ["", "cache_keys = false\n"])
async def test_a_specs_job_table_turns_cache_keys_off(store_db: str, tmp_path: Path, setting: str) -> None:
    write(tmp_path / "in.jsonl", [line(i, (i - 1) % 3) for i in range(1, 7)])
    spec = tmp_path / "nightly.toml"
    spec.write_text(f'[job]\ninput = "in.jsonl"\n{setting}')
    api = Recorder()
    overrides = {"base_url": "http://api.test/v1", "api_key": "k", "concurrency": 1}
    await app.run_spec(spec, db=store_db, transport=httpx.MockTransport(api), overrides=overrides)
    sent = [(b["input"], b.get("prompt_cache_key")) for b in api.sent]
    if setting:  # file order, no key
        assert sent == [(f"item {i}", None) for i in range(1, 7)]
    else:  # grouped, one key per group
        assert [x for x, _ in sent] == [f"item {i}" for i in (1, 2, 4, 3, 5, 6)]
        assert len({k for _, k in sent}) == 3 and all(k and k.startswith("runner-") for _, k in sent)
