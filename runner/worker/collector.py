"""The cyclic garbage collector kept off the per-request path while a run works.

A run allocates a few dozen containers per request (a parsed reply, its outcome, claimed rows), and many of
them live across an `await`, so CPython's collector runs about once every 15 requests and, every few
seconds, makes a full pass over every object the process holds: the imported modules, SQLAlchemy's and
Alembic's objects, about 115,000 in all, ~50 ms a pass. Measured (`make bench` scenario 2: 5,000 requests,
zero latency, concurrency 64, on the loaded 2-core VM): the collector took 0.035-0.040 ms of each request's
~0.24 ms of CPU, 0.115-0.145 s of it in two or three full passes. With what existed before the run frozen
(`gc.freeze`: never garbage, never scanned again) and a young generation of 7,000 objects instead of 700,
it takes ~0.003 ms. Objects freed by their reference counts go as they always did, and cycles made during
the run are still collected; only garbage left from before the run waits for its end.

The freezing is runner/heap.py's (submit and export do the same); this adds the young generation's
threshold. Runs can nest (tests run several in one process): the first to start sets it, the last to end
puts back what it found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from runner.heap import gc_spares_the_heap

YOUNG_THRESHOLD = 7000  # CPython's default is 700

_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def quiet_collector() -> Iterator[None]:
    """While inside: what exists now is frozen, and the young generation is collected 10 times less often."""
    global _depth, _saved
    if _depth == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, _saved[1], _saved[2])
    _depth += 1
    try:
        with gc_spares_the_heap():
            yield
    finally:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None
