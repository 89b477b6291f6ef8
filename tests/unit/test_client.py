from __future__ import annotations

import email.utils
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import httpx
import orjson
import pytest
from pydantic import SecretStr

from runner.client import (
    CONVERSATION_LOCKED_WAIT,
    ApiClient,
    ApiReply,
    classify,
    classify_exception,
    parse_retry_after,
)
from runner.config import MAX_RETRY_AFTER, AuthStyle
from runner.errors import (
    ApiError,
    BillingError,
    ConfigError,
    DoomedJobError,
    PermanentApiError,
    TimeoutApiError,
    TransientApiError,
    UnreachableError,
)

BASE = "https://api.example.test/v1"
KEY = "sk-SECRET-123"
NOW = 1_700_000_000.0


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# --- parse_retry_after ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="absent"),
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="ms"),
        pytest.param({"retry-after-ms": "250", "retry-after": "10"}, 0.25, id="ms-wins-over-seconds"),
        pytest.param({"retry-after-ms": "abc", "retry-after": "3"}, 3.0, id="garbage-ms-falls-back"),
        pytest.param({"retry-after-ms": "-5", "retry-after": "3"}, 3.0, id="negative-ms-falls-back"),
        pytest.param({"retry-after-ms": "nan"}, None, id="nan-ms-ignored"),
        pytest.param({"retry-after": "7"}, 7.0, id="integer-seconds"),
        pytest.param({"retry-after": "2.5"}, 2.5, id="float-seconds"),
        pytest.param({"retry-after": "0"}, 0.0, id="zero"),
        pytest.param({"retry-after": "-3"}, 0.0, id="negative-is-zero"),
        pytest.param({"retry-after": http_date(NOW + 30)}, 30.0, id="http-date-future"),
        pytest.param({"retry-after": http_date(NOW - 30)}, 0.0, id="http-date-past"),
        pytest.param({"retry-after": "soon"}, None, id="garbage-word"),
        pytest.param({"retry-after": ""}, None, id="empty"),
        pytest.param({"retry-after": "Someday, 99 Foo 20xx"}, None, id="garbage-date"),
        pytest.param({"retry-after": "86400"}, MAX_RETRY_AFTER, id="capped-seconds"),
        pytest.param({"retry-after-ms": "999999999"}, MAX_RETRY_AFTER, id="capped-ms"),
        pytest.param({"retry-after": http_date(NOW + 86400)}, MAX_RETRY_AFTER, id="capped-date"),
        pytest.param({"retry-after": "inf"}, MAX_RETRY_AFTER, id="infinity-capped"),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(httpx.Headers(headers), now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_parse_retry_after_not_a_number_is_garbage() -> None:
    # float("nan") parses; a NaN wait must not escape (it would become a NaN next_attempt_at).
    got = parse_retry_after(httpx.Headers({"retry-after": "nan"}), now=NOW)
    assert got is None or (math.isfinite(got) and 0.0 <= got <= MAX_RETRY_AFTER)


# --- classify -------------------------------------------------------------------------------------------


def reply(status: int, body: Any = None, *, content: bytes | None = None, **headers: str) -> httpx.Response:
    h = {k.replace("_", "-"): v for k, v in headers.items()}
    req = httpx.Request("POST", f"{BASE}/responses")
    if content is not None:
        return httpx.Response(status, content=content, headers=h, request=req)
    if body is None:
        return httpx.Response(status, headers=h, request=req)
    return httpx.Response(status, json=body, headers=h, request=req)


def err_body(code: str | None, message: str = "something went wrong", typ: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": typ or "invalid_request_error", "param": None, "code": code}}


def raised(response: httpx.Response) -> ApiError:
    with pytest.raises(ApiError) as info:
        classify(response)
    return info.value


def test_classify_200_json_is_a_reply_with_request_id_and_rate_limits() -> None:
    body = {"id": "resp_1", "object": "response", "status": "completed", "output": []}
    r = reply(
        200,
        body,
        x_request_id="req_abc",
        x_ratelimit_limit_requests="500",
        x_ratelimit_remaining_requests="499",
        x_ratelimit_reset_tokens="6ms",
        x_unrelated="nope",
    )
    out = classify(r)
    assert isinstance(out, ApiReply)
    assert out.status == 200
    assert out.body == body
    assert orjson.loads(out.raw) == body
    assert out.request_id == "req_abc"
    assert dict(out.rate_limits) == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-tokens": "6ms",
    }


def test_classify_200_without_request_id() -> None:
    out = classify(reply(200, {"id": "resp_1", "status": "completed"}))
    assert out.request_id is None
    assert dict(out.rate_limits) == {}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"<html>gateway</html>", id="html"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2]", id="json-array"),
        pytest.param(b'"just a string"', id="json-string"),
    ],
)
def test_classify_200_not_a_json_object_is_transient(content: bytes) -> None:
    e = raised(reply(200, content=content, x_request_id="req_x"))
    assert type(e) is TransientApiError
    assert e.status == 200
    assert e.request_id == "req_x"


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_classify_retryable_statuses_are_transient(status: int) -> None:
    e = raised(reply(status, err_body("server_error", "try again"), x_request_id="req_t", retry_after="4"))
    assert type(e) is TransientApiError
    assert e.status == status
    assert e.code == "server_error"
    assert e.message == "try again"
    assert e.request_id == "req_t"
    assert e.retry_after == 4.0


