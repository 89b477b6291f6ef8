"""The batch lane's walk of the queue (store/batches.py queued_page), on both backends: page after page, every
due queued line once, job by job in claim order; since migration 0014 PostgreSQL walks the claims' index."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.store import NewRequest, Store
from runner.store.batches import QueuePosition, queued_page
from runner.store.tables import requests

pytestmark = pytest.mark.anyio


async def _job(store: Store, job_id: str, scheds: list[int], conversation_on: int | None = None) -> None:
    await store.begin_job(
        job_id=job_id, name=job_id, source="x.jsonl", fingerprint=f"fp-{job_id}", background=False, staged_by="h:1"
    )
    rows = [
        NewRequest(
            i,
            f"{job_id}-{i}",
            json.dumps({"model": "m", "input": str(i)}),
            "conv" if i == conversation_on else None,
            sched=s,
        )
        for i, s in enumerate(scheds, start=1)
    ]
    await store.add_requests(job_id, rows)
    await store.publish_job(job_id, len(rows))


async def test_pages_hold_every_due_queued_line_once_job_by_job_in_claim_order(store_db: str) -> None:
    store = await Store.open(store_db)
    try:
        # Lines 3 and 5 are in line 1's prompt-cache group, 6 in line 2's: claim order 1 3 5 2 6 4 7 8.
        await _job(store, "job_b", [1, 2, 1, 4, 1, 2, 7, 8], conversation_on=8)
        await _job(store, "job_a", [1, 2, 3])

        async def settle(conn: AsyncConnection) -> None:
            for line, values in ((3, {"state": "completed"}), (7, {"next_attempt_at": 4e9})):
                await conn.execute(
                    update(requests).where(requests.c.job_id == "job_b", requests.c.line_no == line).values(**values)
                )

        await store.write(settle)
        pages: list[list[str]] = []
        after: QueuePosition = None
        while True:
            page, after = await queued_page(store, ["job_b", "job_a", "job_b"], after, 3)
            if not page:
                break
            pages.append([custom_id for _, _, custom_id, _ in page])
        # Not line 3 (finished), 7 (not due) nor 8 (shares a conversation: the sync lanes keep its order).
        assert pages == [["job_a-1", "job_a-2", "job_a-3"], ["job_b-1", "job_b-5", "job_b-2"], ["job_b-6", "job_b-4"]]
    finally:
        await store.aclose()
