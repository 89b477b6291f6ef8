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
import json
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import httpx
import orjson
import yarl
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from pydantic import SecretStr

from runner import __version__
from runner.config import DEFAULT_CONNECT_TIMEOUT, MAX_RETRY_AFTER, AuthStyle, base_url_problem, key_problem
from runner.errors import (
    ApiError,
    BillingError,
    CapacityError,
    ConfigError,
    ConnectTimeoutError,
    DoomedJobError,
    DroppedError,
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
# The code of a reply the runner cannot read as HTTP (a header over MAX_HEADER_LINE, a status outside 100-599):
# the server answered, perhaps with a paid answer, so the request fails rather than be sent again.
INVALID_REPLY_HEAD = "invalid_reply_head"
MAX_SHOWN_LOCATION = 256  # characters of a redirect's target in the one line that stops a run
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
            if body.get("object") == "error":  # vLLM's flat ErrorResponse: its type says what kind of error
                return (
                    read_error_text(body.get("code"), MAX_CODE_CHARS),
                    read_error_text(body.get("type"), MAX_CODE_CHARS),
                    read_error_text(msg, MAX_MESSAGE_CHARS),
                )
            return None, None, read_error_text(msg, MAX_MESSAGE_CHARS)
    return None, None, None


def _where(response: httpx.Response, request: httpx.Request | None) -> str:
    """`METHOD URL` of the request a reply answers, without credentials or query (they may hold a key)."""
    if request is None:
        try:
            request = response.request
        except RuntimeError:
            return "the request"
    return f"{request.method} {_shown(request.url)}"


def _shown(url: httpx.URL) -> str:
    """A URL as messages show it: without credentials, query or fragment (they may hold a key)."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _http_message(status: int, raw: bytes, where: str) -> str:
    """What a failure without an OpenAI error object said: status, method + URL, and its first 1 KB of text."""
    text = raw[: MAX_ERROR_TEXT * 4].decode("utf-8", "replace")[:MAX_ERROR_TEXT].strip()
    return f"HTTP {status} from {where}: {text}" if text else f"HTTP {status} from {where}"


REDACTED = "[redacted]"
# A key this short ("EMPTY", "none", "sk-1234": what self-hosted servers are given) is no secret, and replacing
# it in every reply would change answers that merely hold the word.
MIN_REDACTED_KEY = 8


def redact(raw: bytes, request_id: str | None, secret: str | None) -> tuple[bytes, str | None]:
    """A reply's body and request id with the API key replaced by REDACTED wherever the server echoed it.

    Done here, before anything is read from the reply: a gateway that echoes the Authorization header it was
    sent (into an error's message or code, an answer, `x-request-id`) put the key into the store, `show`,
    `report` and every export, where only the message of a non-OpenAI error had been redacted.
    """
    if secret is None or len(secret) < MIN_REDACTED_KEY:
        return raw, request_id
    key = secret.encode()
    if key in raw:
        raw = raw.replace(key, REDACTED.encode())
    if request_id is not None and secret in request_id:
        request_id = request_id.replace(secret, REDACTED)
    return raw, request_id


def _lenient_json(raw: bytes) -> Any:
    """JSON that orjson refuses and the JSON standard's readers take: a UTF-8 byte order mark before it, a lone
    surrogate escape (`"\\ud800"`) in a string. A 2xx reply like that came whole, and was sent (and paid)
    again up to --max-attempts times, then dropped. A lone surrogate becomes U+FFFD, as it cannot be stored or
    written as UTF-8; what is not JSON at all (NaN, 1e999, HTML) stays None.
    """
    try:
        text = json.dumps(json.loads(raw.decode("utf-8-sig")), ensure_ascii=False, allow_nan=False)
        return orjson.loads(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
    except (ValueError, RecursionError, orjson.JSONDecodeError):  # UnicodeDecodeError is a ValueError
        return None


def is_billing_code(code: str | None) -> bool:
    """Quota and spend-limit codes: retrying never helps."""
    return code is not None and (code in BILLING_CODES or code.endswith("_spend_limit_exceeded"))


# A server may say when to poll a background response next; kept beside the rate-limit headers, the
# only other headers a reply's reader looks at.
POLL_AFTER_HEADER = "openai-poll-after-ms"
_KEPT_HEADERS = (*RATE_LIMIT_HEADERS, POLL_AFTER_HEADER)


def advertises_limits(rate_limits: Mapping[str, str]) -> bool:
    """Whether a reply's kept headers (`ApiReply.rate_limits`) include any `x-ratelimit-*` one: a server that
    sends none (vLLM, Ollama, most gateways) never will, so waiting for them teaches nothing."""
    return any(name in rate_limits for name in RATE_LIMIT_HEADERS)


def _rate_limits(headers: Mapping[str, str]) -> dict[str, str]:
    # aiohttp's headers are a C multidict: seven lookups cost less than a pass over every header in Python.
    kept: dict[str, str] = {}
    for name in _KEPT_HEADERS:
        value = headers.get(name)
        if value is not None:
            kept[name] = value
    return kept


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
    return f"POST {_shown(url)}: {status}; {hint}"


def _redirect_problem(status: int, location: str | None, url: httpx.URL) -> str:
    """The one line for a create answered with a redirect: the API is elsewhere (moved, or https only).

    It is not followed: the Authorization header would go with it (to another host, perhaps), and a POST sent
    again may be paid again. Where it points is shown without credentials or query (they may hold a token).
    """
    said = f"POST {_shown(url)}: {status}"
    try:
        target = _shown(url.join(location[:MAX_ERROR_TEXT]))[:MAX_SHOWN_LOCATION] if location else None
    except (httpx.InvalidURL, ValueError):
        target = None
    said += f" redirect to {target}" if target else " (a redirect) instead of an answer"
    return (
        f"{said}; not followed (the key would go with it, and a POST sent on may be paid twice):"
        " set --base-url (or OPENAI_BASE_URL) to the API's address"
    )


def _names_a_missing_thing(code: str | None, typ: str | None, message: str | None) -> bool:
    """A 404 that says what is missing, such as `model_not_found` or `previous_response_not_found`: that line's
    reference is wrong, not the base URL.

    Azure spells it `DeploymentNotFound` (a deployment is its model name); vLLM answers an unknown model with
    the type `NotFoundError` (and the code 404), LiteLLM with a message starting `litellm.NotFoundError:`. Each
    stopped the whole job, run after run, as if the base URL were wrong. A missing route says none of these
    (`{"detail": "Not Found"}`, OpenAI's "Invalid URL", a proxy's page).
    """
    names = ("_not_found", "NotFound", "NotFoundError")
    return any(x is not None and x.endswith(names) for x in (code, typ)) or (
        message is not None and "NotFoundError" in message
    )


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
    return classify_reply(
        response.status_code,
        response.headers,
        response.content if raw is None else raw,
        where=lambda: _where(response, request),
        secret=secret,
        create_url=create_url,
    )


def classify_reply(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    where: Callable[[], str],
    secret: str | None = None,
    create_url: httpx.URL | None = None,
) -> ApiReply:
    """`classify` on the parts of a reply, whichever HTTP stack read it: `headers` look-ups must ignore case
    (aiohttp's and httpx's both do); `where()` names the request in a message (`METHOD URL`)."""
    raw, request_id = redact(raw, read_request_id(headers.get("x-request-id")), secret)
    if not 100 <= status <= 599:
        # aiohttp reads any three digits: 600-999 is no HTTP status, and not a 5xx to be sent (and paid) again.
        raise PermanentApiError(
            f"the server answered with status {status}, which is not an HTTP status (100-599)",
            status=status,
            code=INVALID_REPLY_HEAD,
            request_id=request_id,
        )
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = _lenient_json(raw)

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
    message = message or _http_message(status, raw, where())
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
    if create_url is not None and 300 <= status < 400:
        raise DoomedJobError(_redirect_problem(status, headers.get("location"), create_url), **kw)
    if create_url is not None and (status == 405 or (status == 404 and not _names_a_missing_thing(code, typ, message))):
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
        # args[0] is aiohttp's ConnectionKey; its `is_ssl` says https (`cause.ssl` is True for http too).
        if isinstance(cause.os_error, ConnectionResetError) and getattr(cause.args[0], "is_ssl", False) is True:
            # A plain-HTTP server that drops a TLS hello it cannot parse, rather than answering it in text.
            return (
                "tls_error",
                "the server closed the connection during the TLS handshake; does it speak plain HTTP (http://)?",
            )
        detail = cause.os_error.strerror or str(cause.os_error) or type(cause.os_error).__name__
        return "connection_error", f"the connection failed ({detail})"
    return "connection_error", f"the connection failed ({type(cause).__name__})"


# The variables other HTTP clients (curl, requests, httpx) route through a proxy by. The runner reads none of
# them: its aiohttp session does not trust the environment, which would also bring in ~/.netrc credentials
# beside the key's own Authorization header. A failed connection names one that is set, so that a user behind
# a proxy is not left guessing.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _proxy_note() -> str:
    name = next((v for v in PROXY_VARIABLES if os.environ.get(v)), None)
    return (
        f" ({name} is set, but the runner uses no proxy: it connects to the base URL's host directly)" if name else ""
    )


def _said(exc: BaseException) -> str:
    """What a transport error says, on one line: aiohttp's parser errors quote the bad bytes over several lines
    with a caret under them, and its payload errors show an internal number as if it were an HTTP status
    (`<ContentLengthError: 400, message='...'>`); `runner show` printed both as they were."""
    text = re.sub(r"<(\w+): \d+, message='([^']*)'>", r"\1: \2", str(exc))
    return " ".join(text.split())[:MAX_ERROR_TEXT]


def classify_exception(exc: BaseException) -> ApiError:
    """A transport failure (no usable reply) as a typed error; the message never holds headers.

    A reply whose head aiohttp's parser refused (a header line over MAX_HEADER_LINE bytes, or not HTTP) is
    a permanent failure, not "connection failed": the server did answer (perhaps with a paid answer), and
    sending the request again would pay again for the same unreadable reply.

    Failing to connect (refused, no such host, TLS, connect timeout) is an `UnreachableError`, which the
    worker counts towards the doomed-job stop.
    """
    # httpx wraps the transport's exception; aiohttp's own (raised directly) are the thing itself, their
    # cause being only the OSError behind them.
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
    head = exc.__cause__
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(head, HttpProcessingError):
        # aiohttp's parser refused the status line or headers (errors in the body come as ClientPayloadError).
        said = f" ({_said(Exception(head.message))[:120]})" if head.message else ""
        # aiohttp raises the same class for a content-encoding it cannot decode (br without Brotli, which the
        # request never offers): the message names that case too, rather than blame the header lines alone.
        return PermanentApiError(
            f"the server's reply could not be read: its header lines must each fit in {MAX_HEADER_LINE} bytes,"
            f" be valid HTTP and name a content-encoding the request accepts (gzip, deflate){said}",
            code=INVALID_REPLY_HEAD,
        )
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.ClientSSLError):
        code, reason = _unreachable_reason(cause)
        reason += _proxy_note()
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            message = f"timed out: {type(cause).__name__}: {_said(cause)}".rstrip(": ")
            return ConnectTimeoutError(message, reason=reason, code=code)
        message = f"connection failed: {type(cause).__name__}: {_said(cause)}".rstrip(": ")
        return UnreachableError(message, reason=reason, code=code)
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        # Connected, then closed (or reset) with no reply head: connector errors, a subclass, returned above.
        return DroppedError(
            f"connection failed: {type(cause).__name__}: {_said(cause)}".rstrip(": "), code="connection_error"
        )
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout) or isinstance(
        cause, asyncio.TimeoutError | aiohttp.ServerTimeoutError
    ):
        return TimeoutApiError(f"timed out: {type(cause).__name__}")
    if isinstance(cause, aiohttp.ClientPayloadError):  # a reply came, and its body was cut off part way
        return TransientApiError(f"the reply's body was cut off: {_said(cause)}".rstrip(": "), code="connection_error")
    return TransientApiError(
        f"connection failed: {type(cause).__name__}: {_said(cause)}".rstrip(": "), code="connection_error"
    )


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, aiohttp.ClientError, OSError)


class ApiClient:
    """Create, retrieve and cancel responses over one pooled connection set.

    Requests go straight to one aiohttp `ClientSession` whose headers, timeouts and connection limits are
    set once: per request there is only the URL, the body and its `x-client-request-id`. The reply is
    read (bounded) and classified from its status, headers and body. A `transport` given instead (tests,
    `app.run(transport=...)`) is an httpx transport, taken through httpx's `Request`/`Response` objects and
    classified the same way.

    Measured (`make bench` scenario 2, CPU per request at concurrency 64): through httpx and its aiohttp
    transport, the HTTP exchange cost ~0.36 ms of a request's ~0.6 ms; `Request`/`Response` objects,
    header objects, the stream adapter and a cancel scope per request were half of it.
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
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._secret = key or None
        self._max_body = max_body
        self._total_timeout = timeout
        self._connect_timeout = min(DEFAULT_CONNECT_TIMEOUT, timeout)
        self._max_connections = max_connections
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
        problem = key_problem(key or "") or base_url_problem(base_url, key_in_authorization="authorization" in headers)
        if problem is not None:
            raise ConfigError(problem)
        self._header_map = headers
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        # As given, for messages: never the key, nor a password the URL holds (nor a query: there is none).
        self.base_url = _shown(self._base).rstrip("/")
        self._create_url = self._base.join("responses")
        self._answered = False  # a create has been answered 2xx
        self._create_target = yarl.URL(str(self._create_url), encoded=True)  # parsed once, not per request
        self._create_where = f"POST {_shown(self._create_url)}"
        # GET /responses/{id} is built by concatenation on this prefix: parsing and joining URLs with httpx
        # cost ~0.1 ms a poll (a third of a poll's CPU in a profile of 2,000 background requests).
        self._responses_prefix = str(self._base.copy_with(query=None, fragment=None).join("responses/"))
        self._session: aiohttp.ClientSession | None = None
        self._transport = transport
        if transport is not None:
            self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]
            self._extensions = {"timeout": httpx.Timeout(timeout, connect=self._connect_timeout).as_dict()}

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._transport is not None:
            await self._transport.aclose()

    def close_idle(self, keep: int) -> int:
        """Close the idle keep-alive connections beyond `keep` (the least recently used first); how many.

        A background run's creates leave about a concurrency's worth of connections idle while it waits for its
        responses, and closing ~750 at the run's end cost 24 ms of CPU on the quiet VM, 80-330 ms of wall time
        on a loaded one, after its last result. Closed while it waits, they cost nothing the run waits for.
        """
        connector = self._session.connector if self._session is not None else None
        pools = getattr(connector, "_conns", None)  # aiohttp's idle connections per host, oldest first
        if not isinstance(pools, dict):
            return 0
        closed = 0
        for idle in pools.values():  # a deque in the aiohttp installed here, a list in older ones: oldest first
            while len(idle) > keep:
                proto, _ = idle.popleft() if isinstance(idle, deque) else idle.pop(0)
                proto.close()
                closed += 1
        return closed

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (aiohttp wants a running event loop)."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=5.0,
            # The same certificates (and SSL_CERT_FILE) as before; loading them costs ~20 ms of CPU, so only
            # when the base URL needs them.
            ssl=httpx.create_ssl_context() if self._base.scheme == "https" else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._header_map,
            # --timeout bounds the whole reply (connect, headers, body), not only the gap between bytes:
            # a server trickling one byte a second must not hold a request and its slot for as long as it likes.
            timeout=aiohttp.ClientTimeout(total=self._total_timeout, sock_connect=self._connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )
        return self._session

    def _too_large(self, status: int, headers: Mapping[str, str]) -> PermanentApiError:
        return PermanentApiError(
            f"the reply body is larger than the limit of {self._max_body} bytes",
            status=status,
            code="reply_too_large",
            request_id=read_request_id(headers.get("x-request-id")),
        )

    async def _send(
        self,
        method: str,
        url: str | yarl.URL,
        where: str | Callable[[], str],
        content: bytes | None = None,
        request_id: str | None = None,
        *,
        creating: bool = False,
        content_type: str | None = None,
    ) -> ApiReply:
        if self._transport is not None:
            return await self._send_httpx(
                method, str(url), content, request_id, creating=creating, content_type=content_type
            )
        session = self._session or self._open()
        extra: dict[str, str] | None = None
        if request_id or content_type:
            extra = {"x-client-request-id": request_id} if request_id else {}
            if content_type:
                extra["content-type"] = content_type
        try:
            async with session.request(method, url, data=content, headers=extra, allow_redirects=False) as response:
                status, headers = response.status, response.headers
                size = response.content_length
                if size is not None and size > self._max_body:
                    raise self._too_large(status, headers)
                if size is not None and "content-encoding" not in headers:
                    raw = await response.read()  # the parser stops at content-length
                else:
                    raw = await self._read_chunks(response.content, status, headers)
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):
                raise _undecodable() from None
            raise classify_exception(exc) from None
        except aiohttp.ClientError as exc:  # a failed connect, even by timing out, is "unreachable"
            raise classify_exception(exc) from None
        except TimeoutError:  # the session's total timeout (an OSError: caught before the others)
            raise TimeoutApiError(f"no complete reply within the timeout of {self._total_timeout:g} s") from None
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None
        return classify_reply(
            status,
            headers,
            raw,
            where=where if callable(where) else lambda: where,
            secret=self._secret,
            create_url=self._create_url if creating and not self._answered else None,
        )

    async def _read_chunks(self, stream: aiohttp.StreamReader, status: int, headers: Mapping[str, str]) -> bytes:
        """A body of unknown length (chunked, or compressed), refusing one over the limit as it comes."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in stream.iter_any():
            size += len(chunk)
            if size > self._max_body:
                raise self._too_large(status, headers)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _send_httpx(
        self,
        method: str,
        url: str,
        content: bytes | None,
        request_id: str | None,
        *,
        creating: bool,
        content_type: str | None = None,
    ) -> ApiReply:
        """The same exchange through an httpx transport (tests inject one)."""
        assert self._transport is not None
        headers = self._headers
        if content_type is not None:
            headers = [(k, content_type.encode() if k == b"content-type" else v) for k, v in headers]
        extra = [(b"x-client-request-id", request_id.encode())] if request_id else []
        request = httpx.Request(method, url, headers=[*headers, *extra], content=content, extensions=self._extensions)
        try:
            with anyio.fail_after(self._total_timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self._max_body:
                            raise self._too_large(response.status_code, response.headers)
                        chunks.append(chunk)
                    raw = b"".join(chunks)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise TimeoutApiError(f"no complete reply within the timeout of {self._total_timeout:g} s") from None
        except httpx.DecodingError:
            # Not a transport error in httpx's tree, but the same kind of thing: the reply came, unusable.
            raise _undecodable() from None
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None
        return classify(
            response,
            raw,
            secret=self._secret,
            request=request,
            create_url=self._create_url if creating and not self._answered else None,
        )

    async def create(self, body: bytes, *, client_request_id: str | None = None) -> ApiReply:
        """POST /responses with a body that is already JSON."""
        reply = await self._send(
            "POST", self._create_target, self._create_where, body, client_request_id, creating=True
        )
        # The endpoint answers: from now on a 404 or 405 from it is about one line (its model, on a server whose
        # words for that we do not know), never a base URL without a Responses API, which stops the whole job.
        self._answered = True
        return reply

    async def retrieve(self, response_id: str) -> ApiReply:
        """GET /responses/{id}."""
        url = self._responses_prefix + quote(response_id, safe="")
        return await self._send("GET", yarl.URL(url, encoded=True), self._named("GET", url))

    @staticmethod
    def _named(method: str, url: str) -> Callable[[], str]:
        """`METHOD URL` for a message, made only when one is (most replies need none)."""
        return lambda: f"{method} {_shown(httpx.URL(url))}"

    async def cancel(self, response_id: str) -> ApiReply:
        """POST /responses/{id}/cancel (idempotent on the API side)."""
        url = self._base.join(f"responses/{quote(response_id, safe='')}/cancel")
        return await self._send("POST", str(url), f"POST {_shown(url)}")

    # -- other endpoints (the Batch API's files and batches), classified the same way ---------------

    async def call(self, method: str, path: str, body: object | None = None) -> ApiReply:
        """`method` on `path` (relative to the base URL, query included) with an optional JSON body."""
        content = None if body is None else orjson.dumps(body)
        url = self._base.join(path)
        return await self._send(method, str(url), f"{method} {_shown(url)}", content)

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
        url = self._base.join(path)
        ctype = f"multipart/form-data; boundary={boundary}"
        return await self._send("POST", str(url), f"POST {_shown(url)}", content, content_type=ctype)

    async def lines(self, path: str, max_line: int = MAX_BODY_BYTES) -> AsyncIterator[bytes]:
        """GET `path` and yield its body line by line as it arrives (a Batch output file can be gigabytes).

        A reply that is not 2xx raises its typed error; a line longer than `max_line` raises PermanentApiError.
        The whole-reply timeout does not apply (a big file takes as long as it takes); a stall of --timeout
        between two reads does.
        """
        url = self._base.join(path)
        where = f"GET {_shown(url)}"
        if self._transport is not None:
            chunks = self._chunks_httpx(str(url), where)
        else:
            chunks = self._chunks_aiohttp(str(url), where)
        # The pieces of the line not ended yet, joined once it ends: adding each chunk to it and splitting it
        # again copied and scanned the whole line per chunk (a 64 MiB line in 64 KB chunks: ~32 GB of work).
        pending: list[bytes] = []
        size = 0
        async with aclosing(chunks) as stream:
            async for chunk in stream:
                parts = chunk.split(b"\n")
                size += len(parts[0])
                if size > max_line:
                    raise PermanentApiError(f"a line of {path} is longer than {max_line} bytes", code="reply_too_large")
                if len(parts) == 1:
                    pending.append(chunk)
                    continue
                yield b"".join((*pending, parts[0])) if pending else parts[0]
                for line in parts[1:-1]:
                    yield line  # whole in one chunk, so no longer than the most aiohttp reads at once
                pending = [parts[-1]] if parts[-1] else []
                size = len(parts[-1])
        if pending:
            yield b"".join(pending)

    async def _chunks_aiohttp(self, url: str, where: str) -> AsyncGenerator[bytes, None]:
        session = self._session or self._open()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout, sock_read=self._total_timeout)
        try:
            async with session.get(url, allow_redirects=False, timeout=timeout) as response:
                status, headers = response.status, response.headers
                if not 200 <= status < 300:
                    raw = await self._read_chunks(response.content, status, headers)
                    classify_reply(status, headers, raw, where=lambda: where, secret=self._secret)
                async for chunk in response.content.iter_any():
                    yield chunk
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):
                raise _undecodable() from None
            raise classify_exception(exc) from None
        except aiohttp.ClientError as exc:
            raise classify_exception(exc) from None
        except TimeoutError:
            raise TimeoutApiError(f"{where}: no data for {self._total_timeout:g} s") from None
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None

    async def _chunks_httpx(self, url: str, where: str) -> AsyncGenerator[bytes, None]:
        assert self._transport is not None
        request = httpx.Request("GET", url, headers=self._headers, extensions=self._extensions)
        try:
            response = await self._transport.handle_async_request(request)
        except TRANSPORT_ERRORS as exc:
            raise classify_exception(exc) from None
        try:
            if not 200 <= response.status_code < 300:
                raw = b"".join([c async for c in response.aiter_bytes()])[: self._max_body]
                classify(response, raw, secret=self._secret, request=request)
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            except TRANSPORT_ERRORS as exc:
                raise classify_exception(exc) from None
        finally:
            await response.aclose()


def _undecodable() -> TransientApiError:
    return TransientApiError(
        "the reply's body could not be decoded (its content-encoding does not match it)",
        code="invalid_response_body",
    )


__all__ = [
    "ApiClient",
    "ApiError",
    "ApiReply",
    "classify",
    "classify_exception",
    "classify_reply",
    "is_billing_code",
    "parse_retry_after",
]
