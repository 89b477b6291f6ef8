"""The progress display of `runner run`: a live frame on a terminal, a progress line every few seconds elsewhere.

The live frame is laid out for the terminal's width: the bar shrinks (and goes at about 40 columns), the
figures never do; they flow onto more lines instead. The job's progress (done/total, ETA) is kept apart
from this run's own counts, so a resumed run does not look faster than it is. The last frame is drawn from
the run's final figures: nothing is in flight any more, and a failure says what to do next.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from runner.config import DEFAULT_PROGRESS_EVERY
from runner.term import printable
from runner.worker.types import Snapshot

RATE_WINDOW = 30.0  # seconds of history behind the rate and the ETA: recent enough to follow a slow-down
MAX_BAR = 40
MIN_BAR = 8  # narrower than this, a bar says nothing: leave it out
SEP = " · "

err = Console(stderr=True, highlight=False)


def duration(seconds: float) -> str:
    """`42 s`, `3m 05s`, `2h 10m`."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def flow(parts: Iterable[str], width: int, sep: str = SEP) -> list[str]:
    """Join `parts` with `sep` into lines of at most `width` columns, breaking only between parts."""
    lines: list[str] = []
    line = ""
    for part in parts:
        if line and len(line) + len(sep) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line}{sep}{part}" if line else part
    if line:
        lines.append(line)
    return lines


@dataclass
class Figures:
    """What one frame or progress line shows, worked out from a Snapshot."""

    total: int
    done: int
    done_before: int
    completed: int
    incomplete: int
    failed: int
    cancelled: int
    in_flight: int
    polling: int
    retries: int
    rate_limited: int
    pauses: int
    concurrency: int
    max_concurrency: int
    concurrency_reason: str | None
    rate: float  # requests finished per second, recently
    tokens_per_s: float
    elapsed: float
    eta: float | None  # seconds; None while there is no rate to go by
    notice: str | None = None
    stopping_for: float | None = None  # seconds the drain may still take, once a signal came
    final: bool = False
    next_steps: list[str] = field(default_factory=list)

    @property
    def this_run(self) -> int:
        return max(self.done - self.done_before, 0)

    @property
    def concurrency_text(self) -> str:
        now = self.concurrency
        top = self.max_concurrency or now
        text = f"concurrency {now}/{top}"
        if now < top and self.concurrency_reason:
            text += f" ({printable(self.concurrency_reason)})"
        return text


def figures(s: Snapshot, rate: float, *, final: bool = False, next_steps: Sequence[str] = ()) -> Figures:
    """The figures of snapshot `s`; `rate` is the recent rate of finished requests per second."""
    elapsed = s.elapsed
    remaining = max(s.total - s.done, 0)
    eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
    stopping_for = None
    if s.stopping and not final:
        stopping_for = max(s.grace_deadline - time.monotonic(), 0.0) if s.grace_deadline is not None else 0.0
    return Figures(
        total=s.total,
        done=s.done,
        done_before=s.done_before,
        completed=s.completed,
        incomplete=s.incomplete,
        failed=s.failed,
        cancelled=s.cancelled,
        # The last frame is drawn after the run let go of everything: whatever was still on the wire then
        # went back to the queue, so showing the last live count would be stale.
        in_flight=0 if final else s.in_flight,
        polling=0 if final else s.polling,
        retries=s.retries,
        rate_limited=s.rate_limited,
        pauses=s.pauses,
        concurrency=s.concurrency,
        max_concurrency=s.max_concurrency,
        concurrency_reason=s.concurrency_reason,
        rate=rate,
        tokens_per_s=s.tokens / max(elapsed, 1e-6),
        elapsed=elapsed,
        eta=eta,
        notice=s.notice,
        stopping_for=stopping_for,
        final=final,
        next_steps=list(next_steps),
    )


def stopping_text(f: Figures) -> str:
    assert f.stopping_for is not None
    secs = math.ceil(f.stopping_for)
    return (
        f"stopping: waiting up to {secs} s for {f.in_flight} requests in flight (Ctrl-C again to stop now)"
        if f.in_flight
        else "stopping: saving the last results"
    )