def test_classify_500_with_html_body_is_transient_with_http_message() -> None:
    e = raised(reply(502, content=b"<html>Bad Gateway</html>"))
    assert type(e) is TransientApiError
    assert e.status == 502
    assert e.message == "HTTP 502 from POST https://api.example.test/v1/responses: <html>Bad Gateway</html>"
    assert e.retry_after is None


@pytest.mark.parametrize("code", ["rate_limit_exceeded", "slow_down"])
def test_classify_429_rate_limit_is_transient_with_retry_after(code: str) -> None:
    e = raised(reply(429, err_body(code, "slow down", "requests"), retry_after_ms="1200", retry_after="9"))
    assert type(e) is TransientApiError
    assert e.status == 429
    assert e.code == code
    assert e.retry_after == pytest.approx(1.2)


def test_classify_429_without_headers_has_no_retry_after() -> None:
    e = raised(reply(429, err_body("rate_limit_exceeded")))
    assert type(e) is TransientApiError
    assert e.retry_after is None


@pytest.mark.parametrize(
    "code",
    [
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    ],
)
def test_classify_429_billing_codes_are_billing_errors(code: str) -> None:
    e = raised(reply(429, err_body(code, "You exceeded your current quota"), x_request_id="req_b", retry_after="1"))
    assert type(e) is BillingError
    assert e.status == 429
    assert e.code == code
    assert e.request_id == "req_b"


def test_classify_429_billing_type_with_other_code_is_billing() -> None:
    e = raised(reply(429, err_body("some_new_code", "quota", typ="insufficient_quota")))
    assert type(e) is BillingError


def test_classify_402_is_billing() -> None:
    e = raised(reply(402, err_body(None, "Payment required")))
    assert type(e) is BillingError
    assert e.status == 402


def test_classify_billing_wins_over_should_retry_true() -> None:
    e = raised(reply(429, err_body("insufficient_quota"), x_should_retry="true"))
    assert type(e) is BillingError


def test_classify_400_conversation_locked_is_transient_with_a_wait() -> None:
    e = raised(reply(400, err_body("conversation_locked", "Another request is in progress")))
    assert type(e) is TransientApiError
    assert e.code == "conversation_locked"
    assert e.retry_after == CONVERSATION_LOCKED_WAIT
    assert e.retry_after is not None and e.retry_after > 0


