"""The flex lane's pieces: a capacity 429 is typed by its code, bodies get the flex tier, waits grow."""

from __future__ import annotations

import httpx
import orjson
import pytest

from runner.client import classify
from runner.errors import CapacityError, TransientApiError
from runner.lanes.flex import CAPACITY_MAX_WAIT, FlexLane


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
