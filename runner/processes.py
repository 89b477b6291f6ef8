"""`runner run --processes N`: N worker processes on one store, started and watched by the one the user ran.

The parent (`supervise`) is the first of the N and starts N - 1 children of the same command,
`python -m runner run JOB...`, with CHILD_ENV set. Each is an ordinary member of a fleet
(runner/store/fleet.py): its own lease owner and heartbeat, its share of the rate budget, work claimed and
taken back exactly as a runner on another machine would. So nothing here decides who sends what; the store
does, as it does for separate machines.

- Start-up: a child is a new interpreter that imports runner, SQLAlchemy, aiohttp... (1-1.6 s on the 2-core
  VM, several seconds when it is busy; with the parent waiting for them, `bench/run.py --only 1` measured
  0.65-0.84 of the bare loop, start-up included). The parent has all that loaded, so it sends from the start
  over the whole concurrency (`_Own`). A child that has started says so and waits on its stdin; the parent
  lowers its own share by the child's and says GO once its own requests in flight fit in what it keeps, so
  that the processes together never pass the concurrency. Forking the children from the parent instead was
  not done: the parent has an event loop, the store's threads and open connections by then, none of which
  may cross a fork.

- Settings reach a child the way a user would give them, as environment variables (the key included, never
  on a command line `ps` shows), with `concurrency` split between the children and `processes` 1.
- A child is quiet: instead of a display it writes JSON lines to its stdout, one per progress tick and a
  last one with how its run ended. The parent sums them into one progress display and one verdict. Its
  stderr (warnings, errors) is relayed a whole line at a time.
- A child runs in its own session, so a Ctrl-C at the terminal reaches the parent alone; the parent passes
  each SIGINT/SIGTERM/SIGHUP on to every child once. A first signal drains them all, a second stops them at once,
  as for one process; a third kills them (a child that does not stop must not keep the terminal).
- A child whose parent is gone (its stdout pipe broken) stops as on SIGINT.
- A child that dies (kill -9, a crash) is reported when it happens, and once it is reaped its requests go
  back to the queue (`on_death`: same host, dead pid, so without waiting for its leases to run out) for the
  others to send.

Over 400 lines on purpose: both ends of one line format (what a child writes, what the parent reads back)
and the supervision that relies on it; split, a change to the format would have to be made in two places.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import SecretStr

from runner.config import Settings, env_name
from runner.errors import BillingError, DoomedJobError, RunnerError, StoreUnavailable
from runner.interrupt import Repeats, on_signal, stop_signals
from runner.worker.types import RunResult, Snapshot, StopReason

if TYPE_CHECKING:
    from runner.worker.pool import Run

log = logging.getLogger(__name__)

CHILD_ENV = "RUNNER_WORKER_OF"  # set (to the parent's pid) in a child's environment: that run reports as a child
MAX_LINE = 1 << 20  # a child's protocol or stderr line longer than this is cut
TICK = 0.25  # seconds between progress frames of the parent (a child reports as often)
KILL_AFTER = 3  # the signal count at which the parent kills the children instead of passing the signal on
GO, STOP = b"go", b"stop"  # the parent's word to a child that said it is ready (on the child's stdin)
SENDS_FROM_NOW = "process %d sends from now (ready %.2f s ago, its share free since)"  # a debug line the bench times
DRAIN_CHECK = 0.05  # seconds between looks at the parent's requests in flight while it hands slots over

# The figures of a Snapshot that add up over processes.
_SUMMED = (
    "completed",
    "incomplete",
    "failed",
    "cancelled",
    "in_flight",
    "polling",
    "retries",
    "rate_limited",
    "tokens",
    "concurrency",
    "max_concurrency",
    "pauses",
)
_INTS = frozenset(f.name for f in fields(Snapshot) if f.type in ("int", int))
# Reasons a run ends, the most telling first: one child's billing stop is the whole run's.
_PRIORITY = (StopReason.BILLING, StopReason.DOOMED, StopReason.INTERRUPTED, StopReason.BUDGET, StopReason.DONE)


def is_child() -> bool:
    """True in a worker process started by `supervise`."""
    return bool(os.environ.get(CHILD_ENV))


def shares(concurrency: int, processes: int) -> list[int]:
    """`concurrency` split between `processes` as evenly as whole numbers go (the first ones take the rest)."""
    base, rest = divmod(concurrency, processes)
    return [base + (1 if i < rest else 0) for i in range(processes)]


# -- the child's side -------------------------------------------------------------------------------


class ChildReport:
    """A child's reports to its parent: `__call__` is the run's `on_progress`, `end` its verdict (stdout)."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._gone = False
        self._ended = False

    def __call__(self, snap: Snapshot) -> None:
        self._write({"progress": _snapshot_out(snap)})

    def wait_for_turn(self) -> bool:
        """Say this process is ready and wait for the parent's word: True to run; False (already reported) to end.

        The parent has been sending with this process's share of the concurrency while it started: it lets this
        one go once its own requests in flight fit in what it keeps, so that together they never pass it.
        """
        self._write({"ready": True})
        word = sys.stdin.buffer.readline()  # blocking is right: this process has nothing else to do yet
        if word.strip() == GO:
            return True
        self.end(RunResult(StopReason.INTERRUPTED))  # stopped before it started (a Ctrl-C), or the parent is gone
        return False

    def end(self, result: RunResult) -> None:
        """The last line: how this child's run ended."""
        self._ended = True
        r = result
        self._write(
            {
                "end": {
                    "reason": r.reason.value,
                    "snapshot": _snapshot_out(r.snapshot),
                    "billing": _error_out(r.billing_error),
                    "doomed": _error_out(r.doomed_error),
                    "problems": r.problems,
                }
            }
        )

    def _write(self, obj: dict[str, Any]) -> None:
        if self._gone:
            return
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            # The parent is gone (or its pipe is): nobody shows this run any more; stop as on Ctrl-C.
            self._gone = True
            if not self._ended:
                os.kill(os.getpid(), signal.SIGINT)


