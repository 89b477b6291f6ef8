"""The options, live figures and verdict of a run: no HTTP stack here, so `app` and the display import them cheaply."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from runner.errors import BillingError, DoomedJobError
from runner.states import RequestState

if TYPE_CHECKING:
    from runner.store.models import Outcome

if TYPE_CHECKING:
    from runner.budget import Budget


class StopReason(StrEnum):
    """Why a run ended."""

    DONE = "done"
    BILLING = "billing"
    DOOMED = "doomed"  # bad key, wrong base URL, server unreachable: nothing of the job could succeed
    BUDGET = "budget"  # the next request would have passed --max-cost
    INTERRUPTED = "interrupted"


def default_poll_slots(concurrency: int) -> int:
    """Background polls in flight at once unless set: the concurrency, at least 4 and at most 256."""
    return max(4, min(concurrency, 256))


@dataclass
class RunOptions:
    """Knobs of one run."""

    concurrency: int
    max_attempts: int
    lease_seconds: float
    grace: float
    rpm: float | None = None
    tpm: float | None = None
    poll_concurrency: int | None = None
    repair: int = 0  # a completed answer failing its structured-output check is asked again up to this often
    flex: bool = False  # the flex lane: service_tier "flex", patient capacity retries
    flex_fallback: float | None = None  # seconds unanswered on flex before a request goes to the default tier
    rate_budget: str | None = None  # the shared rate budget's name (API endpoint and salted key hash), for a fleet
    poll_patience: float = 0.0  # seconds a background response's GETs must fail in a row before it is given up

    @property
    def poll_slots(self) -> int:
        """Background polls in flight at once (each holds a connection beside the `concurrency` sends)."""
        return self.poll_concurrency or default_poll_slots(self.concurrency)


@dataclass
class Snapshot:
    """Live figures of a run, for the progress display."""

    total: int = 0
    done: int = 0
    completed: int = 0
    incomplete: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    polling: int = 0
    retries: int = 0
    rate_limited: int = 0
    tokens: int = 0
    concurrency: int = 0
    max_concurrency: int = 0  # the --concurrency asked for; `concurrency` is what adaptive control allows now
    concurrency_reason: str | None = None  # why `concurrency` is below the maximum, in plain words
    pauses: int = 0
    done_before: int = 0  # requests of these jobs already final when this run started
    notice: str | None = None  # the latest long or capped wait, in plain words (also said once on stderr)
    stopping: bool = False  # a SIGINT/SIGTERM/SIGHUP came: no new sends, in-flight requests are draining
    grace_deadline: float | None = None  # time.monotonic() when the drain gives up on in-flight requests
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def count_outcome(s: Snapshot, o: Outcome) -> None:
    """Add one outcome to the live figures of a run."""
    if o.rate_limited:
        s.rate_limited += 1
    if o.to is RequestState.QUEUED:
        # A requeue that used up no attempt (no flex capacity, server unreachable, a stop) is no retry: the store
        # does not count it, and `runner status` said "0 retries" where this run's own line said "retries 4".
        if not o.refund_attempt:
            s.retries += 1
        return
    s.done += 1
    s.tokens += o.usage.total_tokens
    if o.to is RequestState.COMPLETED:
        s.completed += 1
    elif o.to is RequestState.INCOMPLETE:
        s.incomplete += 1
    elif o.to is RequestState.FAILED:
        s.failed += 1
    elif o.to is RequestState.CANCELLED:
        s.cancelled += 1


@dataclass
class RunResult:
    """How a run ended."""

    reason: StopReason
    billing_error: BillingError | None = None
    snapshot: Snapshot = field(default_factory=Snapshot)
    doomed_error: DoomedJobError | None = None
    detached: bool = False  # the batch lane's --detach: batches created and left open for a later run
    batches_open: int = 0  # batches of these jobs still open when the run ended
    problems: list[str] = field(default_factory=list)  # failed batches, one line each (the run exits 1)
    budget: Budget | None = None  # a budget stop: what was spent, the limit, an unpriced model
