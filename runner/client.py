"""The Responses API client: one httpx.AsyncClient over aiohttp, and the one place HTTP outcomes are classified.

`classify()` turns every reply into an `ApiReply` or raises a typed error (`TransientApiError`,
`PermanentApiError`, `BillingError`, `DoomedJobError`); `classify_exception()` does the same for replies
that never came (an `UnreachableError` when there was no usable connection).
Nothing else in the runner looks at status codes or error codes, except for a Response object that ends
`failed` inside a 200 reply: `worker/outcomes.py` decides from its body whether it is worth another attempt.

Over 400 lines on purpose: classifying every HTTP outcome and transport failure is one ordered table of
decisions (billing before doomed before retryable); split across files, that order would be hard to see.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import httpx
import orjson
from aiohttp.http_exceptions import HttpProcessingError
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from runner import __version__
from runner.config import DEFAULT_CONNECT_TIMEOUT, MAX_RETRY_AFTER, AuthStyle
from runner.errors import (
    ApiError,
    BillingError,
    CapacityError,
    ConfigError,
    ConnectTimeoutError,
    DoomedJobError,
    PermanentApiError,
    TimeoutApiError,
    TransientApiError,
    UnreachableError,
)
from runner.reply import (
    MAX_BODY_BYTES,
    MAX_CODE_CHARS,
    MAX_ERROR_TEXT,
    MAX_HEADER_LINE,
    MAX_MESSAGE_CHARS,
    read_error_text,
    read_request_id,
    read_retry_after,
)

BILLING_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "organization_usage_limit_exceeded"})
# A 403 with one of these codes judges the request's content, not the key: that line fails, the run goes on.
PER_REQUEST_403_CODES = frozenset({"misalignment_policy_violation"})
# OpenSSL's reasons when the other side answered a TLS hello in plain text (an http:// server).
PLAIN_HTTP_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"})
# A 429 with one of these codes is the flex tier short of capacity (unbilled), not this account's rate limit.
CAPACITY_CODES = frozenset({"resource_unavailable", "resources_unavailable", "capacity_exceeded"})
CONVERSATION_LOCKED_WAIT = 2.0  # the API says "retry in a few seconds" and sends no Retry-After
RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


@dataclass(frozen=True, slots=True)
class ApiReply:
    """A successful reply: the parsed Response object and what the headers said."""

    status: int
    body: dict[str, Any]
    raw: bytes
    request_id: str | None
    rate_limits: Mapping[str, str] = field(default_factory=dict)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date); None if absent.

    Values are capped at MAX_RETRY_AFTER so a broken header cannot park a run for a day.
    """
    ra = read_retry_after(headers, MAX_RETRY_AFTER, now)
    return None if ra is None else ra.seconds


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) from an OpenAI error body `{"error": {...}}`, tolerating other shapes; bounded."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return (
                read_error_text(err.get("code"), MAX_CODE_CHARS),
                read_error_text(err.get("type"), MAX_CODE_CHARS),
                read_error_text(err.get("message"), MAX_MESSAGE_CHARS),
            )
        if isinstance(err, str):
            return None, None, read_error_text(err, MAX_MESSAGE_CHARS)
        msg = body.get("message")
        if isinstance(msg, str):
            return None, None, read_error_text(msg, MAX_MESSAGE_CHARS)
    return None, None, None


def _where(response: httpx.Response, request: httpx.Request | None) -> str:
    """`METHOD URL` of the request a reply answers, without credentials or query (they may hold a key)."""
    if request is None:
        try:
            request = response.request
        except RuntimeError:
            return "the request"
    url = request.url.copy_with(username=None, password=None, query=None, fragment=None)
    return f"{request.method} {url}"


def _http_message(response: httpx.Response, raw: bytes, secret: str | None, request: httpx.Request | None) -> str:
    """What a failure without an OpenAI error object said: status, method + URL, and its first 1 KB of text."""
    text = raw[: MAX_ERROR_TEXT * 4].decode("utf-8", "replace")[:MAX_ERROR_TEXT].strip()
    if secret:
        text = text.replace(secret, "[redacted]")  # a proxy echoing our headers must not put the key in the store
    where = _where(response, request)
    return f"HTTP {response.status_code} from {where}: {text}" if text else f"HTTP {response.status_code} from {where}"


def is_billing_code(code: str | None) -> bool:
    """Quota and spend-limit codes: retrying never helps."""
    return code is not None and (code in BILLING_CODES or code.endswith("_spend_limit_exceeded"))


