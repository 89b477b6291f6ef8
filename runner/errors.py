"""Every error the runner raises on purpose.

    RunnerError
    ├── ConfigError                 bad flag, env var or setting
    ├── InputError                  a bad JSONL file (path, and one LineProblem per bad line)
    ├── JobNotFound                 no job with that id
    │   └── RequestNotFound         the job holds no request with that custom_id
    ├── StoreError                  the job store refused or failed
    │   ├── IllegalTransition       a state change the row's current state does not allow
    │   └── LeaseLost               another process owns the row now
    └── ApiError                    an HTTP outcome that is not a result (status, code, message, request id)
        ├── TransientApiError       worth retrying later (retry_after: minimum wait, if the server gave one)
        ├── PermanentApiError       retrying cannot help; the request fails
        └── BillingError            quota / spend limit: stop the whole run, keep the work queued

Only `client.classify` creates ApiErrors; everything else branches on these types, never on strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class RunnerError(Exception):
    """The runner failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(RunnerError):
    """A setting is invalid."""


@dataclass(frozen=True)
class LineProblem:
    """One thing wrong with one line of an input file."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f" field {self.field}:" if self.field else ""
        return f"line {self.line}:{where} {self.reason}"


class InputError(RunnerError):
    """An input file is invalid; nothing was queued."""

    MAX_SHOWN = 20

    def __init__(self, path: str, problems: list[LineProblem], bad_lines: int | None = None) -> None:
        self.path = path
        self.problems = problems
        self.bad_lines = bad_lines if bad_lines is not None else len({p.line for p in problems})
        super().__init__(self.render())

    def render(self) -> str:
        """The message for stderr: the file, then one problem per line, up to MAX_SHOWN lines."""
        whole_file = [p for p in self.problems if p.line == 0]
        if whole_file and not self.bad_lines:  # no such file, an empty file: nothing about lines to say
            return "\n".join(f"{self.path}: {p.reason}; nothing was queued" for p in whole_file)
        out = [f"{self.path}: {self.bad_lines} invalid line(s); nothing was queued"]
        shown_lines: set[int] = set()
        # Problems are found in more than one pass (a repeated custom_id only at insert time): show by line.
        for p in sorted(self.problems, key=lambda p: p.line):
            if p.line not in shown_lines and len(shown_lines) >= self.MAX_SHOWN:
                continue
            shown_lines.add(p.line)
            out.append(f"{self.path}:{p}")
        if self.bad_lines > len(shown_lines):
            out.append(f"... and {self.bad_lines - len(shown_lines)} more invalid line(s)")
        return "\n".join(out)


class JobNotFound(RunnerError):
    """No such job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class RequestNotFound(JobNotFound):
    """No request with that custom_id in the job.

    A subclass of JobNotFound: both are a name the user gave that the store does not hold, and both are
    answered the same way (exit 2).
    """

    def __init__(self, job_id: str, custom_id: str) -> None:
        self.job_id = job_id
        self.custom_id = custom_id
        RunnerError.__init__(self, f"job {job_id} has no request with custom_id {custom_id!r}")


class StoreError(RunnerError):
    """The job store failed."""


class IllegalTransition(StoreError):
    """A request is not in a state it may change from."""

    def __init__(self, request_id: int, to: str, allowed_from: frozenset[str] | set[str]) -> None:
        self.request_id = request_id
        self.to = to
        self.allowed_from = frozenset(allowed_from)
        super().__init__(
            f"request {request_id}: cannot move to {to!r}; it is not in {sorted(self.allowed_from)}"
            " (or no longer leased by this process)"
        )


class LeaseLost(StoreError):
    """Another process owns this request now."""


class ApiError(RunnerError):
    """The API answered with something that is not a result."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: object = None,
        rate_limits: Mapping[str, str] | None = None,
    ) -> None:
        self.rate_limits: Mapping[str, str] = rate_limits or {}
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.body = body
        super().__init__(message)

    def describe(self) -> str:
        """One line for logs: status, code, message, request id."""
        parts = [str(self.status) if self.status is not None else "no response"]
        if self.code:
            parts.append(self.code)
        parts.append(self.message)
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(parts)


class TransientApiError(ApiError):
    """A failure worth retrying after a wait."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class PermanentApiError(ApiError):
    """A failure that retrying cannot fix."""


class BillingError(ApiError):
    """The account is out of quota or over a spend limit; the run stops and work stays queued."""