def _snapshot_out(s: Snapshot) -> dict[str, Any]:
    d = asdict(s)
    d.pop("started")
    deadline = d.pop("grace_deadline")
    # Monotonic clocks are per process in principle: send what is left, not the instant.
    d["grace_left"] = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    return d


def _error_out(e: BillingError | DoomedJobError | None) -> dict[str, Any] | None:
    return None if e is None else {"message": e.message, "status": e.status, "code": e.code}


# -- the parent's side ------------------------------------------------------------------------------


@dataclass
class _End:
    """How a child's run ended, as it reported it."""

    reason: StopReason
    billing: BillingError | None = None
    doomed: DoomedJobError | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class _Child:
    number: int  # 1-based, for messages (the parent, sending too, is process 1)
    proc: Process
    share: int  # its part of the concurrency
    last: Snapshot | None = None  # its latest figures
    end: _End | None = None
    died: str | None = None  # it ended without reporting an end: how, in one line
    released: bool = False  # told to go: it sends
    told_to_stop: bool = False  # told to stop before it started sending


class _Own:
    """The parent's own run, process 1: it sends from the start, with the shares of the children not yet running.

    Starting a child is a new interpreter importing runner (1-1.6 s each on the 2-core VM, more when busy);
    the parent has everything loaded and its store open, so it sends meanwhile and lends each child its share
    when that child is ready, once its own requests in flight fit in what it keeps.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.result: RunResult | None = None
        self.lost: StoreUnavailable | None = None
        self.running = True

    async def execute(self) -> None:
        try:
            self.result = await self.run.execute()
        except StoreUnavailable as e:  # kept, not raised: through the task group it would come out wrapped
            self.lost = e
        finally:
            self.running = False

    def lend(self, slots: int) -> None:
        c = self.run.concurrency
        c.maximum = max(1, c.maximum - slots)
        c.limit = min(c.limit, c.maximum)

    def take_back(self, slots: int) -> None:
        """A child that died: its slots are the parent's again (its requests come back to the queue)."""
        c = self.run.concurrency
        c.maximum += slots
        if not c.slow_start:
            c.limit = min(c.limit + slots, c.maximum)

    async def fits(self) -> None:
        """Until the parent's requests in flight fit in its share (the run's figures are at most 0.25 s old)."""
        # Polled: the figure is the run's (refreshed by its progress reports), with no event to wait on.
        while self.running and self.run.snap.in_flight > self.run.concurrency.maximum:  # noqa: ASYNC110
            await anyio.sleep(DRAIN_CHECK)

    def snapshot(self) -> Snapshot | None:
        snap = self.run.snap if self.result is None else self.result.snapshot
        return snap if snap.total else None  # counted once the run has read the job's figures


