from __future__ import annotations

import math
import time
from typing import Any

import httpx
import orjson
import pytest

from runner.client import classify
from runner.config import MAX_RETRY_DELAY
from runner.errors import ApiError, BillingError, PermanentApiError, TransientApiError
from runner.states import RequestState
from runner.store.models import Claimed, UsageCounts
from runner.worker.outcomes import from_error, from_response, is_running

MAX = 3


def claimed(attempts: int = 1) -> Claimed:
    return Claimed(
        id=7, job_id="job_x", line_no=4, custom_id="c-4", body='{"model":"m","input":"hi"}', attempts=attempts
    )


USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 16,
}


def response(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text", "text": "lo"}],
            },
        ],
        "usage": USAGE,
        **extra,
    }


def stored(body: str | None) -> dict[str, Any]:
    assert body is not None
    data: dict[str, Any] = orjson.loads(body)
    return data


# --- from_response --------------------------------------------------------------------------------------


def test_completed_keeps_usage_and_adds_output_text() -> None:
    o = from_response(claimed(), response("completed"), http_status=200, request_id="req_1", max_attempts=MAX)
    assert o.request_id == 7
    assert o.to is RequestState.COMPLETED
    assert o.http_status == 200
    assert o.api_request_id == "req_1"
    assert o.error_code is None
    assert o.error_message is None
    assert o.usage == UsageCounts(11, 3, 5, 2, 16)
    body = stored(o.response_body)
    assert body["output_text"] == "Hello"
    assert body["id"] == "resp_1"
    assert body["usage"] == USAGE


def test_existing_output_text_is_kept() -> None:
    o = from_response(
        claimed(), response("completed", output_text="given"), http_status=200, request_id=None, max_attempts=MAX
    )
    assert stored(o.response_body)["output_text"] == "given"


def test_incomplete_is_a_result_with_reason() -> None:
    body = response("incomplete", incomplete_details={"reason": "max_output_tokens"})
    o = from_response(claimed(), body, http_status=200, request_id="r", max_attempts=MAX)
    assert o.to is RequestState.INCOMPLETE
    assert o.error_code == "incomplete"
    assert o.error_message == "max_output_tokens"
    assert o.usage.total_tokens == 16
    assert stored(o.response_body)["output_text"] == "Hello"


def test_cancelled_response() -> None:
    o = from_response(claimed(), response("cancelled"), http_status=200, request_id="r", max_attempts=MAX)
    assert o.to is RequestState.CANCELLED
    assert o.error_code == "cancelled"
    assert stored(o.response_body)["status"] == "cancelled"


@pytest.mark.parametrize("code", ["server_error", "rate_limit_exceeded"])
def test_failed_with_retryable_code_is_a_new_attempt(code: str) -> None:
    body = response("failed", error={"code": code, "message": "the model crashed"})
    before = time.time()
    o = from_response(claimed(attempts=1), body, http_status=200, request_id="req_f", max_attempts=MAX)
    assert o.to is RequestState.QUEUED
    assert o.clear_response_id is True
    assert o.error_code == code
    assert o.error_message == "the model crashed"
    assert o.api_request_id == "req_f"
    assert before < o.next_attempt_at <= time.time() + MAX_RETRY_DELAY + 1
    assert o.rate_limited is (code == "rate_limit_exceeded")