def test_classify_400_conversation_locked_obeys_retry_after() -> None:
    e = raised(reply(400, err_body("conversation_locked"), retry_after="5"))
    assert type(e) is TransientApiError
    assert e.retry_after == 5.0


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_value"),
        (400, None),
        (403, "misalignment_policy_violation"),
        (404, "model_not_found"),
        (404, "previous_response_not_found"),
        (422, "unprocessable"),
    ],
)
def test_classify_client_errors_are_permanent(status: int, code: str | None) -> None:
    body = err_body(code, f"bad thing {status}", typ="invalid_request_error")
    e = raised(reply(status, body, x_request_id=f"req_{status}"))
    assert type(e) is PermanentApiError
    assert e.status == status
    # Without a code the error type stands in.
    assert e.code == (code or "invalid_request_error")
    assert e.message == f"bad thing {status}"
    assert e.request_id == f"req_{status}"
    assert e.body == body
    assert str(status) in e.describe()
    assert f"req_{status}" in e.describe()


def test_classify_error_without_body_gets_a_message() -> None:
    e = raised(reply(404))
    assert type(e) is PermanentApiError
    assert e.message == "HTTP 404 from POST https://api.example.test/v1/responses"
    assert e.code is None


def test_classify_should_retry_false_makes_500_permanent() -> None:
    e = raised(reply(500, err_body("server_error"), x_should_retry="false"))
    assert type(e) is PermanentApiError
    assert e.status == 500


def test_classify_should_retry_true_makes_400_transient() -> None:
    e = raised(reply(400, err_body("whatever"), x_should_retry="true"))
    assert type(e) is TransientApiError


# --- ApiClient over a mock transport --------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"id": "resp_1", "status": "completed", "output": []}, headers={"x-request-id": "req_ok"}
    )


class Recorder:
    def __init__(self, handler: Handler = ok) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def client(rec: Recorder, *, base: str = BASE, key: Any = KEY, style: AuthStyle = AuthStyle.BEARER) -> ApiClient:
    return ApiClient(base, key, auth_style=style, transport=httpx.MockTransport(rec))


@pytest.mark.anyio
async def test_create_posts_body_unchanged() -> None:
    rec = Recorder()
    body = b'{"model":"gpt-test",  "input":"h\\u00e9llo", "z":1, "a":[2,1]}'
    async with client(rec) as c:
        out = await c.create(body, client_request_id="job_1/3/1")
    assert out.body["id"] == "resp_1"
    assert out.request_id == "req_ok"
    [r] = rec.requests
    assert r.method == "POST"
    assert str(r.url) == f"{BASE}/responses"
    assert r.content == body
    assert r.headers["x-client-request-id"] == "job_1/3/1"
    assert r.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_create_without_client_request_id() -> None:
    rec = Recorder()
    async with client(rec) as c:
        await c.create(b"{}")
    assert "x-client-request-id" not in rec.requests[0].headers


@pytest.mark.anyio
async def test_base_url_with_trailing_slash() -> None:
    rec = Recorder()
    async with client(rec, base=BASE + "/") as c:
        await c.create(b"{}")
    assert str(rec.requests[0].url) == f"{BASE}/responses"


@pytest.mark.parametrize(
    ("style", "key", "header", "value"),
    [
        (AuthStyle.BEARER, "k", "authorization", "Bearer k"),
        (AuthStyle.RAW, "k", "authorization", "k"),
        (AuthStyle.API_KEY, "k", "api-key", "k"),
        (AuthStyle.BEARER, SecretStr("k"), "authorization", "Bearer k"),
    ],
)
@pytest.mark.anyio
async def test_auth_styles(style: AuthStyle, key: Any, header: str, value: str) -> None:
    rec = Recorder()
    async with client(rec, key=key, style=style) as c:
        await c.create(b"{}")
    headers = rec.requests[0].headers
    assert headers[header] == value
    other = "api-key" if header == "authorization" else "authorization"
    assert other not in headers