# A server may say when to poll a background response next; kept beside the rate-limit headers, the
# only other headers a reply's reader looks at.
POLL_AFTER_HEADER = "openai-poll-after-ms"
_RATE_LIMIT_RAW = frozenset(h.encode() for h in (*RATE_LIMIT_HEADERS, POLL_AFTER_HEADER))


def _rate_limits(headers: httpx.Headers) -> dict[str, str]:
    # One pass over the raw (already lower-cased) header list: Headers.get scans the list on every call.
    return {k.decode(): v.decode("latin-1") for k, v in headers.raw if k.lower() in _RATE_LIMIT_RAW}


def _key_problem(status: int, code: str | None) -> str:
    """The one line for a 401/403: the server's own message is left out, as it may echo part of the key."""
    said = f"the API answered {status}{' ' + code if code else ''}"
    if status == 401:
        return f"{said}: check OPENAI_API_KEY (or --api-key)"
    return f"{said}: this key may not use this API; check its project, permissions and region"


def _endpoint_problem(status: int, url: httpx.URL) -> str:
    """The one line for a create endpoint that does not exist: most often a base URL without `/v1`."""
    base = url.path.removesuffix("/").removesuffix("/responses")
    if base.endswith("/v1"):
        hint = "the server has no Responses API at this base URL; check --base-url / OPENAI_BASE_URL"
    else:
        hint = "the base URL should end in /v1"
    return f"POST {url}: {status}; {hint}"


def _names_a_missing_thing(code: str | None) -> bool:
    """A 404 code such as `model_not_found` or `previous_response_not_found`: that line's reference is wrong."""
    return code is not None and code.endswith("_not_found")


def classify(
    response: httpx.Response,
    raw: bytes | None = None,
    *,
    secret: str | None = None,
    request: httpx.Request | None = None,
    create_url: httpx.URL | None = None,
) -> ApiReply:
    """An `ApiReply` for a 2xx with a JSON object body; otherwise raise the typed error it stands for.

    `raw` is the body when the caller read it (bounded); `secret` is redacted from any text kept; `request`
    (else the response's own) names what failed in a message. `create_url` is given for `POST /responses`:
    a 404 or 405 there (other than a line's unknown model or previous response) means the endpoint itself
    is missing, which dooms the whole job.
    """
    headers = response.headers
    request_id = read_request_id(headers.get("x-request-id"))
    if raw is None:
        raw = response.content
    status = response.status_code
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None

    if 200 <= status < 300:
        if isinstance(body, dict):
            return ApiReply(status, body, raw, request_id, _rate_limits(headers))
        raise TransientApiError(
            "the API answered 2xx with a body that is not a JSON object",
            status=status,
            code="invalid_response_body",
            request_id=request_id,
            body=None,
        )

    code, typ, message = _error_fields(body)
    message = message or _http_message(response, raw, secret, request)
    kw: dict[str, Any] = {
        "status": status,
        "code": code or typ,
        "request_id": request_id,
        "body": body,
        "rate_limits": _rate_limits(headers),
    }

    if status in (402, 429) and (is_billing_code(code) or is_billing_code(typ) or status == 402):
        raise BillingError(message, **kw)
    if status == 401 or (status == 403 and (code or typ) not in PER_REQUEST_403_CODES):
        raise DoomedJobError(_key_problem(status, code or typ), **kw)
    if create_url is not None and (status == 405 or (status == 404 and not _names_a_missing_thing(code))):
        raise DoomedJobError(_endpoint_problem(status, create_url), **kw)
    should_retry = headers.get("x-should-retry")
    if should_retry == "false":
        raise PermanentApiError(message, **kw)
    if status == 400 and code == "conversation_locked":
        ra = read_retry_after(headers, MAX_RETRY_AFTER)
        if ra is None:
            raise TransientApiError(message, retry_after=CONVERSATION_LOCKED_WAIT, **kw)
        raise TransientApiError(message, retry_after=ra.seconds, retry_after_asked=ra.asked, **kw)
    if status == 429 and (code in CAPACITY_CODES or typ in CAPACITY_CODES):
        ra = read_retry_after(headers, MAX_RETRY_AFTER)
        raise CapacityError(message, retry_after=None if ra is None else ra.seconds, **kw)
    if should_retry == "true" or status in (408, 409, 429) or status >= 500:
        ra = read_retry_after(headers, MAX_RETRY_AFTER)
        if ra is None:
            raise TransientApiError(message, **kw)
        raise TransientApiError(message, retry_after=ra.seconds, retry_after_asked=ra.asked, **kw)
    raise PermanentApiError(message, **kw)


