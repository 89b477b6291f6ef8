"""Every error the runner raises on purpose.

    RunnerError
    ├── ConfigError                 bad flag, env var or setting
    ├── InputError                  a bad JSONL file (path, and one LineProblem per bad line)
    │   └── InputErrors             several files of one submit, some bad (one InputError each)
    ├── JobNotFound                 no job with that id
    │   └── RequestNotFound         the job holds no request with that custom_id
    ├── StoreError                  the job store refused or failed
    │   ├── IllegalTransition       a state change the row's current state does not allow
    │   ├── LeaseLost               another process owns the row now
    │   └── StoreUnavailable        the store file cannot be used where it is (an environment problem)
    │       ├── StoreMissing        a command that only reads or changes a store found none
    │       └── StoreReplaced       the file was deleted or replaced while a run was using it
    ├── JobBusy                     a job that a live runner is working on cannot be deleted
    └── ApiError                    an HTTP outcome that is not a result (status, code, message, request id)
        ├── TransientApiError       worth retrying later (retry_after: minimum wait, if the server gave one)
        │   ├── UnreachableError    no connection at all (refused, no such host, TLS failed): `reason` says why
        │   ├── DroppedError        the connection closed before any reply: the request may have reached the API
        │   └── CapacityError       the flex tier is short of capacity (429 resource_unavailable): not billed,
        │                           not a rate limit; retried patiently without shrinking the pool
        ├── PermanentApiError       retrying cannot help; the request fails
        ├── BillingError            quota / spend limit: stop the whole run, keep the work queued
        └── DoomedJobError          no request of the job can succeed as configured (bad key, wrong base URL,
                                    server unreachable): stop the run, keep the work queued, exit 5

Only `client.classify` creates ApiErrors (and the worker a DoomedJobError when the server stays
unreachable); everything else branches on these types, never on strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runner.term import printable


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
        # Field names and reasons quote the file (keys, custom_ids): never let them drive the terminal.
        where = f" field {printable(self.field)}:" if self.field else ""
        return f"line {self.line}:{where} {printable(self.reason)}"


class InputError(RunnerError):
    """An input file is invalid; nothing was queued."""

    MAX_SHOWN = 20
    MAX_SHOWN_WITH_HINT = 3  # a hint names the file's real problem; a few examples of it are enough

    def __init__(
        self,
        path: str,
        problems: list[LineProblem],
        bad_lines: int | None = None,
        *,
        hint: str | None = None,
        consequence: str = "nothing was queued",
    ) -> None:
        self.path = path
        self.consequence = consequence
        self.problems = problems
        self.bad_lines = bad_lines if bad_lines is not None else len({p.line for p in problems})
        self.hint = hint  # one sentence about the whole file, shown first (e.g. "this looks like ...")
        super().__init__(self.render())

    def render(self) -> str:
        """The message for stderr: the file, then one problem per line, up to MAX_SHOWN lines."""
        path = printable(self.path)
        whole_file = [p for p in self.problems if p.line == 0]
        if whole_file and not self.bad_lines:  # no such file, an empty file: nothing about lines to say
            return "\n".join(f"{path}: {printable(p.reason)}; {self.consequence}" for p in whole_file)
        out = [f"{path}: {printable(self.hint)}"] if self.hint else []
        out.append(f"{path}: {self.bad_lines} invalid line(s); {self.consequence}")
        limit = self.MAX_SHOWN_WITH_HINT if self.hint else self.MAX_SHOWN
        shown_lines: set[int] = set()
        # Problems are found in more than one pass (a repeated custom_id only at insert time): show by line.
        for p in sorted(self.problems, key=lambda p: p.line):
            if p.line not in shown_lines and len(shown_lines) >= limit:
                continue
            shown_lines.add(p.line)
            out.append(f"{path}:{p}")
        if self.bad_lines > len(shown_lines):
            out.append(f"... and {self.bad_lines - len(shown_lines)} more invalid line(s)")
        return "\n".join(out)


class InputErrors(InputError):
    """Several input files were given and some are invalid; none of them was queued."""

    def __init__(self, errors: list[InputError], files: int) -> None:
        self.errors = errors
        self.files = files
        super().__init__(", ".join(e.path for e in errors), [p for e in errors for p in e.problems])

    def render(self) -> str:
        """Each invalid file's message, then one line saying that no file was queued."""
        blocks = [e.render() for e in self.errors]
        blocks.append(f"{len(self.errors)} of {self.files} input files are invalid; no file was queued")
        return "\n".join(blocks)


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