@pytest.mark.anyio
async def test_no_key_sends_no_auth_header() -> None:
    rec = Recorder()
    async with client(rec, key=None) as c:
        await c.create(b"{}")
    assert "authorization" not in rec.requests[0].headers
    assert "api-key" not in rec.requests[0].headers


def test_base_url_must_be_http() -> None:
    with pytest.raises(ConfigError):
        ApiClient("api.example.test/v1", KEY, transport=httpx.MockTransport(ok))


@pytest.mark.anyio
async def test_retrieve_and_cancel_paths() -> None:
    rec = Recorder()
    async with client(rec) as c:
        await c.retrieve("resp_abc")
        await c.cancel("resp_abc")
    get, cancel = rec.requests
    assert (get.method, str(get.url)) == ("GET", f"{BASE}/responses/resp_abc")
    assert (cancel.method, str(cancel.url)) == ("POST", f"{BASE}/responses/resp_abc/cancel")
    assert get.headers["authorization"] == f"Bearer {KEY}"


def raise_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def raise_read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def raise_oserror(request: httpx.Request) -> httpx.Response:
    raise ConnectionResetError(104, "Connection reset by peer")


@pytest.mark.parametrize(
    ("handler", "code"),
    [(raise_connect, "connection_error"), (raise_read_timeout, "timeout"), (raise_oserror, "connection_error")],
)
@pytest.mark.anyio
async def test_transport_failures_are_transient(handler: Handler, code: str) -> None:
    async with client(Recorder(handler)) as c:
        with pytest.raises(TransientApiError) as info:
            await c.create(b"{}")
    assert info.value.code == code
    assert info.value.status is None
    assert info.value.describe().startswith("no response")


@pytest.mark.anyio
async def test_error_reply_through_client_is_classified() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=err_body("not_found", "No response found"), headers={"x-request-id": "r9"})

    async with client(Recorder(handler)) as c:
        with pytest.raises(PermanentApiError) as info:
            await c.retrieve("resp_missing")
    assert (info.value.status, info.value.code, info.value.request_id) == (404, "not_found", "r9")


@pytest.mark.parametrize(
    ("status", "code", "line"),
    [
        (401, "invalid_api_key", "the API answered 401 invalid_api_key: check OPENAI_API_KEY (or --api-key)"),
        (401, None, "the API answered 401 invalid_request_error: check OPENAI_API_KEY (or --api-key)"),
        (403, "unsupported_country_region_territory", "the API answered 403 unsupported_country_region_territory:"),
    ],
)
@pytest.mark.anyio
async def test_a_refused_key_dooms_the_job_on_every_endpoint(status: int, code: str | None, line: str) -> None:
    body = err_body(code, f"Incorrect API key provided: {KEY[:6]}***{KEY[-3:]}")
    async with client(Recorder(_status(status, body))) as c:
        for call in (lambda: c.create(b"{}"), lambda: c.retrieve("resp_1"), lambda: c.cancel("resp_1")):
            with pytest.raises(DoomedJobError) as info:
                await call()
            assert info.value.message.startswith(line)
            assert "Incorrect API key" not in info.value.message  # the server's text may echo part of the key


@pytest.mark.parametrize(
    ("base", "status", "line"),
    [
        (f"{BASE}/responses", 405, f"POST {BASE}/responses/responses: 405; the base URL should end in /v1"),
        ("https://api.example.test", 404, "POST https://api.example.test/responses: 404; the base URL should end in"),
        (BASE, 404, f"POST {BASE}/responses: 404; the server has no Responses API at this base URL;"),
    ],
)
@pytest.mark.anyio
async def test_a_missing_create_endpoint_dooms_the_job(base: str, status: int, line: str) -> None:
    async with client(Recorder(_status(status, err_body(None, "Invalid URL"))), base=base) as c:
        with pytest.raises(DoomedJobError) as info:
            await c.create(b"{}")
        assert info.value.message.startswith(line)
        # A 404 for one line's model, or for one response id, is that request's problem only.
        with pytest.raises(PermanentApiError):
            await c.retrieve("resp_gone")
    async with client(Recorder(_status(404, err_body("model_not_found", "no such model"))), base=base) as c:
        with pytest.raises(PermanentApiError):
            await c.create(b"{}")


