"""Settings from flags and the environment, and the named defaults they fall back to."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DB = "runner.db"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONCURRENCY = 64
# Upper bounds of settings, so a typo (an extra zero) is an error rather than a run that cannot work.
MAX_CONCURRENCY = 10_000
MAX_MAX_ATTEMPTS = 100
MAX_TIMEOUT = 86_400.0  # a day
MAX_GRACE_SECONDS = 3_600.0
MAX_REPAIR = 10  # answers asked again per request for a failed structured-output check
MAX_PROCESSES = 64  # worker processes of one `runner run` (--processes): more is a typo, not a machine
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT = 600.0  # seconds per HTTP request; long generations take minutes
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_LEASE_SECONDS = 60.0  # a claimed request is reclaimable this long after its owner went silent
DEFAULT_GRACE_SECONDS = 30.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0
MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is capped, not obeyed blindly
POLL_INITIAL_DELAY = 1.0
POLL_MAX_DELAY = 30.0
POLL_BACKOFF = 1.5
DEFAULT_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
FLEX_TIMEOUT = 900.0  # the flex tier is slower: OpenAI advises a 15-minute client timeout
BATCH_MAX_LINES = 50_000  # the Batch API's limits per input file
BATCH_MAX_BYTES = 200 * 1024 * 1024
# Letters, digits and . _ - only: a host id is the first `:`-separated part of a lease owner.
HOST_ID_PATTERN = r"^[A-Za-z0-9._-]+$"
WRITE_BATCH_WINDOW = 0.01  # seconds a finished result may wait to share a commit (its slot waits too)


def control_at(text: str) -> int | None:
    """The 1-based position of the first control character in `text`, if any."""
    return next((i + 1 for i, ch in enumerate(text) if ch < " " or ch == "\x7f"), None)


def name_problem(name: str) -> str | None:
    """What makes `name` unfit to name a job (a control character: a job name is shown in tables, used in file
    names through {job}, and a NUL cannot be stored on PostgreSQL), or None."""
    bad = control_at(name)
    return None if bad is None else f"must not hold a control character (one at position {bad})"


def key_problem(key: str) -> str | None:
    """What makes `key` impossible to send, in one line that does not show it; None if nothing does."""
    if control_at(key) is None:
        return None
    # Sent, it crashed the run (aiohttp refuses a line break in a header). No position: it would tell the length
    # of the key's part before the character.
    return (
        "OPENAI_API_KEY (or --api-key) has a control character inside: no HTTP header can carry it"
        " (check how the key was copied)"
    )


def base_url_problem(base_url: str, *, key_in_authorization: bool) -> str | None:
    """What is wrong with a base URL, in one line that never shows a password the URL holds; None when
    nothing is. Checked before a run says which jobs start, and again by the client (the Python API)."""
    if not base_url[:8].lower().startswith(("http://", "https://")):  # a scheme's case does not matter
        shown = re.sub(r"//[^/@]*@", "//", base_url)  # `ftp://user:pw@host` is refused: not its password too
        return f"base URL must start with http:// or https:// (got {shown!r})"
    if control_at(base_url) is not None:  # httpx refused it only at the first request, as a traceback
        # No position: counted in the URL, it would tell the length of a password the URL holds.
        return "base URL has a control character in it: a URL cannot hold it (check how it was set)"
    try:  # what aiohttp would only find at the first request, as a traceback out of every sender
        parts = urlsplit(base_url)
        host, _ = parts.hostname, parts.port
    except ValueError as e:
        return f"base URL is not a valid URL: {e}"
    if not host:
        return "base URL names no host"
    if parts.query or parts.fragment or base_url.endswith(("?", "#")):
        # Joined with `responses`, a query or fragment would swallow the path (POST /responses on the
        # host's root, then a 404 that blames a missing /v1 the URL has).
        return (
            "base URL must not have a query (?...) or fragment (#...), which may hold a key and so are not"
            " shown; use a URL that ends in /v1, such as https://api.openai.com/v1"
        )
    if (parts.username is not None or parts.password is not None) and key_in_authorization:
        # aiohttp sends them as Basic auth, which it refuses beside the key's own Authorization header: a
        # traceback out of every sender. Without a key (or with --auth-style api-key) they work as they are.
        return (
            "base URL holds a user name or password (user:password@host) and the key goes in the Authorization"
            " header too; only one can: drop one, or send the key with --auth-style api-key"
        )
    return None


class AuthStyle(StrEnum):
    """How the API key travels."""

    BEARER = "bearer"  # Authorization: Bearer <key> (OpenAI)
    RAW = "raw"  # Authorization: <key> (some proxies)
    API_KEY = "api-key"  # api-key: <key> (Azure)


class Lane(StrEnum):
    """How a job's requests reach the API: one at a time (sync, flex) or as Batch API files (batch)."""

    SYNC = "sync"  # POST /responses at the default tier (today's behaviour)
    FLEX = "flex"  # POST /responses with service_tier "flex": Batch prices, slower, capacity 429s
    BATCH = "batch"  # the Batch API: input files, batches polled until done, results merged by custom_id


