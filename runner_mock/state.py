"""What one server instance remembers: its knobs, the fault RNG, stored responses, counters and rate windows.

This is also the ledger behind `GET /_mock/stats`: requests, faults and usage are counted here, and usage
is counted exactly once per response, the first time it is shown finished.

Rate limits (`rpm`, `tpm`) are enforced over one-second windows of `rpm // 60` requests and
`tpm // 60` tokens, like providers that meter per second. In the `x-ratelimit-*` headers `limit`
is the per-minute figure, while `remaining` and `reset` describe the current one-second window:
`remaining` is what can still be sent before a 429, `reset` is when the window refills.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from runner_mock.cache import PromptCache
from runner_mock.knobs import Config

__all__ = ["MAX_STORED", "STATE_KEY", "MockState", "Record", "format_duration", "status_of"]

# Without limits the headers still describe a plausible, never-binding budget.
NOTIONAL_RPM = 1_000_000
NOTIONAL_TPM = 100_000_000

# Stored responses are capped so a long benchmark cannot grow memory without bound; the oldest go first,
# the way the real service forgets background responses after a while.
MAX_STORED = 100_000

TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
_FROZEN: dict[str, Any] = {}


def format_duration(seconds: float) -> str:
    """Format seconds like Go's time.Duration: `20ms`, `1s`, `14.981s`, `6m0s`, `1h0m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Record:
    """One stored response, advanced lazily from its creation time when it is looked at."""

    __slots__ = ("background", "body", "created_mono", "delay", "final", "raw")

    def __init__(self, body: dict[str, Any], background: bool, delay: float, final: dict[str, Any]) -> None:
        self.body = body
        self.background = background
        self.created_mono = time.monotonic()
        self.delay = delay
        # Fields the body takes on when a background response finishes (status, output, usage, ...).
        self.final = final
        # Once a response has been shown finished it never changes again, so it is kept encoded: this is
        # cheaper to serve and several times smaller than the dict. Set exactly when usage was counted.
        self.raw: bytes | None = None

    def advance(self) -> str:
        """Bring a background record's status up to date from the clock and return it."""
        body = self.body
        status: str = body["status"]
        if status == "queued" or status == "in_progress":
            elapsed = time.monotonic() - self.created_mono
            if elapsed >= self.delay:
                body.update(self.final)
                status = body["status"]
            elif elapsed >= self.delay / 2:
                status = body["status"] = "in_progress"
        return status


def status_of(record: Record) -> str:
    """A stored response's status now (one shown finished is kept only encoded)."""
    if record.raw is not None:
        status = orjson.loads(record.raw).get("status")
        return status if isinstance(status, str) else "unknown"
    return record.advance()


class MockState:
    """Everything one server instance remembers: config, RNG, stored responses, counters, windows."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.responses: OrderedDict[str, Record] = OrderedDict()
        self.creates = 0
        self.gets = 0
        self.cancels = 0
        self.faults: dict[str, int] = {"429": 0, "5xx": 0, "drop": 0, "quota": 0, "401": 0, "404": 0, "capacity": 0}
        self.tiers: dict[str, int] = {}  # creates answered, by the service_tier they ran on
        self.creates_by_key: dict[str, int] = {}
        self.usage: dict[str, int] = {
            "input_tokens": 0,
            "cached_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 0,
        }
        # Every create that continued a stored response: its id, the id it continued and that one's status
        # when the create came (the ledger of chains; capped like the stored responses).
        self.continued: list[dict[str, str]] = []
        self.cache = PromptCache(config)
        self.window = -1
        self.window_requests = 0
        self.window_tokens = 0
        # A per-process prefix keeps ids unique across restarts; the counter keeps them cheap.
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    def new_id(self, kind: str) -> str:
        """Return a fresh id such as `resp_<48 hex>`."""
        return f"{kind}_{self._prefix}{next(self._ids):032x}"

    def stats(self) -> dict[str, Any]:
        """The `/_mock/stats` document."""
        return {
            "creates": self.creates,
            "gets": self.gets,
            "cancels": self.cancels,
            "faults": dict(self.faults),
            "creates_by_key": dict(self.creates_by_key),
            "tiers": dict(self.tiers),
            "usage": dict(self.usage),
            "continued": list(self.continued),
            "cache": self.cache.stats(),
        }

    def note_continued(self, rid: str, previous: str, previous_status: str) -> None:
        """Add a create that continued `previous` to the ledger."""
        self.continued.append({"id": rid, "previous_response_id": previous, "previous_status": previous_status})
        if len(self.continued) > MAX_STORED:
            del self.continued[: len(self.continued) - MAX_STORED]

    def store(self, rid: str, record: Record) -> None:
        """Remember a response, forgetting the oldest ones past `MAX_STORED`."""
        self.responses[rid] = record
        if len(self.responses) > MAX_STORED:
            self.responses.popitem(last=False)

    def shown(self, record: Record) -> bytes:
        """Encode the record as it is now; the first time it is shown finished, add its usage to the totals."""
        if record.raw is not None:
            return record.raw
        if record.advance() not in TERMINAL:
            return orjson.dumps(record.body)
        usage = record.body["usage"]
        if usage is not None:
            self.count_usage(usage)
        # orjson's buffer is several KiB whatever the size of the JSON; keep an exact-size copy instead.
        record.raw = raw = bytes(memoryview(orjson.dumps(record.body)))
        # Only `raw` is read from now on; dropping the dicts keeps a long run's memory small.
        record.body = record.final = _FROZEN
        return raw

    def count_usage(self, usage: dict[str, Any]) -> None:
        """Add one answered response's usage to the ledger."""
        totals = self.usage
        totals["input_tokens"] += usage["input_tokens"]
        totals["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
        totals["output_tokens"] += usage["output_tokens"]
        totals["reasoning_tokens"] += usage["output_tokens_details"]["reasoning_tokens"]
        totals["total_tokens"] += usage["total_tokens"]

    # -- rate limits -------------------------------------------------------------------------------

    def _roll(self, now: float) -> int:
        w = math.floor(now)
        if w != self.window:
            self.window = w
            self.window_requests = 0
            self.window_tokens = 0
        return w

    def limit_headers(self, now: float) -> dict[str, str]:
        """The six `x-ratelimit-*` headers for the current window."""
        w = self._roll(now)
        rpm, tpm = self.config.rpm or NOTIONAL_RPM, self.config.tpm or NOTIONAL_TPM
        req_cap, tok_cap = max(1, rpm // 60), max(1, tpm // 60)
        reset = format_duration(w + 1 - now)
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, req_cap - self.window_requests)),
            "x-ratelimit-reset-requests": reset if self.window_requests else "0s",
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(max(0, tok_cap - self.window_tokens)),
            "x-ratelimit-reset-tokens": reset if self.window_tokens else "0s",
        }

    def charge(self, now: float, tokens: int) -> str | None:
        """Take one request and `tokens` from the window; return "requests"/"tokens" if over a limit."""
        self._roll(now)
        rpm, tpm = self.config.rpm, self.config.tpm
        if rpm and self.window_requests + 1 > max(1, rpm // 60):
            return "requests"
        # A request bigger than one window still goes through alone, or it could never succeed.
        if tpm and self.window_tokens and self.window_tokens + tokens > max(1, tpm // 60):
            return "tokens"
        self.window_requests += 1
        self.window_tokens += tokens
        return None


STATE_KEY = web.AppKey("mock_state", MockState)