def _status(status: int, body: Any, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"x-request-id": "req_1", **headers})

    return handler


def _html(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"<html>oops</html>")


LEAK_CASES: list[Handler] = [
    _status(401, err_body("invalid_api_key", "Incorrect API key provided: sk-SEC*****123")),
    _status(403, err_body(None, "forbidden")),
    _status(429, err_body("insufficient_quota", "quota")),
    _status(429, err_body("rate_limit_exceeded", "slow"), retry_after="1"),
    _status(500, err_body("server_error", "boom")),
    _status(400, err_body("conversation_locked", "locked")),
    _html,
    raise_connect,
    raise_read_timeout,
    raise_oserror,
]


@pytest.mark.parametrize("style", list(AuthStyle))
@pytest.mark.parametrize("handler", LEAK_CASES)
@pytest.mark.anyio
async def test_errors_never_contain_the_api_key(handler: Handler, style: AuthStyle) -> None:
    async with client(Recorder(handler), style=style) as c:
        for call in (lambda: c.create(b'{"model":"m"}'), lambda: c.retrieve("resp_1"), lambda: c.cancel("resp_1")):
            with pytest.raises(ApiError) as info:
                await call()
            e = info.value
            for text in (str(e), e.describe(), repr(e), repr(e.body)):
                assert KEY not in text
                assert "SECRET" not in text


# --- replies that are too slow, too large, or echo the key ------------------------------------------------


@pytest.mark.anyio
async def test_timeout_bounds_the_whole_reply_not_the_gap_between_bytes() -> None:
    async def trickle(request: httpx.Request) -> httpx.Response:
        async def body() -> Any:
            for _ in range(50):
                await anyio.sleep(0.02)  # each byte well within any read timeout
                yield b" "

        return httpx.Response(200, content=body())

    async with ApiClient(BASE, KEY, timeout=0.3, transport=httpx.MockTransport(trickle)) as c:
        with pytest.raises(TransientApiError) as info:
            await c.create(b"{}")
    assert info.value.code == "timeout"
    assert info.value.message == "no complete reply within the timeout of 0.3 s"
    # The worker shrinks concurrency on a timeout by the error's class, not by its code's spelling.
    assert isinstance(info.value, TimeoutApiError)


def test_timeouts_are_typed_and_other_transport_failures_are_not() -> None:
    read = classify_exception(httpx.ReadTimeout("timed out"))
    assert isinstance(read, TimeoutApiError) and not isinstance(read, UnreachableError)
    assert (read.code, read.message) == ("timeout", "timed out: ReadTimeout")
    connect = classify_exception(aiohttp.ConnectionTimeoutError("slow"))
    assert isinstance(connect, TimeoutApiError) and isinstance(connect, UnreachableError)
    assert connect.code == "timeout" and connect.message.startswith("timed out: ConnectionTimeoutError")
    reset = classify_exception(ConnectionResetError(104, "Connection reset by peer"))
    assert not isinstance(reset, TimeoutApiError) and reset.code == "connection_error"


@pytest.mark.anyio
async def test_a_body_over_the_limit_fails_the_request_and_says_so() -> None:
    def big(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000, headers={"x-request-id": "req_big"})

    async with ApiClient(BASE, KEY, max_body=1000, transport=httpx.MockTransport(big)) as c:
        with pytest.raises(PermanentApiError) as info:
            await c.create(b"{}")
    assert info.value.code == "reply_too_large"
    assert info.value.message == "the reply body is larger than the limit of 1000 bytes"
    assert info.value.request_id == "req_big"


