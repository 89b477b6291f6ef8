"""The lanes' pieces: a capacity 429 is typed by its code, bodies get the flex tier, waits grow; the flags."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest

from runner.cli.options import settings
from runner.cli.parser import parse_args
from runner.client import ApiClient, classify
from runner.errors import CapacityError, ConfigError, TransientApiError
from runner.lanes.batch import BatchLane, outcome_of_line
from runner.lanes.flex import CAPACITY_MAX_WAIT, FlexLane
from runner.spec import load_spec
from runner.states import RequestState
from runner.store import Claimed, Store
from runner.store.batches import BatchRow


def _reply(status: int, code: str, message: str = "m") -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "code": code}}
    return httpx.Response(status, content=orjson.dumps(body), request=httpx.Request("POST", "http://h/v1/responses"))


def test_capacity_429_is_typed_by_its_code_not_its_message() -> None:
    with pytest.raises(CapacityError):
        classify(_reply(429, "resource_unavailable", "anything at all"))
    with pytest.raises(TransientApiError) as e:
        classify(_reply(429, "rate_limit_exceeded", "Resource Unavailable"))  # the words alone do not count
    assert not isinstance(e.value, CapacityError)


def test_flex_tier_is_added_unless_the_line_has_its_own() -> None:
    lane = FlexLane(None)
    body, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert orjson.loads(body)["service_tier"] == "flex" and left is None
    body, _ = lane.prepare(2, '{"model": "m", "input": "x", "service_tier": "auto"}')
    assert orjson.loads(body)["service_tier"] == "auto"


def test_fallback_deadline_counts_from_the_first_flex_send() -> None:
    now = [100.0]
    lane = FlexLane(60.0, clock=lambda: now[0])
    _, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert left == 60.0
    now[0] = 140.0
    _, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert left == 20.0
    now[0] = 161.0
    body, left = lane.prepare(1, '{"model": "m", "input": "x"}')
    assert orjson.loads(body)["service_tier"] == "default" and left is None and lane.fallbacks == 1


def test_capacity_waits_grow_and_are_capped() -> None:
    lane = FlexLane(None)
    waits = [lane.capacity_wait(7, None) for _ in range(12)]
    assert waits[0] < waits[1] < waits[2] < waits[3]
    assert max(waits) <= CAPACITY_MAX_WAIT * 1.25
    assert lane.capacity_wait(8, 200.0) == 200.0  # a Retry-After is a minimum


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--lane", "slow"], "runner run: argument --lane: invalid choice: 'slow'"),
        (
            ["run", "--flex-fallback", "soon"],
            "runner run: argument --flex-fallback: 'soon' is not a duration (for example 90s, 15m, 1h)",
        ),
        (
            ["run", "--flex-fallback", "0s"],
            "runner run: argument --flex-fallback: must be above 0 and at most 86,400 s",
        ),
        (
            ["run", "--batch-max-lines", "60000"],
            "runner run: argument --batch-max-lines: must be a whole number from 1 to 50,000 (got 60000)",
        ),
    ],
)
def test_lane_flags_refuse_bad_values_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_lane_settings_come_from_flags_or_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = parse_args(["run", "--lane", "flex", "--flex-fallback", "15m", "--batch-max-lines", "500"])
    s = settings(ns)
    assert (s.lane, s.flex_fallback, s.batch_max_lines) == ("flex", 900.0, 500)
    monkeypatch.setenv("RUNNER_LANE", "batch")
    monkeypatch.setenv("RUNNER_FLEX_FALLBACK", "90s")
    s = settings(parse_args(["run"]))
    assert (s.lane, s.flex_fallback) == ("batch", 90.0)
    monkeypatch.setenv("RUNNER_FLEX_FALLBACK", "later")
    with pytest.raises(
        ConfigError, match=r"^invalid --flex-fallback / RUNNER_FLEX_FALLBACK: .*'later' is not a duration"
    ):
        settings(parse_args(["run"]))


def test_a_spec_names_its_lane(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"model": "m", "input": "x"}\n')
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "batch"\n')
    assert load_spec(spec).job.lane == "batch"
    spec.write_text('[job]\ninput = "in.jsonl"\nlane = "cheap"\n')
    with pytest.raises(ConfigError, match=r"lane"):
        load_spec(spec)


def _claimed(attempts: int = 1) -> Claimed:
    return Claimed(7, "job", 3, "c-3", "", attempts)


def test_a_batch_answer_is_recorded_as_the_sync_lane_records_it() -> None:
    body = {"id": "resp_1", "status": "completed", "output": [], "usage": {"input_tokens": 3, "output_tokens": 2}}
    line = {"custom_id": "c-3", "response": {"status_code": 200, "request_id": "req_1", "body": body}, "error": None}
    o = outcome_of_line(_claimed(), line, max_attempts=3)
    assert o is not None and o.to is RequestState.COMPLETED
    assert (o.http_status, o.api_request_id, o.usage.input_tokens, o.usage.output_tokens) == (200, "req_1", 3, 2)


def test_batch_failures_keep_status_code_and_message() -> None:
    bad = {"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error", "code": "bad"}}
    line = {"custom_id": "c-3", "response": {"status_code": 400, "request_id": "req_2", "body": bad}, "error": None}
    o = outcome_of_line(_claimed(), line, max_attempts=3)
    assert o is not None and (o.to, o.http_status, o.error_code) == (RequestState.FAILED, 400, "bad")
    assert o.error_message == "Invalid value for 'temperature'."
    # A 5xx is worth another attempt while attempts are left, as on the sync lane.
    line["response"] = {"status_code": 500, "body": {"error": {"message": "oops", "code": "server_error"}}}
    o = outcome_of_line(_claimed(), line, max_attempts=3)
    assert o is not None and o.to is RequestState.QUEUED and o.error_code == "server_error"
    o = outcome_of_line(_claimed(3), line, max_attempts=3)
    assert o is not None and o.to is RequestState.FAILED
    # A quota error inside a batch judges that line, not the run.
    line["response"] = {"status_code": 429, "body": {"error": {"message": "quota", "code": "insufficient_quota"}}}
    o = outcome_of_line(_claimed(), line, max_attempts=3)
    assert o is not None and (o.to, o.error_code) == (RequestState.FAILED, "insufficient_quota")


def test_expired_lines_go_back_to_the_queue_with_the_attempt_counted() -> None:
    line = {"custom_id": "c-3", "response": None, "error": {"code": "batch_expired", "message": "too late"}}
    o = outcome_of_line(_claimed(9), line, max_attempts=3)  # even out of attempts: it never ran
    assert o is not None and (o.to, o.error_code, o.refund_attempt) == (RequestState.QUEUED, "batch_expired", False)


@pytest.mark.parametrize(
    "line",
    [
        None,
        [],
        {"custom_id": "c-3"},
        {"custom_id": "c-3", "response": {"status_code": "200", "body": {}}},
        {"custom_id": "c-3", "response": "x", "error": "y"},
    ],
)
def test_an_unreadable_line_settles_nothing(line: object) -> None:
    # Its request stays with the batch's leftovers and goes back to the queue; the run goes on.
    assert outcome_of_line(_claimed(), line, max_attempts=3) is None


def test_a_2xx_line_whose_body_is_not_an_object_is_retried() -> None:
    line = {"custom_id": "c-3", "response": {"status_code": 200, "body": "not an object"}}
    o = outcome_of_line(_claimed(), line, max_attempts=3)
    assert o is not None and (o.to, o.error_code) == (RequestState.QUEUED, "invalid_response_body")


def test_flex_forgets_a_request_once_it_is_answered() -> None:
    lane = FlexLane(60.0)
    lane.prepare(1, '{"model": "m", "input": "x"}')
    lane.capacity_wait(1, None)
    lane.forget(1)
    assert not lane._since and not lane._capacity_hits  # a run of millions must not keep one entry each


def test_detach_needs_the_batch_lane(tmp_path: Path) -> None:
    from runner.cli.run import _run

    ns = parse_args(["run", "--detach", "--db", str(tmp_path / "r.db")])
    with pytest.raises(ConfigError, match=r"^--detach needs --lane batch"):
        _run(ns)


@pytest.mark.anyio
async def test_a_lost_create_is_found_on_a_later_page_of_the_batch_list() -> None:
    now = int(time.time())
    others = [{"id": f"batch_{i:03d}", "created_at": now, "metadata": {"runner_job": "job_x"}} for i in range(250)]
    ours = {"id": "batch_ours", "created_at": now, "input_file_id": "file_1"}
    ours["metadata"] = {"runner_job": "job_x", "runner_chunk": "7"}
    listed = [*others, ours]  # newest first: ours is on the third page
    cursors: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        cursors.append(after)
        start = 0 if after is None else [b["id"] for b in listed].index(after) + 1
        page = listed[start : start + int(request.url.params["limit"])]
        return httpx.Response(200, json={"data": page, "has_more": start + len(page) < len(listed)})

    client = ApiClient("http://127.0.0.1:9/v1", "k", transport=httpx.MockTransport(api))
    lane = BatchLane(cast(Store, None), client, ["job_x"], max_lines=10, max_attempts=1)
    row = BatchRow(
        7, "job_x", "m", 1, 10, "uploaded", None, "file_1", None, None, 0, 0, None, None, None, now, now, None
    )
    found = await lane._find_batch(row)
    assert found is not None and found["id"] == "batch_ours"
    assert cursors == [None, "batch_099", "batch_199"]
    await client.aclose()
