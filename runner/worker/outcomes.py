"""Turning what the API said about one attempt into the store's `Outcome` for that request.

HTTP errors arrive here already classified by `client.classify()`. The one other error table in the
runner is `RETRYABLE_RESPONSE_ERRORS`: a Response object (a background poll, or a foreground reply) can
end `failed` inside a 200 reply, which the client rightly passes on as a reply; whether that failure is
worth another attempt is decided here, from the error code in the body.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from runner.errors import ApiError, TransientApiError
from runner.outputcheck import Wanted, check, wanted
from runner.reply import (
    MAX_CODE_CHARS,
    MAX_ID_CHARS,
    MAX_MESSAGE_CHARS,
    USAGE_OUT_OF_BOUNDS,
    output_text,
    plain_usage,
    read_error_text,
    read_id,
    read_usage,
    with_output_text,
)
from runner.retry import backoff_delay, should_retry
from runner.states import RequestState
from runner.store import Store
from runner.store.models import Claimed, Outcome
from runner.store.outputs import CheckRecord, repairs_done

# Response.status -> request state, for the statuses that end a response.
_FINAL = {
    "completed": RequestState.COMPLETED,
    "incomplete": RequestState.INCOMPLETE,
    "failed": RequestState.FAILED,
    "cancelled": RequestState.CANCELLED,
}
RUNNING_STATUSES = frozenset({"queued", "in_progress"})
# A background response that ends failed with these codes is worth a new attempt; other codes are final.
RETRYABLE_RESPONSE_ERRORS = frozenset({"server_error", "rate_limit_exceeded"})


def _dump(body: Any) -> str | None:
    """A parsed reply as JSON text to store; None for one orjson parses but will not write (over 254 levels)."""
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        return None


def has_unknown_status(body: dict[str, Any]) -> bool:
    """Whether a Response object's status is a string the runner does not know (`pending`, `requires_action`):
    neither running nor final, as far as the runner can tell."""
    status = body.get("status")
    return isinstance(status, str) and status not in RUNNING_STATUSES and status not in _FINAL


def is_running(body: dict[str, Any]) -> bool:
    """Whether a Response object is still being worked on (background mode)."""
    status = body.get("status")
    return isinstance(status, str) and status in RUNNING_STATUSES  # a list or object would not even hash


def from_response(
    c: Claimed,
    body: dict[str, Any],
    *,
    http_status: int,
    request_id: str | None,
    max_attempts: int,
    sent_at: float | None = None,
) -> Outcome:
    """The outcome of a Response object in a final state (a foreground reply, or a finished poll).

    A response that failed with a retryable code goes back to the queue while `c` has attempts left.
    """
    o = final_outcome(c.id, body, http_status=http_status, request_id=request_id, sent_at=sent_at)
    if (
        o.to is RequestState.FAILED
        and o.error_code in RETRYABLE_RESPONSE_ERRORS
        and should_retry(c.attempts, max_attempts)
    ):
        return Outcome(
            c.id,
            RequestState.QUEUED,
            http_status=http_status,
            api_request_id=request_id,
            error_code=o.error_code,
            error_message=o.error_message,
            next_attempt_at=time.time() + backoff_delay(c.attempts),
            clear_response_id=True,
            rate_limited=o.error_code == "rate_limit_exceeded",
            sent_at=sent_at,
        )
    return o


def final_outcome(
    row_id: int, body: dict[str, Any], *, http_status: int, request_id: str | None, sent_at: float | None = None
) -> Outcome:
    """The outcome of the request `row_id` whose Response object is in a final state, as that state says
    (no new attempt: `from_response` decides those; `runner cancel` records what its cancels return)."""
    rid = body.get("id")
    if rid is not None and read_id(rid) is None:
        return _bad_id(row_id, body, http_status=http_status, request_id=request_id, sent_at=sent_at)
    status = body.get("status")
    if status == "completed":
        # The common case, first and short (scenario 2 of `make bench` runs it for every request): usage
        # read without read_usage's bookkeeping, which only a malformed count needs.
        plain = plain_usage(body)
        if plain is not None:
            stored = _dump(with_output_text(body))
            if stored is not None:
                return Outcome(
                    row_id,
                    RequestState.COMPLETED,
                    http_status=http_status,
                    api_request_id=request_id,
                    response_body=stored,
                    usage=plain,
                    sent_at=sent_at,
                )
    to = _FINAL.get(status) if isinstance(status, str) else None
    if to is None:
        # A reply without a recognisable status: keep it, but do not call it a success.
        to = RequestState.FAILED
        code: str | None = "unknown_status"
        message: str | None = f"the API returned a response with status {read_error_text(repr(status), 80)}"
    else:
        code = message = None
    if to is RequestState.FAILED and code is None:
        err_obj = body.get("error")
        err: dict[str, Any] = err_obj if isinstance(err_obj, dict) else {}
        code = read_error_text(err.get("code") or "failed", MAX_CODE_CHARS)
        message = read_error_text(err.get("message") or "the response failed", MAX_MESSAGE_CHARS)
    elif to is RequestState.INCOMPLETE:
        details_obj = body.get("incomplete_details")
        details: dict[str, Any] = details_obj if isinstance(details_obj, dict) else {}
        code = "incomplete"
        message = read_error_text(details.get("reason") or "incomplete", MAX_MESSAGE_CHARS)
    elif to is RequestState.CANCELLED:
        code, message = "cancelled", "the response was cancelled"
    stored = _dump(with_output_text(body))
    if stored is None:
        return Outcome(
            row_id,
            RequestState.FAILED,
            http_status=http_status,
            api_request_id=request_id,
            error_code="invalid_response_body",
            error_message="the reply is valid JSON but cannot be stored (nested too deeply)",
            sent_at=sent_at,
        )
    usage = read_usage(body)
    if usage.problem is not None:
        # The answer is kept (it was paid for); the absurd counts are stored as 0 and the row says why.
        if code is None:
            code, message = USAGE_OUT_OF_BOUNDS, usage.problem
        else:
            message = f"{message}; {usage.problem}"
    return Outcome(
        row_id,
        to,
        http_status=http_status,
        api_request_id=request_id,
        response_body=stored,
        error_code=code,
        error_message=message,
        usage=usage.usage,
        sent_at=sent_at,
    )


def _bad_id(
    row_id: int, body: dict[str, Any], *, http_status: int, request_id: str | None, sent_at: float | None
) -> Outcome:
    """A final reply whose `id` is not one (a number, "", a megabyte of text): the line fails, named.

    Only background replies had their id bounded; a foreground one was stored as sent, and a line continuing it
    was sent with it as `previous_response_id`. The answer is kept without the id, and its usage (it was paid).
    """
    stored = _dump(with_output_text({k: v for k, v in body.items() if k != "id"}))
    return Outcome(
        row_id,
        RequestState.FAILED,
        http_status=http_status,
        api_request_id=request_id,
        response_body=stored,
        error_code="invalid_response_body",
        error_message=f"the reply's id is not a string of 1 to {MAX_ID_CHARS} characters",
        usage=read_usage(body).usage,
        sent_at=sent_at,
    )


def again_later(
    c: Claimed, error: ApiError, wait: float, *, refund: bool = False, sent_at: float | None = None
) -> Outcome:
    """`c` back to the queue for `wait` seconds after `error`, its attempt given back when `refund` (what failed
    was not the line: no flex capacity, a failed connection, a server down)."""
    return Outcome(
        c.id,
        RequestState.QUEUED,
        http_status=error.status,
        api_request_id=error.request_id,
        error_code=error.code,
        error_message=error.message,
        next_attempt_at=time.time() + wait,
        rate_limited=error.status == 429 and not refund,
        refund_attempt=refund,
        sent_at=sent_at,
    )


def from_error(c: Claimed, error: ApiError, *, max_attempts: int, sent_at: float | None = None) -> Outcome:
    """The outcome of an attempt that got no result: a retry later, or a failure."""
    rate_limited = error.status == 429
    if isinstance(error, TransientApiError) and should_retry(c.attempts, max_attempts):
        return again_later(c, error, backoff_delay(c.attempts, error), sent_at=sent_at)
    message = error.message
    if isinstance(error, TransientApiError):
        message = f"gave up after {c.attempts} attempt(s): {message}"
    return Outcome(
        c.id,
        RequestState.FAILED,
        http_status=error.status,
        api_request_id=error.request_id,
        response_body=_dump(error.body) if error.body is not None else None,
        error_code=error.code or ("http_error" if error.status else "error"),
        error_message=message,
        rate_limited=rate_limited,
        sent_at=sent_at,
    )


class Checker:
    """Checks the completed answers of lines that asked for JSON (`text.format` json_schema / json_object).

    With `repair` > 0, an answer that fails its check goes back to the queue as a new attempt, up to
    `repair` times per request (counted in the store, so a restart does not reset them); after that it
    stays completed with its verdict. Lines that ask for plain text cost one substring test.
    """

    def __init__(self, store: Store, repair: int = 0) -> None:
        self._store = store
        self.repair = repair

    @staticmethod
    def wants(c: Claimed, o: Outcome) -> Wanted | None:
        """What `o`'s answer must be checked against; None (the usual case) when there is nothing to review."""
        return wanted(c.body) if o.to is RequestState.COMPLETED else None

    async def review(
        self, c: Claimed, o: Outcome, body: dict[str, Any], want: Wanted | None = None
    ) -> tuple[Outcome, CheckRecord | None]:
        """The outcome to write for `c` (maybe a repair instead of `o`) and the check to write with it;
        `want` is `wants(c, o)` when the caller has it already."""
        if o.to is not RequestState.COMPLETED:
            return o, None
        if want is None:
            want = wanted(c.body)
        if want is None:
            return o, None
        result = check(output_text(body), want)
        record = CheckRecord(c.id, c.job_id, c.line_no, result.status.value, result.detail, result.parsed)
        if result.ok or self.repair <= 0:
            return o, record
        done = await repairs_done(self._store, c.id)
        if done >= self.repair:
            return o, record
        model = body.get("model")
        rejected = CheckRecord(
            c.id,
            c.job_id,
            c.line_no,
            result.status.value,
            result.detail,
            result.parsed,
            rejected=o.usage,
            model=model if isinstance(model, str) else None,
        )
        again = Outcome(
            c.id,
            RequestState.QUEUED,
            http_status=o.http_status,
            api_request_id=o.api_request_id,
            error_code=result.status.value,
            error_message=f"{result.detail}; asked again (repair {done + 1} of {self.repair})",
            clear_response_id=True,  # a background answer is asked again as a new response
            sent_at=o.sent_at,
        )
        return again, rejected