@pytest.mark.anyio
async def test_a_non_openai_error_keeps_method_url_and_text_but_never_the_key() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(405, text=f"Not allowed. You sent {request.headers['api-key']}\n" + "y" * 3000)

    # The key as `api-key`: URL credentials beside a key in the Authorization header are refused at the start.
    url = "https://user:pw@api.example.test/v1"
    async with ApiClient(url, KEY, auth_style=AuthStyle.API_KEY, transport=httpx.MockTransport(echo)) as c:
        with pytest.raises(PermanentApiError) as info:
            await c.retrieve("resp_1")
    msg = info.value.message
    assert msg.startswith("HTTP 405 from GET https://api.example.test/v1/responses/resp_1: Not allowed. You sent")
    assert KEY not in msg and "[redacted]" in msg and "pw" not in msg
    assert msg.count("y") <= 1024


def test_huge_or_absurd_retry_after_is_capped_and_what_was_asked_is_kept() -> None:
    e = raised(reply(429, err_body("rate_limit_exceeded"), retry_after="1e999"))
    assert isinstance(e, TransientApiError)
    assert e.retry_after == MAX_RETRY_AFTER and e.retry_after_asked == math.inf


def test_an_error_code_and_message_are_bounded() -> None:
    e = raised(reply(400, err_body("c" * 1000, "m" * 100_000)))
    assert e.code is not None and len(e.code) == 128
    assert len(e.message) == 4096


# --- the aiohttp session the runner really uses, against a server on 127.0.0.1 ----------------------------


@pytest.fixture
async def local() -> Any:
    """A real HTTP server on 127.0.0.1 whose reply each test sets; yields (base URL, set_reply)."""
    import gzip

    from aiohttp import web

    replies: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        return await replies["now"](request)

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def set_reply(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        replies["now"] = fn

    yield f"http://127.0.0.1:{port}/v1", set_reply, gzip
    await runner.cleanup()


@pytest.mark.anyio
async def test_the_real_session_sends_the_body_and_headers_and_reads_the_reply(local: Any) -> None:
    from aiohttp import web

    base, set_reply, _ = local
    seen: list[tuple[str, str, bytes, dict[str, str]]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read(), dict(request.headers)))
        return web.json_response(
            {"id": "resp_1", "status": "completed"},
            headers={"x-request-id": "req_1", "x-ratelimit-remaining-requests": "7", "x-other": "no"},
        )

    set_reply(ok)
    async with ApiClient(base, KEY) as c:
        out = await c.create(b'{"model":"m"}', client_request_id="job/1/1")
        await c.retrieve("resp_1")
    assert (out.body["id"], out.request_id, dict(out.rate_limits)) == (
        "resp_1",
        "req_1",
        {"x-ratelimit-remaining-requests": "7"},
    )
    (m1, p1, b1, h1), (m2, p2, _, h2) = seen
    assert (m1, p1, b1) == ("POST", "/v1/responses", b'{"model":"m"}')
    assert h1["Authorization"] == f"Bearer {KEY}" and h1["x-client-request-id"] == "job/1/1"
    assert (m2, p2) == ("GET", "/v1/responses/resp_1") and "x-client-request-id" not in h2