@dataclass
class FleetOutcome:
    """How the processes of `supervise` ended, together."""

    result: RunResult
    finished: list[int] = field(default_factory=list)  # requests each process finished, in process order
    died: list[str] = field(default_factory=list)  # one line per child that ended without finishing its run


async def supervise(
    job_ids: Sequence[str],
    settings: Settings,
    *,
    own: Run | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    caught: list[int] | None = None,
    on_death: Callable[[int], Awaitable[None]] | None = None,
    before: Snapshot | None = None,
) -> FleetOutcome:
    """Run `job_ids` in `settings.processes` processes until each has ended.

    With `own` (a Run of this process over the whole `settings.concurrency`), this process is the first of
    them and starts `processes - 1` children, handing each its share as it comes up; without, it starts
    `processes` children and sends nothing itself. With `caught` (a list), SIGINT, SIGTERM and SIGHUP are handled
    here: appended to it, passed on to the children and to `own`. `on_death(pid)` is awaited when a child
    died without finishing its run (once it is reaped), to hand its work back at once. `before` (the job's
    figures now) is shown until a process reports. Whatever ends this call, no child is left running.
    Raises StoreUnavailable when `own` lost the store.
    """
    started = time.monotonic()
    n = settings.processes
    parts = shares(settings.concurrency, n)
    mine = _Own(own) if own is not None else None
    children: list[_Child] = []
    try:
        # Started before any task group, so that an OSError (no such interpreter) comes out as itself.
        first = 1 if mine is not None else 0
        for i in range(first, n):
            proc = await anyio.open_process(
                [sys.executable, "-m", "runner", "run", *job_ids],
                stdin=subprocess.PIPE,  # the parent's word when the child is ready (GO or STOP)
                env=child_env(settings, parts[i]),
                start_new_session=True,  # a terminal's Ctrl-C reaches the parent alone, which passes it on
            )
            children.append(_Child(i + 1, proc, parts[i]))
        async with anyio.create_task_group() as tg:
            if caught is not None:
                tg.start_soon(_pass_signals, children, caught, mine)
            if on_progress is not None:
                tg.start_soon(_show_progress, children, mine, started, on_progress, before)
            async with anyio.create_task_group() as waiting:
                if mine is not None:
                    waiting.start_soon(_own_run, mine, children)
                for child in children:
                    waiting.start_soon(_follow, child, n, caught, on_death, mine)
                    waiting.start_soon(_relay_stderr, child)  # to its end: a child's last words are often why
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_all(children, settings.grace)
    if mine is not None and mine.lost is not None:
        raise mine.lost
    return _outcome(children, mine, started, caught)


def child_env(settings: Settings, concurrency: int) -> dict[str, str]:
    """A child's environment: this one, with every setting spelled as its variable, as a user would."""
    env = dict(os.environ)
    for name, value in settings:
        var = env_name(name)
        if var is None:
            continue
        if value is None:
            env.pop(var, None)
        else:
            env[var] = _env_text(value)
    if settings.log_level is None and logging.getLogger().isEnabledFor(logging.DEBUG):
        env[_var("log_level")] = "debug"  # -v is a flag, not a setting
    env[_var("concurrency")] = str(concurrency)
    env[_var("processes")] = "1"
    env[CHILD_ENV] = str(os.getpid())
    return env


def _var(name: str) -> str:
    var = env_name(name)
    assert var is not None, name
    return var


def _env_text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")  # never `1e-05`: durations do not read exponents
    return str(value)


async def _own_run(own: _Own, children: list[_Child]) -> None:
    """The parent's run; when it ends, so does the job (or the run, on a stop): a child still starting has
    nothing to do. It has opened nothing yet (it waits for its word before it opens the store), so it is
    killed rather than waited for: starting may take it seconds more."""
    await own.execute()
    for c in children:
        if not c.released:
            _drop(c)


def _drop(child: _Child) -> None:
    """End a child that has not been let go: it holds no lease and is in no fleet, so nothing is lost."""
    child.told_to_stop = True
    if child.proc.returncode is None:
        child.proc.kill()