def _unreachable_reason(cause: BaseException) -> tuple[str, str]:
    """(code, plain words with the likely fix) for a failure to get a usable connection."""
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return "tls_error", f"TLS certificate verification failed ({cause.certificate_error})"
    if isinstance(cause, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        reason = getattr(cause.os_error, "reason", None) if isinstance(cause.os_error, ssl.SSLError) else None
        if reason in PLAIN_HTTP_TLS_REASONS:
            return "tls_error", "the server speaks plain HTTP; did you mean http://?"
        return "tls_error", f"the TLS handshake failed ({reason or cause.os_error})"
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return "connection_error", "the host name does not resolve; check the base URL"
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return TimeoutApiError.CODE, "no answer to the connection attempt; is the host reachable?"
    if isinstance(cause, aiohttp.ClientConnectorError):
        if isinstance(cause.os_error, ConnectionRefusedError):
            return "connection_error", "connection refused; is the server up, and is the port right?"
        return "connection_error", f"the connection failed ({cause.os_error.strerror or cause.os_error})"
    return "connection_error", f"the connection failed ({type(cause).__name__})"


def classify_exception(exc: BaseException) -> ApiError:
    """A transport failure (no usable reply) as a typed error; the message never holds headers.

    A reply whose head aiohttp's parser refused (a header line over MAX_HEADER_LINE bytes, or not HTTP) is
    a permanent failure, not "connection failed": the server did answer (perhaps with a paid answer), and
    sending the request again would pay again for the same unreadable reply.

    Failing to connect (refused, no such host, TLS, connect timeout) is an `UnreachableError`, which the
    worker counts towards the doomed-job stop.
    """
    cause = exc.__cause__ or exc
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(cause, HttpProcessingError):
        # aiohttp's parser refused the status line or headers (errors in the body come as ClientPayloadError).
        said = f" ({cause.message[:120]})" if cause.message else ""
        return PermanentApiError(
            f"the server's reply could not be read: its header lines must each fit in {MAX_HEADER_LINE} bytes"
            f" and be valid HTTP{said}",
            code="invalid_reply_head",
        )
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.ClientSSLError):
        code, reason = _unreachable_reason(cause)
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            message = f"timed out: {type(cause).__name__}: {cause}".rstrip(": ")
            return ConnectTimeoutError(message, reason=reason, code=code)
        message = f"connection failed: {type(cause).__name__}: {cause}".rstrip(": ")
        return UnreachableError(message, reason=reason, code=code)
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout) or isinstance(
        cause, asyncio.TimeoutError | aiohttp.ServerTimeoutError
    ):
        return TimeoutApiError(f"timed out: {type(cause).__name__}")
    return TransientApiError(
        f"connection failed: {type(cause).__name__}: {cause}".rstrip(": "), code="connection_error"
    )


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, aiohttp.ClientError, OSError)


