"""The batch lane's look for a lost upload or create in the API's lists (GET /files, GET /batches), against
lists that lie: a file of the chunk's name from before the chunk existed, and lists that never end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from runner.client import ApiClient
from runner.lanes import batch
from runner.lanes.batch import BatchLane, filename_of
from runner.store import Store
from runner.store.batches import BatchRow

NOW = int(time.time())
ROW = BatchRow(7, "job_x", "m", 1, 10, "packed", None, None, None, None, 0, 0, None, None, None, NOW, NOW, None)


def _lane(api: Callable[[httpx.Request], httpx.Response]) -> tuple[BatchLane, ApiClient]:
    client = ApiClient("http://127.0.0.1:9/v1", "k", transport=httpx.MockTransport(api))
    return BatchLane(cast(Store, None), client, ["job_x"], max_lines=10, max_attempts=1), client


@pytest.mark.anyio
async def test_a_file_of_the_chunks_name_from_before_the_chunk_is_not_adopted() -> None:
    # Listed newest first: somebody's file, then one of this chunk's name made a day before the chunk was packed
    # (a store restored from a backup numbers its chunks again). Adopted, its batch would run other lines.
    files = [
        {"id": "file_new", "filename": "other.jsonl", "created_at": NOW},
        {"id": "file_old", "filename": filename_of(ROW), "created_at": NOW - 86_400},
    ]
    lane, client = _lane(lambda r: httpx.Response(200, json={"data": files, "has_more": False}))
    assert await lane._find_file(ROW) is None
    await client.aclose()


@pytest.mark.anyio
async def test_a_file_list_of_endless_new_cursors_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MAX_LIST_PAGES", 5)
    asked: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after"))
        page = [{"id": f"file_{len(asked)}", "filename": "theirs.jsonl", "created_at": NOW}]
        return httpx.Response(200, json={"data": page, "has_more": True})

    lane, client = _lane(api)
    assert await lane._find_file(ROW) is None  # uploaded again: a file costs nothing
    assert len(asked) == 5
    await client.aclose()


@pytest.mark.anyio
async def test_a_batch_list_whose_cursor_comes_back_stops_the_run_rather_than_create_again() -> None:
    page: dict[str, Any] = {"data": [{"id": "batch_a", "metadata": {}}, {"id": "batch_b"}], "has_more": True}
    asked: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after"))
        return httpx.Response(200, json=page)

    lane, client = _lane(api)
    with pytest.raises(batch._Stopped) as stop:
        await lane._find_batch(ROW)
    assert asked == [None, "batch_b"]
    assert stop.value.error is not None and "its cursor 'batch_b' came back" in stop.value.error.message
    await client.aclose()


@pytest.mark.parametrize(
    ("errors", "said"),
    [
        (None, []),
        ("the batch failed", []),
        ({"data": "not a list"}, []),
        ({"data": [1, None, "x"]}, []),
        (
            {"data": [{"code": {"nested": [1]}, "message": "m" * 10_000, "line": True}, *[{"code": "c"}] * 50]},
            ["{'nested': [1]}: " + "m" * 297 + "...", *["c: "] * 19],
        ),
        ({"data": [{"code": "token_limit_exceeded", "message": None, "line": 3}]}, ["token_limit_exceeded:  (line 3)"]),
    ],
)
def test_a_failed_batchs_errors_of_any_shape_give_at_most_20_bounded_lines(errors: Any, said: list[str]) -> None:
    assert batch._batch_errors({"status": "failed", "errors": errors}) == said
    limit = said == ["token_limit_exceeded:  (line 3)"]
    assert BatchLane._limit_code({"errors": errors}) is limit  # only a limit's code makes the run wait and retry


@pytest.mark.anyio
async def test_a_lost_create_is_found_behind_newer_batches_when_the_clocks_disagree_by_an_hour() -> None:
    # This machine's clock runs an hour ahead of the API's (or the API's behind). Listed newest first, other
    # jobs' batches made since then come before this chunk's: each looked older than the chunk, the look ended
    # at the first of them, and the batch was created (and billed) a second time.
    skewed = NOW - 3_600
    ours = {"id": "batch_ours", "created_at": skewed, "input_file_id": "file_1"}
    ours["metadata"] = {"runner_job": "job_x", "runner_chunk": "7"}
    listed = [{"id": f"batch_{i}", "created_at": skewed + 60, "metadata": {}} for i in range(3)] + [ours]
    lane, client = _lane(lambda r: httpx.Response(200, json={"data": listed, "has_more": False}))
    uploaded = BatchRow(
        7, "job_x", "m", 1, 10, "uploaded", None, "file_1", None, None, 0, 0, None, None, None, NOW, NOW, None
    )
    found = await lane._find_batch(uploaded)
    assert found is not None and found["id"] == "batch_ours"
    await client.aclose()