@pytest.mark.parametrize("how", ["content-length", "chunked", "gzip"])
@pytest.mark.anyio
async def test_the_real_session_refuses_a_body_over_the_limit(local: Any, how: str) -> None:
    from aiohttp import web

    base, set_reply, gzip = local
    body = b'{"x":"' + b"y" * 5000 + b'"}'

    async def big(request: web.Request) -> web.StreamResponse:
        if how == "content-length":
            return web.Response(body=body, headers={"x-request-id": "req_big"})
        if how == "gzip":  # small on the wire, over the limit once decoded
            packed = gzip.compress(body)
            assert len(packed) < 1000
            return web.Response(body=packed, headers={"x-request-id": "req_big", "content-encoding": "gzip"})
        resp = web.StreamResponse(headers={"x-request-id": "req_big"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 500):
            await resp.write(body[i : i + 500])
        await resp.write_eof()
        return resp

    set_reply(big)
    async with ApiClient(base, KEY, max_body=1000) as c:
        with pytest.raises(PermanentApiError) as info:
            await c.create(b"{}")
    assert (info.value.code, info.value.request_id) == ("reply_too_large", "req_big")
    assert info.value.message == "the reply body is larger than the limit of 1000 bytes"


@pytest.mark.anyio
async def test_the_real_session_names_a_refused_connection_and_a_non_openai_error(local: Any) -> None:
    from aiohttp import web

    base, set_reply, _ = local

    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text=f"bad gateway; you sent {request.headers['authorization']}")

    set_reply(gateway)
    async with ApiClient(base, KEY) as c:
        with pytest.raises(TransientApiError) as info:
            await c.retrieve("resp_1")
    assert info.value.message == f"HTTP 502 from GET {base}/responses/resp_1: bad gateway; you sent Bearer [redacted]"
    with anyio.fail_after(10):
        async with ApiClient("http://127.0.0.1:9/v1", KEY) as c:  # the discard port: nothing listens
            with pytest.raises(UnreachableError) as refused:
                await c.create(b"{}")
    assert refused.value.code == "connection_error" and "connection refused" in refused.value.reason


@pytest.mark.anyio
async def test_idle_connections_beyond_those_kept_are_closed_and_the_client_still_works() -> None:
    from runner_mock.app import serve
    from runner_mock.knobs import Config

    async with serve(Config(latency=0.05)) as url:
        api = ApiClient(url, "sk-test", max_connections=50)
        try:
            async with anyio.create_task_group() as tg:  # 20 at once: 20 connections, idle once answered
                for _ in range(20):
                    tg.start_soon(api.create, b'{"model": "m", "input": "hi"}')
            assert api.close_idle(5) == 15
            assert api.close_idle(5) == 0
            reply = await api.create(b'{"model": "m", "input": "hi"}')
            assert reply.status == 200
        finally:
            await api.aclose()


def test_the_key_is_redacted_from_a_reply_before_anything_reads_it_unless_it_is_no_secret() -> None:
    from runner.client import redact

    key = "sk-proj-abcdefgh12345678"
    raw, rid = redact(f'{{"error": {{"message": "you sent Bearer {key}", "code": "{key}"}}}}'.encode(), key, key)
    assert key.encode() not in raw and raw.count(b"[redacted]") == 2 and rid == "[redacted]"
    # vLLM's docs give the key "EMPTY": no secret, and an answer that says EMPTY must stay as it is.
    assert redact(b'{"output_text": "The box is EMPTY"}', "req_1", "EMPTY") == (
        b'{"output_text": "The box is EMPTY"}',
        "req_1",
    )


def test_a_transport_errors_words_are_one_line_without_aiohttps_internal_numbers() -> None:
    import aiohttp
    from aiohttp.http_exceptions import BadHttpMessage, ContentLengthError

    from runner.client import classify_exception

    short = ContentLengthError("Not enough data to satisfy content length header.")
    cut = aiohttp.ClientPayloadError(f"Response payload is not completed: {short!r}")
    said = classify_exception(cut).message
    # It was "connection failed: ... <ContentLengthError: 400, ...>": a reply came, and 400 is no HTTP status.
    assert said == (
        "the reply's body was cut off: Response payload is not completed: ContentLengthError: Not enough data to"
        " satisfy content length header."
    )
    bad_head = aiohttp.ClientResponseError(None, (), message="bad")  # type: ignore[arg-type]
    bad_head.__cause__ = BadHttpMessage("Invalid header value char:\n\n  b'x-a: \\x01'\n         ^")
    said = classify_exception(bad_head).message
    assert "\n" not in said and "Invalid header value char: b'x-a: \\x01' ^" in said, said
