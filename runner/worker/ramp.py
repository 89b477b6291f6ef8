"""Opening many free slots at once, spread over one round trip instead of in one burst.

Slots that open together after the pool has run (the claims ran dry and many requests became ready at
once, say retries coming due) would send together; with latencies that are all alike their replies come
back together, and keep doing so: the event loop gets a burst of replies to read and commit, every slot
waits for the last of them, and the pool runs in waves. Starting them evenly over one round trip (at most
a second) sends them spread out, and the replies come back spread out too.

Not the end of the slow start: there the pool (`pool.Run._more_slots`) opens every slot at once, paced by
the limits just learnt. Spread over the round trip, those slots cost half a round trip of full throughput
(~0.5 s at 1 s latency, 10,000 requests at concurrency 1,000), more than the waves they avoid: a pool
given --rpm opens them all at once from the start and measured 0.95-0.98 of the bare loop, which bursts too.

Only slots opened at once are spread: a slot that finishes a request takes the next one itself, and
small openings (a slot added after a healthy reply) stay within the burst allowance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

RAMP_BURST = 16  # slots that may open at once, whatever the round trip
RAMP_OVER_MAX = 1.0  # seconds: a whole concurrency opens within one round trip, but never slower than this
# A ramp's next look may come this late (a busy event loop) and still open what the time since the last one
# earned. Capped at RAMP_BURST, a look 30 ms late opened a third of its share: on a loaded VM the 1,000 slots
# of a 1 s round trip took 3-5 s to open instead of one.
RAMP_LATE_MAX = 0.1


class SlotRamp:
    """A token bucket for opening slots: `allow(limit, latency)` slots may open now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = float(RAMP_BURST)
        self._at = clock()
        self._granted = 0  # what the last `allow` gave
        self._behind = False  # the last grant was used up: slots are waiting, a ramp is under way

    def allow(self, limit: int, latency: float | None) -> int:
        """How many slots may open now, given the concurrency limit and the round trip seen so far.

        Before any round trip is known there is nothing to spread over: every free slot may open (the
        slow start, or the pacer when a budget is given, keeps the first sends gentle).
        """
        now = self._clock()
        if latency is None or latency <= 0:
            self._at = now
            self._behind = False
            self._granted = limit
            return limit
        rate = limit / min(latency, RAMP_OVER_MAX)  # slots per second
        since = now - self._at
        # An idle bucket holds a burst; a ramp under way also keeps what a late look earned.
        late = self._behind and since <= RAMP_LATE_MAX
        self._tokens = min(self._tokens + since * rate, max(float(RAMP_BURST), rate * (since if late else 0.01)))
        self._at = now
        self._granted = int(self._tokens)
        return self._granted

    def took(self, n: int) -> None:
        """`n` slots were opened (of those the last `allow` gave)."""
        self._tokens = max(self._tokens - n, 0.0)
        self._behind = n >= self._granted > 0