class StoreUnavailable(StoreError):
    """The store file cannot be opened, created or written where it is (permissions, a read-only disk)."""

    def __init__(self, path: str, reason: str, message: str | None = None) -> None:
        self.path = path
        self.reason = reason
        # The path escaped: a line break in it made a one-line error two lines.
        super().__init__(message or f"cannot use the store {printable(path)}: {reason}")


class StoreMissing(StoreUnavailable):
    """A command that needs an existing store found no file, or a file that holds no store (`found`)."""

    def __init__(self, path: str, found: str | None = None) -> None:
        # Most often the command ran in another directory than the one that made the store.
        where = f"{printable(path)}: {found}" if found else printable(path)
        super().__init__(
            path, found or "no such file", f"no store at {where} (run `runner submit FILE` first, or pass --db)"
        )


class StoreReplaced(StoreUnavailable):
    """The store file was deleted or replaced under a running run; what the run wrote since went nowhere."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(
            path,
            what,
            f"the store {printable(path)} was {what} while this run was using it; stopped at once. Results received"
            " since then are lost: put the store back, or start again, with `runner run`",
        )


class JobBusy(RunnerError):
    """A job cannot be deleted while a live runner works on it."""

    def __init__(self, job_id: str, owners: list[str]) -> None:
        self.job_id = job_id
        self.owners = owners
        super().__init__(
            f"job {job_id} is being run by {', '.join(owners)}; stop that runner (or wait for it) before deleting"
        )


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

    def __init__(
        self, message: str, *, retry_after: float | None = None, retry_after_asked: float | None = None, **kw: object
    ) -> None:
        self.retry_after = retry_after
        self.retry_after_asked = retry_after_asked  # what the server asked for, before the cap (to say so)
        super().__init__(message, **kw)  # type: ignore[arg-type]


class PermanentApiError(ApiError):
    """A failure that retrying cannot fix."""


class BillingError(ApiError):
    """The account is out of quota or over a spend limit; the run stops and work stays queued."""


class UnreachableError(TransientApiError):
    """No connection to the server: the request never reached the API."""

    def __init__(self, message: str, *, reason: str, **kw: object) -> None:
        self.reason = reason  # plain words with the likely fix, e.g. "connection refused; is the server up?"
        super().__init__(message, **kw)  # type: ignore[arg-type]


class DroppedError(TransientApiError):
    """The server closed the connection before any reply came (not a failure to connect: that is unreachable).

    The request may have reached the API, so it uses up its attempt. Before the server has answered anything
    in a run, a streak of these counts toward the doomed-job stop: a TLS server sent plain HTTP (http:// for
    https://) closes every connection this way.
    """


class CapacityError(TransientApiError):
    """The flex tier has no capacity now (a 429 such as `resource_unavailable`): not billed, not a rate limit.

    Retrying later, or on the default tier, helps; shrinking the pool does not (the limit is the provider's
    capacity, not this account's rate).
    """


class TimeoutApiError(TransientApiError):
    """No complete reply in time; like a 429 it says the server is overloaded, so concurrency shrinks."""

    CODE = "timeout"  # the error code stored with the attempt and exported

    def __init__(self, message: str, **kw: object) -> None:
        kw.setdefault("code", self.CODE)
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ConnectTimeoutError(UnreachableError, TimeoutApiError):
    """No answer to the connection attempt: unreachable (counts towards the doomed-job stop) and a timeout."""


class DoomedJobError(ApiError):
    """No request of the job can succeed as configured; the run stops and the work stays queued.

    The message is one line naming the cause and the fix, and never holds the API key.
    """
