"""What a job's lanes and its reused lines cost: the report's cost parts that are not per model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

from runner.prices import PriceTable
from runner.store import Store, UsageCounts
from runner.store.reuse import reused_rows

__all__ = ["UNKNOWN_MODEL", "LaneCost", "Reused", "reused_summary"]

UNKNOWN_MODEL: Final = "(unknown model)"


@dataclass(frozen=True, slots=True)
class LaneCost:
    """What one lane (sync, flex, batch) finished and cost, and what the same would cost at the standard price."""

    lane: str
    requests: int
    usd: float  # over priced models
    usd_standard: float  # the same usage at the synchronous (standard) price


@dataclass(frozen=True, slots=True)
class Reused:
    """Lines answered from the store at submit (`--reuse`): the tokens their answers were paid for elsewhere,
    and what those would have cost (over the priced models; `unpriced` names the others)."""

    requests: int
    usage: UsageCounts
    saved_usd: float
    unpriced: list[str]

    def __bool__(self) -> bool:
        return self.requests > 0


async def reused_summary(store: Store, job_id: str, prices: PriceTable) -> Reused:
    """Count, tokens and saved cost of a job's reused lines, priced by each line's model."""
    rows = await reused_rows(store, job_id)
    usage = UsageCounts()
    saved = 0.0
    unpriced: dict[str, None] = {}
    for r in rows:
        usage += r.usage
        try:
            body = orjson.loads(r.body)
        except orjson.JSONDecodeError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        cost = prices.cost(model if isinstance(model, str) else None, r.usage)
        if cost is None:
            unpriced[model if isinstance(model, str) else UNKNOWN_MODEL] = None
        else:
            saved += cost
    return Reused(len(rows), usage, saved, list(unpriced))
