"""One line of a Batch output or error file, as the batch lane reads it: lines a server should never send."""

from __future__ import annotations

from typing import Any

import pytest

from runner.lanes.batch import outcome_of_line
from runner.states import RequestState
from runner.store import Claimed

C = Claimed(1, "job_x", 1, "c-1", "", 1)


def _nested(levels: int) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": "server_error", "message": "deep"}}
    for _ in range(levels):
        body = {"error": body["error"], "detail": body}
    return body


@pytest.mark.parametrize("status", [True, False, -1, 0, 99, 600, 2**31, 2**63, 10**30, 200.0, "200"])
def test_a_status_code_that_is_no_http_status_makes_the_line_unreadable(status: Any) -> None:
    # Unreadable: the request goes back to the queue with the batch's leftovers, named missing_from_batch.
    line = {"custom_id": "c-1", "response": {"status_code": status, "body": {"status": "completed"}}}
    assert outcome_of_line(C, line, max_attempts=3) is None


def test_an_error_body_nested_too_deep_to_write_keeps_its_code_and_message() -> None:
    line = {"custom_id": "c-1", "response": {"status_code": 400, "body": _nested(300)}}
    o = outcome_of_line(C, line, max_attempts=3)
    assert o is not None and o.to is RequestState.FAILED, o
    assert (o.http_status, o.error_code, o.error_message) == (400, "server_error", "deep")
