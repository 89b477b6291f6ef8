"""Request states, the named sets of them, and which changes are allowed."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class RequestState(StrEnum):
    """Where one line of a job is."""

    QUEUED = "queued"  # waiting to be claimed (maybe not before next_attempt_at)
    IN_PROGRESS = "in_progress"  # leased by a runner; with a response_id it is polled, never re-sent
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"  # the API stopped early (max_output_tokens, content_filter): a result
    FAILED = "failed"
    CANCELLED = "cancelled"


# The error code of a background request whose response could not be read back: its GETs failed with a
# transient error (5xx, a timeout) --max-attempts times in a row. It keeps its response id, and `runner retry`
# hands it back to be polled, not created (and paid for) a second time. Here because worker and store need it.
POLL_FAILED: Final = "poll_failed"


TERMINAL: frozenset[RequestState] = frozenset(
    {RequestState.COMPLETED, RequestState.INCOMPLETE, RequestState.FAILED, RequestState.CANCELLED}
)
ACTIVE: frozenset[RequestState] = frozenset({RequestState.QUEUED, RequestState.IN_PROGRESS})
RESULTS: frozenset[RequestState] = frozenset({RequestState.COMPLETED, RequestState.INCOMPLETE})


def count(counts: Mapping[str, int], *states: RequestState) -> int:
    """How many requests of `counts` (state name -> number, as the store reports them) are in `states`."""
    return sum(counts.get(s.value, 0) for s in states)


# to-state -> the states it may come from. The store puts these in the WHERE clause of each UPDATE.
ALLOWED_FROM: dict[RequestState, frozenset[RequestState]] = {
    RequestState.QUEUED: frozenset({RequestState.IN_PROGRESS, RequestState.FAILED}),
    RequestState.IN_PROGRESS: frozenset({RequestState.QUEUED, RequestState.IN_PROGRESS}),
    RequestState.COMPLETED: frozenset({RequestState.IN_PROGRESS}),
    RequestState.INCOMPLETE: frozenset({RequestState.IN_PROGRESS}),
    # From queued: a line whose parent (the response it continues, runner/chains.py) ended without one it can
    # continue fails unsent, with `parent_failed`.
    RequestState.FAILED: frozenset({RequestState.IN_PROGRESS, RequestState.QUEUED}),
    RequestState.CANCELLED: frozenset({RequestState.QUEUED, RequestState.IN_PROGRESS}),
}


def can_move(from_: RequestState, to: RequestState) -> bool:
    """Whether a request in `from_` may move to `to`."""
    return from_ in ALLOWED_FROM[to]


class JobStatus(StrEnum):
    """A job's status, derived from its requests."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"  # every request terminal (some may have failed: see counts)
    CANCELLED = "cancelled"
