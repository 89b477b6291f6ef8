"""The Store's write-back: outcomes and response ids, each guarded by state and lease."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import IllegalTransition
from runner.states import ALLOWED_FROM, RequestState
from runner.store.core import _USAGE_COLS, IP, StoreCore
from runner.store.models import Outcome, Refused, ResponseIdRecord
from runner.store.tables import requests

__all__ = ["WriteBackPart"]


class WriteBackPart(StoreCore):
    """The Store's write-back: outcomes and response ids, each guarded by state and lease."""

    # -- outcomes ---------------------------------------------------------------------------------

    async def apply(
        self, owner: str, outcomes: Sequence[Outcome], response_ids: Sequence[ResponseIdRecord] = ()
    ) -> Refused:
        """Write response ids and outcomes in one transaction, each guarded; returns the request ids refused.

        A response id is written only to a request this owner still leases, never over another id, and never
        if another request holds it: that request fails instead (`Refused.taken`).
        """
        if not outcomes and not response_ids:
            return Refused()
        now = self._clock()
        # Refusals are the caller's to report (once, not per request: `runner cancel` can cause thousands).
        return await self._hot(lambda: self._backend.apply(owner, outcomes, response_ids, now))

    async def set_state(self, request_id: int, to: RequestState) -> None:
        """Move one request to `to` outside any lease (admin paths); raises IllegalTransition if not allowed."""
        allowed = sorted(s.value for s in ALLOWED_FROM[to])

        async def go(conn: AsyncConnection) -> None:
            r = await conn.execute(
                update(requests)
                .where(requests.c.id == request_id, requests.c.state.in_(allowed))
                .values(state=to.value, updated_at=self._now())
            )
            if r.rowcount != 1:
                raise IllegalTransition(request_id, to.value, set(allowed))

        await self.write(go)

    async def finish_unleased(self, o: Outcome) -> bool:
        """Record the final state of an in-progress request that no lease covers (`runner cancel`)."""
        now = self._now()

        async def go(conn: AsyncConnection) -> bool:
            r = await conn.execute(
                update(requests)
                .where(requests.c.id == o.request_id, requests.c.state == IP)
                .values(
                    state=o.to.value,
                    http_status=o.http_status,
                    request_id=o.api_request_id,
                    response_body=o.response_body,
                    error_code=o.error_code,
                    error_message=o.error_message,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **{c: getattr(o.usage, c) for c in _USAGE_COLS},
                )
            )
            return bool(r.rowcount)

        return await self.write(go)