class ApiClient:
    """Create, retrieve and cancel responses over one pooled connection set.

    One `httpx.AsyncClient` over the aiohttp transport owns the connections. Requests are built once,
    fully (absolute URL, headers, timeout), and handed straight to that client's transport: the client's
    per-request work (URL merging, cookie jar, auth and redirect handling) is never needed by the Responses
    API and cost as much CPU as the HTTP exchange itself at high concurrency.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str | None,
        *,
        auth_style: AuthStyle = AuthStyle.BEARER,
        timeout: float = 600.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL must start with http:// or https:// (got {base_url!r})")
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._secret = key or None
        self._max_body = max_body
        self._total_timeout = timeout
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": f"runner/{__version__}",
        }
        if key:
            if auth_style is AuthStyle.BEARER:
                headers["authorization"] = f"Bearer {key}"
            elif auth_style is AuthStyle.RAW:
                headers["authorization"] = key
            else:
                headers["api-key"] = key
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport = transport or AiohttpTransport(limits=limits)
        self._timeout = httpx.Timeout(timeout, connect=min(DEFAULT_CONNECT_TIMEOUT, timeout))
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=self._timeout,
            transport=self._transport,
            limits=limits,
        )
        self._base = self._http.base_url
        self.base_url = str(self._base).rstrip("/")  # as given, for messages (it never holds the key)
        self._create_url = self._base.join("responses")
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._extensions = {"timeout": self._timeout.as_dict()}

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None = None,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        *,
        creating: bool = False,
        content_type: bytes | None = None,
    ) -> ApiReply:
        headers = self._headers
        if content_type is not None:
            headers = [(k, content_type if k == b"content-type" else v) for k, v in headers]
        request = httpx.Request(method, url, headers=[*headers, *extra], content=content, extensions=self._extensions)
        try:
            # --timeout bounds the whole reply (connect, headers, body), not only the gap between bytes:
            # a server trickling one byte a second must not hold a request and its slot for as long as it likes.
            with anyio.fail_after(self._total_timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    raw = await self._read_body(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise TimeoutApiError(f"no complete reply within the timeout of {self._total_timeout:g} s") from None
        except httpx.DecodingError:
            # Not a transport error in httpx's tree, but the same kind of thing: the reply came, unusable.
            raise TransientApiError(
                "the reply's body could not be decoded (its content-encoding does not match it)",
                code="invalid_response_body",
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None
        return classify(response, raw, secret=self._secret, request=request, create_url=url if creating else None)

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The reply's body, refusing one larger than the limit instead of holding it all in memory."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_body:
                raise PermanentApiError(
                    f"the reply body is larger than the limit of {self._max_body} bytes",
                    status=response.status_code,
                    code="reply_too_large",
                    request_id=read_request_id(response.headers.get("x-request-id")),
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def create(self, body: bytes, *, client_request_id: str | None = None) -> ApiReply:
        """POST /responses with a body that is already JSON."""
        extra = ((b"x-client-request-id", client_request_id.encode()),) if client_request_id else ()
        return await self._send("POST", self._create_url, body, extra, creating=True)

    async def retrieve(self, response_id: str) -> ApiReply:
        """GET /responses/{id}."""
        return await self._send("GET", self._base.join(f"responses/{quote(response_id, safe='')}"))

    async def cancel(self, response_id: str) -> ApiReply:
        """POST /responses/{id}/cancel (idempotent on the API side)."""
        return await self._send("POST", self._base.join(f"responses/{quote(response_id, safe='')}/cancel"))

    # -- other endpoints (the Batch API's files and batches), classified the same way ---------------

    async def call(self, method: str, path: str, body: object | None = None) -> ApiReply:
        """`method` on `path` (relative to the base URL, query included) with an optional JSON body."""
        content = None if body is None else orjson.dumps(body)
        return await self._send(method, self._base.join(path), content)

    async def upload(self, path: str, fields: Mapping[str, str], filename: str, data: bytes) -> ApiReply:
        """POST a multipart form: `fields` and one file (`file`, JSON Lines) named `filename`."""
        boundary = f"runner-{os.urandom(12).hex()}"
        parts = [
            f'--{boundary}\r\ncontent-disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        head = (
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="{filename}"\r\n'
            "content-type: application/jsonl\r\n\r\n"
        )
        content = b"".join([*parts, head.encode(), data, f"\r\n--{boundary}--\r\n".encode()])
        ctype = f"multipart/form-data; boundary={boundary}".encode()
        return await self._send("POST", self._base.join(path), content, content_type=ctype)

    async def lines(self, path: str, max_line: int = MAX_BODY_BYTES) -> AsyncIterator[bytes]:
        """GET `path` and yield its body line by line as it arrives (a Batch output file can be gigabytes).

        A reply that is not 2xx raises its typed error; a line longer than `max_line` raises PermanentApiError.
        """
        request = httpx.Request("GET", self._base.join(path), headers=self._headers, extensions=self._extensions)
        try:
            response = await self._transport.handle_async_request(request)
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None
        try:
            if not 200 <= response.status_code < 300:
                classify(response, await self._read_body(response), secret=self._secret, request=request)
            rest = b""
            try:
                async for chunk in response.aiter_bytes():
                    rest += chunk
                    *whole, rest = rest.split(b"\n")
                    for line in whole:
                        yield line
                    if len(rest) > max_line:
                        raise PermanentApiError(
                            f"a line of {path} is longer than {max_line} bytes", code="reply_too_large"
                        )
            except TRANSPORT_ERRORS as exc:
                raise classify_exception(exc) from None
            if rest:
                yield rest
        finally:
            await response.aclose()


__all__ = [
    "ApiClient",
    "ApiError",
    "ApiReply",
    "classify",
    "classify_exception",
    "is_billing_code",
    "parse_retry_after",
]