LANES: Final = tuple(lane.value for lane in Lane)
# The formats of `runner export` (runner/export.py writes them). Here, not there, because the CLI offers them
# as choices when it builds its parser, for every command: export's own imports are paid by `runner export` only.
FORMATS: Final = ("batch", "jsonl-flat", "csv", "parquet")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `500ms` -> seconds; ValueError (a plain sentence) otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration (for example 90s, 15m, 1h)")
    seconds = float(m[1]) * _UNIT[m[2]]
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration (for example 90s, 15m, 1h)")
    return seconds


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything `runner run` needs; flags override the environment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    db: str = Field(DEFAULT_DB, validation_alias=_env("db", "RUNNER_DB"))
    base_url: str = Field(DEFAULT_BASE_URL, validation_alias=_env("base_url", "OPENAI_BASE_URL"))
    api_key: SecretStr | None = Field(None, validation_alias=_env("api_key", "OPENAI_API_KEY"))
    auth_style: AuthStyle = Field(AuthStyle.BEARER, validation_alias=_env("auth_style", "RUNNER_AUTH_STYLE"))
    concurrency: int = Field(
        DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY, validation_alias=_env("concurrency", "RUNNER_CONCURRENCY")
    )
    max_attempts: int = Field(
        DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_MAX_ATTEMPTS, validation_alias=_env("max_attempts", "RUNNER_MAX_ATTEMPTS")
    )
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT, validation_alias=_env("timeout", "RUNNER_TIMEOUT"))
    lease_seconds: float = Field(
        DEFAULT_LEASE_SECONDS, gt=0, validation_alias=_env("lease_seconds", "RUNNER_LEASE_SECONDS")
    )
    grace: float = Field(
        DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS, validation_alias=_env("grace", "RUNNER_GRACE")
    )
    # Worker processes of one run on one store (runner/processes.py); they split `concurrency` between them.
    processes: int = Field(1, ge=1, le=MAX_PROCESSES, validation_alias=_env("processes", "RUNNER_PROCESSES"))
    # A completed answer failing its structured-output check is asked again, up to this often per request.
    repair: int = Field(0, ge=0, le=MAX_REPAIR, validation_alias=_env("repair", "RUNNER_REPAIR"))
    rpm: float | None = Field(None, gt=0, validation_alias=_env("rpm", "RUNNER_RPM"))
    tpm: float | None = Field(None, gt=0, validation_alias=_env("tpm", "RUNNER_TPM"))
    # A TOML price table over the shipped one (`--prices` wins); empty means the shipped table alone.
    prices: str | None = Field(None, validation_alias=_env("prices", "RUNNER_PRICES"))
    # USD the jobs of a run may cost in all (runner/budget.py); None: no budget.
    max_cost: float | None = Field(None, gt=0, validation_alias=_env("max_cost", "RUNNER_MAX_COST"))
    # Logging (stderr): the least severe level shown (None: warning, or debug with -v), and text or JSON lines.
    log_level: Literal["debug", "info", "warning", "error"] | None = Field(
        None, validation_alias=_env("log_level", "RUNNER_LOG_LEVEL")
    )
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format", "RUNNER_LOG_FORMAT"))
    lane: Lane = Field(Lane.SYNC, validation_alias=_env("lane", "RUNNER_LANE"))
    # flex: seconds after which a request still unanswered on flex is sent on the default tier (None: never)
    flex_fallback: float | None = Field(
        None, gt=0, le=MAX_TIMEOUT, validation_alias=_env("flex_fallback", "RUNNER_FLEX_FALLBACK")
    )
    batch_max_lines: int = Field(
        BATCH_MAX_LINES, ge=1, le=BATCH_MAX_LINES, validation_alias=_env("batch_max_lines", "RUNNER_BATCH_MAX_LINES")
    )
    # Who this machine is in lease owners (`host:pid:…`) and in `runner status`: tests and containers that
    # share a hostname set it; the same-host dead-pid shortcut applies only to owners with this host id.
    host_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=HOST_ID_PATTERN,
        validation_alias=_env("host_id", "RUNNER_HOST_ID"),
    )
    progress_every: float = Field(
        DEFAULT_PROGRESS_EVERY, ge=0, validation_alias=_env("progress_every", "RUNNER_PROGRESS_EVERY")
    )

    @field_validator("api_key", "base_url", mode="before")
    @classmethod
    def _trimmed(cls, value: Any) -> Any:
        """Without the white space around it: a key or URL read from a file (a Kubernetes secret, a key file
        pasted with its line end) ends with a newline, which no HTTP header or URL can carry."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("flex_fallback", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """RUNNER_FLEX_FALLBACK=15m as well as a number of seconds."""
        return parse_duration(value) if isinstance(value, str) else value


def env_name(field: str) -> str | None:
    """The environment variable a `Settings` field is read from (for error messages), if it has one."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if not isinstance(alias, AliasChoices):
        return None
    return next((c for c in alias.choices if isinstance(c, str) and c.isupper()), None)