async def _follow(
    child: _Child,
    n: int,
    caught: list[int] | None,
    on_death: Callable[[int], Awaitable[None]] | None,
    own: _Own | None,
) -> None:
    """Read a child's reports until its stdout closes, then reap it (a dead pid frees its leases only then)."""
    assert child.proc.stdout is not None
    lines = BufferedByteReceiveStream(child.proc.stdout)
    while True:
        try:
            line = await lines.receive_until(b"\n", MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            break
        except anyio.DelimiterNotFound:
            log.warning("process %d of %d: a report line over %d bytes; its reports end", child.number, n, MAX_LINE)
            async for _ in child.proc.stdout:  # still read, or the child would block on a full pipe
                pass
            break
        if _take(child, line):
            await _release(child, caught, own)
    code = await child.proc.wait()
    interrupted = caught and code in {128 + s for s in stop_signals()}
    if child.end is None and not interrupted and (child.released or not child.told_to_stop):
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        died = f"process {child.number} of {n} (pid {child.proc.pid}) ended without finishing its run ({how})"
        log.warning("%s; its requests go back to the queue for the others", died)
        child.died = died
        if own is not None and child.released:
            own.take_back(child.share)
        if on_death is not None:
            try:
                await on_death(child.proc.pid)
            except RunnerError as e:  # the others still take its work back, when its leases expire
                log.warning("could not hand back the requests of process %d at once: %s", child.number, e)


async def _release(child: _Child, caught: list[int] | None, own: _Own | None) -> None:
    """A child is ready: lend it its share of the parent's slots, and let it go once they are free."""
    if caught or child.told_to_stop:
        await _tell(child, STOP)
        return
    ready = time.monotonic()
    if own is not None:
        own.lend(child.share)
        await own.fits()
        if caught:  # a signal came meanwhile: the parent is draining, the child must not start
            own.take_back(child.share)
            await _tell(child, STOP)
            return
        if not own.running or child.told_to_stop:  # the parent's run is over: so is the job
            _drop(child)
            return
    child.released = True
    await _tell(child, GO)
    log.debug(SENDS_FROM_NOW, child.number, time.monotonic() - ready)


async def _tell(child: _Child, word: bytes) -> None:
    if word == STOP:
        child.told_to_stop = True
    assert child.proc.stdin is not None
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):  # gone: _follow says so
        await child.proc.stdin.send(word + b"\n")


def _take(child: _Child, raw: bytes) -> bool:
    """One line of a child's reports; True when it says it is ready (our own child; still, a line that does
    not parse is skipped, not fatal)."""
    try:
        msg = json.loads(raw)
        if "ready" in msg:
            return True
        if "progress" in msg:
            child.last = _snapshot_in(msg["progress"])
        elif "end" in msg:
            end = msg["end"]
            if child.released:  # one stopped before it started has no figures of the job
                child.last = _snapshot_in(end["snapshot"])
            child.end = _End(
                StopReason(end["reason"]),
                _api_error(BillingError, end.get("billing")),
                _api_error(DoomedJobError, end.get("doomed")),
                [str(p) for p in end.get("problems") or []],
            )
    except (ValueError, TypeError, KeyError, AttributeError):
        log.debug("process %d: unreadable report line %r", child.number, raw[:200])
    return False


def _snapshot_in(d: dict[str, Any]) -> Snapshot:
    s = Snapshot()
    for name in _INTS:
        setattr(s, name, int(d.get(name) or 0))
    s.concurrency_reason = _text(d.get("concurrency_reason"))
    s.notice = _text(d.get("notice"))
    s.stopping = bool(d.get("stopping"))
    left = d.get("grace_left")
    s.grace_deadline = None if left is None else time.monotonic() + float(left)
    return s


def _text(v: object) -> str | None:
    return v if isinstance(v, str) else None


_E = TypeVar("_E", BillingError, DoomedJobError)


def _api_error(kind: type[_E], d: object) -> _E | None:
    if not isinstance(d, dict):
        return None
    status = d.get("status")
    code = _text(d.get("code"))
    return kind(str(d.get("message", "")), status=status if isinstance(status, int) else None, code=code)


def merge(parts: Sequence[Snapshot], started: float) -> Snapshot:
    """The figures of several processes' runs as one run's: counts add up, the job's progress is shared."""
    out = Snapshot(started=started)
    if not parts:
        return out
    for name in _SUMMED:
        setattr(out, name, sum(getattr(p, name) for p in parts))
    out.total = max(p.total for p in parts)
    # Each child counts the job's requests final when it started, then its own: the earliest count, plus all own.
    out.done_before = min(p.done_before for p in parts)
    out.done = out.done_before + sum(p.done - p.done_before for p in parts)
    out.concurrency_reason = next((p.concurrency_reason for p in parts if p.concurrency_reason), None)
    out.notice = next((p.notice for p in parts if p.notice), None)
    out.stopping = any(p.stopping for p in parts)
    deadlines = [p.grace_deadline for p in parts if p.grace_deadline is not None]
    out.grace_deadline = max(deadlines) if deadlines else None
    return out