@pytest.mark.parametrize("code", ["server_error", "rate_limit_exceeded"])
def test_failed_with_retryable_code_fails_when_attempts_are_exhausted(code: str) -> None:
    body = response("failed", error={"code": code, "message": "the model crashed"})
    o = from_response(claimed(attempts=MAX), body, http_status=200, request_id="req_f", max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.clear_response_id is False
    assert o.error_code == code
    assert o.error_message == "the model crashed"
    assert stored(o.response_body)["error"]["code"] == code
    assert o.usage.total_tokens == 16


@pytest.mark.parametrize("code", ["invalid_prompt", "vector_store_timeout", "image_content_policy_violation"])
def test_failed_with_other_code_is_final(code: str) -> None:
    body = response("failed", error={"code": code, "message": "no"})
    o = from_response(claimed(attempts=1), body, http_status=200, request_id="r", max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.error_code == code
    assert o.error_message == "no"
    assert stored(o.response_body)["status"] == "failed"


def test_failed_without_error_object() -> None:
    body = {"id": "resp_1", "status": "failed"}
    o = from_response(claimed(), body, http_status=200, request_id=None, max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.error_code == "failed"
    assert o.error_message


def test_unknown_status_is_not_a_success() -> None:
    body = {"id": "resp_1", "status": "weird"}
    o = from_response(claimed(), body, http_status=200, request_id=None, max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.error_code == "unknown_status"
    assert "weird" in (o.error_message or "")
    assert stored(o.response_body)["status"] == "weird"


@pytest.mark.parametrize(("status", "running"), [("queued", True), ("in_progress", True), ("completed", False)])
def test_is_running(status: str, running: bool) -> None:
    assert is_running({"status": status}) is running


# --- from_error -----------------------------------------------------------------------------------------


def test_transient_error_is_requeued_while_attempts_remain() -> None:
    err = TransientApiError("busy", status=503, code="server_error", request_id="req_e", body={"error": {}})
    before = time.time()
    o = from_error(claimed(attempts=2), err, max_attempts=MAX)
    assert o.to is RequestState.QUEUED
    assert o.next_attempt_at > before
    assert o.next_attempt_at <= time.time() + MAX_RETRY_DELAY + 1
    assert o.http_status == 503
    assert o.error_code == "server_error"
    assert o.api_request_id == "req_e"
    assert o.rate_limited is False


def test_transient_error_with_retry_after_waits_at_least_that_long() -> None:
    err = TransientApiError("slow", status=429, code="rate_limit_exceeded", retry_after=20.0)
    before = time.time()
    o = from_error(claimed(attempts=1), err, max_attempts=MAX)
    assert o.to is RequestState.QUEUED
    assert o.next_attempt_at >= before + 20.0
    assert o.next_attempt_at <= time.time() + 22.0 + 1e-6
    assert o.rate_limited is True


def test_transport_error_is_requeued() -> None:
    err = TransientApiError("connection failed", code="connection_error")
    o = from_error(claimed(attempts=1), err, max_attempts=MAX)
    assert o.to is RequestState.QUEUED
    assert o.http_status is None
    assert o.error_code == "connection_error"


def test_transient_error_fails_when_attempts_are_exhausted() -> None:
    err = TransientApiError("busy", status=503, code="server_error", request_id="req_e")
    o = from_error(claimed(attempts=MAX), err, max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.error_message == f"gave up after {MAX} attempt(s): busy"
    assert o.error_code == "server_error"
    assert o.http_status == 503
    assert o.api_request_id == "req_e"


def test_permanent_error_fails_at_once_with_everything_kept() -> None:
    body = {"error": {"message": "Invalid model", "type": "invalid_request_error", "code": "model_not_found"}}
    err = PermanentApiError("Invalid model", status=404, code="model_not_found", request_id="req_p", body=body)
    o = from_error(claimed(attempts=1), err, max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.http_status == 404
    assert o.error_code == "model_not_found"
    assert o.error_message == "Invalid model"
    assert o.api_request_id == "req_p"
    assert stored(o.response_body) == body
    assert o.usage == UsageCounts()


def test_permanent_error_without_code_gets_a_generic_one() -> None:
    o = from_error(claimed(), PermanentApiError("HTTP 418", status=418), max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert o.error_code == "http_error"
    assert o.response_body is None


def test_billing_error_is_not_retried_here() -> None:
    o = from_error(claimed(), BillingError("quota", status=429, code="insufficient_quota"), max_attempts=MAX)
    assert o.to is RequestState.FAILED
    assert "gave up" not in (o.error_message or "")


def _classified(status: int, body: dict[str, Any], headers: dict[str, str]) -> ApiError:
    r = httpx.Response(status, json=body, headers=headers, request=httpx.Request("POST", "http://x.test/v1/responses"))
    with pytest.raises(ApiError) as info:
        classify(r)
    return info.value


def test_rate_limit_with_broken_retry_after_still_gets_a_finite_retry_time() -> None:
    # A 429 whose Retry-After header is "nan" must still be requeued at a real time: NaN is not storable
    # in the NOT NULL next_attempt_at column and is never "due".
    err = _classified(429, {"error": {"code": "rate_limit_exceeded", "message": "slow"}}, {"retry-after": "nan"})
    o = from_error(claimed(attempts=1), err, max_attempts=MAX)
    assert o.to is RequestState.QUEUED
    assert math.isfinite(o.next_attempt_at)
