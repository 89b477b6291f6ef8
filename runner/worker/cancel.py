"""Cancelling a job's background responses through the API (`runner cancel`), many at once.

The store has already cancelled the job's queued requests and marked the job cancelled; what is left are
requests whose background response is running on the API side. Each gets a cancel (up to
CANCEL_CONCURRENCY at a time), and the state the API answers with is recorded at once, so the count
reported is the count `runner status` shows. A `runner run` polling the same responses finds them finished
and records nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from runner.client import ApiClient
from runner.errors import ApiError, DoomedJobError
from runner.reply import read_id
from runner.states import RequestState
from runner.store import Store
from runner.worker.outcomes import final_outcome, is_running

log = logging.getLogger(__name__)

CANCEL_CONCURRENCY = 32  # cancels in flight at once: 100 take about one round trip x 4, not 100


@dataclass
class CancelTally:
    """What the API said to the cancels of one job's background responses."""

    cancelled: int = 0  # the API cancelled it, and the store says so now
    finished_first: int = 0  # it had ended before the cancel reached it; recorded as it ended
    still_running: int = 0  # the API accepted the cancel but still reports it running; a later poll records it
    failures: list[str] = field(default_factory=list)  # "response id: why", one per cancel the API refused
    doomed: DoomedJobError | None = None  # a bad key or base URL: the remaining cancels were not sent


async def cancel_background(
    store: Store,
    client: ApiClient,
    responses: Sequence[tuple[int, str]],
    *,
    concurrency: int = CANCEL_CONCURRENCY,
) -> CancelTally:
    """Cancel each (request row id, response id) through the API and record the state each ends in."""
    tally = CancelTally()
    slots = anyio.Semaphore(max(1, concurrency))

    async def one(row_id: int, response_id: str) -> None:
        async with slots:
            if tally.doomed is not None:
                return
            try:
                reply = await client.cancel(response_id)
            except DoomedJobError as e:
                # Every other cancel would fail the same way: say it once, send no more.
                tally.doomed = tally.doomed or e
                return
            except ApiError as e:
                tally.failures.append(f"{response_id}: {e.describe()}")
                return
        got = read_id(reply.body.get("id"))
        if got != response_id:
            # Another response's state (a proxy's mix-up, a cache keyed wrongly) says nothing of this one, and a
            # `completed` one would become this request's answer: not recorded, as a poll would not take it.
            # The request stays in flight; the next `runner run` polls its own response.
            said = f"the cancel was answered with another response ({got!r}); not recorded"
            tally.failures.append(f"{response_id}: {said}")
            return
        if is_running(reply.body):
            tally.still_running += 1
            return
        o = final_outcome(row_id, reply.body, http_status=reply.status, request_id=reply.request_id)
        # False when a running `runner run` polled it first: it saw the same final state (a poll before this
        # cancel saw it running and wrote nothing), so the count holds either way.
        await store.finish_unleased(o)
        if o.to is RequestState.CANCELLED:
            tally.cancelled += 1
        else:
            tally.finished_first += 1

    async with anyio.create_task_group() as tg:
        for row_id, response_id in responses:
            tg.start_soon(one, row_id, response_id)
    log.debug("cancels: %s", tally)
    return tally
