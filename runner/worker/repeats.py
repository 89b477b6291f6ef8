"""A warning said once per request, said in full only the first few times in a run.

A GET outage over a background run failed every response it held, each with its own warning line: 40 lines for
40 requests, 10,000 for a nightly job, above the run's summary that already counts them and names `runner
report`, which groups them by error (`runner export --errors` writes each). Now the first SHOWN of a kind are
said in full (what went wrong, the line), the next one says that the rest are counted, and the run's end says
how many there were.
"""

from __future__ import annotations

import logging
from typing import Any

SHOWN = 3  # warnings of one kind said in full in a run


class Repeated:
    """The warnings of one kind (`what`: "responses not polled", said in the lines that count them)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self.what = what
        self.count = 0

    def warn(self, message: str, *args: Any) -> None:
        """Say `message % args` if fewer than SHOWN of this kind were said; count it either way."""
        self.count += 1
        if self.count <= SHOWN:
            self._log.warning(message, *args)
        elif self.count == SHOWN + 1:
            self._log.warning(
                "more %s: not said one by one (the run's end counts them; `runner report` groups them by error)",
                self.what,
            )

    def said_at_end(self) -> None:
        """Say how many there were in all, if some were not said one by one."""
        if self.count > SHOWN:
            self._log.warning("%d %s in all this run (%d said above)", self.count, self.what, SHOWN)