def _parts(children: list[_Child], own: _Own | None) -> list[Snapshot]:
    """The latest figures of every process that has some, the parent's first."""
    mine = own.snapshot() if own is not None else None
    return ([mine] if mine is not None else []) + [c.last for c in children if c.last is not None]


async def _show_progress(
    children: list[_Child],
    own: _Own | None,
    started: float,
    on_progress: Callable[[Snapshot], None],
    before: Snapshot | None,
) -> None:
    while True:
        parts = _parts(children, own)
        if parts:
            on_progress(merge(parts, started))
        elif before is not None:
            before.started = started
            on_progress(before)
        await anyio.sleep(TICK)


async def _relay_stderr(child: _Child) -> None:
    """A child's stderr onto ours, whole lines only, so that two children's lines never mix."""
    assert child.proc.stderr is not None
    lines = BufferedByteReceiveStream(child.proc.stderr)
    while True:
        try:
            line = await lines.receive_until(b"\n", MAX_LINE)
        except anyio.DelimiterNotFound:
            line = await lines.receive(MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        sys.stderr.write(line.decode(errors="replace") + "\n")
        sys.stderr.flush()


async def _pass_signals(children: list[_Child], caught: list[int], own: _Own | None) -> None:
    repeats = Repeats()
    with anyio.open_signal_receiver(*stop_signals()) as signals:
        async for sig in signals:
            if not repeats.counts(int(sig)):  # one stop sent twice (GNU timeout): the children get it once
                continue
            caught.append(int(sig))
            on_signal(sig)
            if own is not None:
                if len(caught) == 1:
                    own.run.stop()
                else:
                    own.run.abort()
            for c in children:
                if c.proc.returncode is None:
                    if len(caught) >= KILL_AFTER:
                        c.proc.kill()
                    elif c.released:
                        c.proc.send_signal(sig)
                    elif not c.told_to_stop:  # still starting: it will read this when it is ready
                        await _tell(c, STOP)


async def _stop_all(children: list[_Child], grace: float) -> None:
    """Leave no child running: drain those still up (as on SIGINT), and kill what outlives the grace period."""
    alive = [c for c in children if c.proc.returncode is None]
    if not alive:
        return
    for c in alive:
        c.proc.send_signal(signal.SIGINT)
    with anyio.move_on_after(grace + 10):
        for c in alive:
            await c.proc.wait()
    for c in alive:
        if c.proc.returncode is None:
            c.proc.kill()
            await c.proc.wait()


def _outcome(children: list[_Child], own: _Own | None, started: float, caught: list[int] | None) -> FleetOutcome:
    """One verdict from the processes': the most telling stop reason, the figures added up."""
    ends = [c.end for c in children if c.end is not None]
    if own is not None and own.result is not None:
        r = own.result
        ends.insert(0, _End(r.reason, r.billing_error, r.doomed_error, list(r.problems)))
    reasons = {e.reason for e in ends}
    if caught:
        reasons.add(StopReason.INTERRUPTED)
    reason = next((r for r in _PRIORITY if r in reasons), StopReason.DONE)
    result = RunResult(reason, snapshot=merge(_parts(children, own), started))
    result.billing_error = next((e.billing for e in ends if e.billing is not None), None)
    result.doomed_error = next((e.doomed for e in ends if e.doomed is not None), None)
    for e in ends:
        result.problems.extend(e.problems)
    # The verdict names the error it stops for; a child's that did not come through is said in general words.
    if reason is StopReason.BILLING and result.billing_error is None:
        result.billing_error = BillingError("the API refused for billing reasons")
    if reason is StopReason.DOOMED and result.doomed_error is None:
        result.doomed_error = DoomedJobError("a worker process stopped the job as doomed (see its message above)")
    finished = ([_finished(own.snapshot())] if own is not None else []) + [_finished(c.last) for c in children]
    died = [c.died for c in children if c.died is not None]
    return FleetOutcome(result, finished, died)


def _finished(s: Snapshot | None) -> int:
    return 0 if s is None else s.completed + s.incomplete + s.failed + s.cancelled