def _bar(done: int, total: int, width: int) -> str:
    """Heavy for what is done, light for what is left: readable without colours too."""
    filled = width if total <= 0 else min(width, width * done // total)
    return "━" * filled + "─" * (width - filled)


def frame_lines(f: Figures, width: int) -> list[str]:
    """The live frame for a terminal `width` columns wide: nothing is cut, only the bar shrinks."""
    pct = f"{100 * f.done / f.total:.0f}%" if f.total else "100%"
    if f.final:
        tail = f"finished in {duration(f.elapsed)}" if f.done >= f.total else f"stopped after {duration(f.elapsed)}"
    else:
        tail = f"ETA {duration(f.eta)}" if f.eta is not None else "ETA -"
    head = f"{f.done:,}/{f.total:,} {pct} · {tail}"
    room = min(width - len(head) - 1, MAX_BAR)
    lines = [f"{_bar(f.done, f.total, room)} {head}" if room >= MIN_BAR else head]
    run = [f"this run {f.this_run:,}", f"ok {f.completed + f.incomplete:,}", f"failed {f.failed:,}"]
    if f.cancelled:
        run.append(f"cancelled {f.cancelled:,}")
    if f.done_before:
        run.append(f"{f.done_before:,} done before")
    lines += flow(run, width)
    live = [] if f.final else [f"in flight {f.in_flight:,}", f"polling {f.polling:,}"]
    live += [
        f"{f.rate:,.1f} req/s",
        f"{f.tokens_per_s:,.0f} tok/s",
        f"retries {f.retries:,}",
        f"429s {f.rate_limited:,}",
    ]
    if not f.final:
        live.append(f.concurrency_text)
    lines += flow(live, width)
    if f.notice and not f.final:
        lines += flow(printable(f.notice).split(" "), width, " ")
    if f.stopping_for is not None:
        lines += flow(stopping_text(f).split(" "), width, " ")
    for step in f.next_steps:
        lines += flow(step.split(" "), width, " ")
    return lines


def log_line(f: Figures) -> str:
    """One `progress key=value ...` line with the same figures, for logs (cron, CI)."""
    parts = [
        f"done={f.done}/{f.total}",
        f"this_run={f.this_run}",
        f"done_before={f.done_before}",
        f"completed={f.completed}",
        f"incomplete={f.incomplete}",
        f"failed={f.failed}",
        f"cancelled={f.cancelled}",
        f"in_flight={f.in_flight}",
        f"polling={f.polling}",
        f"rps={f.rate:.1f}",
        f"tokens_per_s={f.tokens_per_s:.0f}",
        f"retries={f.retries}",
        f"rate_limited={f.rate_limited}",
        f"concurrency={f.concurrency}/{f.max_concurrency or f.concurrency}",
        f"pauses={f.pauses}",
    ]
    if f.concurrency < (f.max_concurrency or f.concurrency) and f.concurrency_reason:
        parts.append(f'concurrency_reason="{printable(f.concurrency_reason)}"')
    if f.final:
        parts.append(f"elapsed_s={f.elapsed:.1f}")
    else:
        parts.append(f"eta_s={f.eta:.0f}" if f.eta is not None else "eta_s=-")
    return "progress " + " ".join(parts)


class _Rate:
    """Finished requests per second over the last RATE_WINDOW seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def __call__(self, now: float, done: int, started: float, done_before: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        if now - t0 < 1.0:  # too short a history: use the whole run
            t0, d0 = started, done_before
        return (done - d0) / (now - t0) if now > t0 else 0.0


class ProgressView:
    """A live frame on a terminal; a concise `progress` line every few seconds otherwise (cron, CI)."""

    def __init__(
        self,
        quiet: bool,
        console: Console = err,
        *,
        every: float = DEFAULT_PROGRESS_EVERY,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.quiet = quiet
        self.console = console
        # `say` writes each line instead (as a JSON object under --log-format json): no live frame then.
        self._say = say or (lambda line: console.out(line, highlight=False))
        self.live = not quiet and console.is_terminal and say is None
        self.every = every  # seconds between progress lines (Settings.progress_every)
        self._last_line = 0.0
        self._rate = _Rate()
        self._live: Live | None = None
        self._last: Snapshot | None = None
        self._said_stopping = False

    def __enter__(self) -> ProgressView:
        if self.live:
            self._live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _show(self, f: Figures) -> None:
        assert self._live is not None
        width = self.console.size.width
        self._live.update(Group(*(Text(line, no_wrap=True) for line in frame_lines(f, width))), refresh=True)

    def __call__(self, s: Snapshot) -> None:
        if self.quiet:
            return
        self._last = s
        now = time.monotonic()
        f = figures(s, self._rate(now, s.done, s.started, s.done_before))
        if self._live is not None:
            self._show(f)
            return
        if f.stopping_for is not None and not self._said_stopping:
            self._said_stopping = True
            self._say(stopping_text(f))
        if now - self._last_line >= self.every:
            self._last_line = now
            self._say(log_line(f))

    def finish(self, s: Snapshot | None = None, next_steps: Sequence[str] = ()) -> None:
        """Draw the last frame (or print the last progress line) from the run's final figures."""
        s = s or self._last
        if self.quiet or s is None:
            return
        elapsed = max(s.elapsed, 1e-6)
        f = figures(s, (s.done - s.done_before) / elapsed, final=True, next_steps=next_steps)
        if self._live is not None:
            self._show(f)
            return
        self._say(log_line(f))
        for step in next_steps:
            self._say(step)
