"""`runner estimate`: the tokens and the cost of a file or a job before it runs.

Per model:
- input tokens are estimated from the text, as the rate limiter does (runner/limits.py: instructions and the
  input's text at ~4 characters a token);
- output tokens are bounded by `max_output_tokens` where every line gives one; otherwise the typical output
  of the same model is learnt from the most recent answers in the store, and the estimate says so; with
  neither there is no upper bound, and the estimate says that too;
- the cost is a range from the price table: low with the typical output (or none), high with the bound (or
  the typical output). A model the table does not know is unpriced: "price unknown", never $0, and the total
  says that it leaves it out.

- the prompt cache: a line whose prompt starts as an earlier line's of the same group does (runner/cachekeys.py,
  the rule submit groups lines by) may read that shared start back from the cache, at the cached rate. The
  provider promises no hit, so those tokens are counted apart (`cached_tokens`) and priced at the cached rate
  at the low end only; the high end prices every input token in full.

With `reuse`, lines whose question already has an answer in the store (runner/reuse.py) are counted as
reused and left out of the tokens and the cost. The lanes flex and batch pay the Batch rate (the price
table's `batch_factor` of the standard price), and the estimate says so.

Over 400 lines on purpose: the per-model figures, their text and JSON forms, and the tally over a file's or a
job's lines (reuse, the prompt cache) are one estimate; apart they would only import each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from runner.cachekeys import cache_key, prompt_prefix
from runner.config import LANES, Lane
from runner.errors import InputError, LineProblem
from runner.ingest import Unreadable, no_requests, read_lines
from runner.limits import CHARS_PER_TOKEN, Estimator
from runner.prices import PriceTable
from runner.reuse import body_hash
from runner.store import Store, UsageCounts
from runner.store.reuse import completed_outputs, reusable_hashes, unfinished_bodies
from runner.term import printable, usd
from runner.validate import validate_line

__all__ = [
    "LANES",
    "Estimate",
    "Lane",
    "ModelEstimate",
    "OutputHistory",
    "estimate_file",
    "estimate_job",
    "model_of",
]

UNKNOWN_MODEL: Final = "(no model)"
CHUNK: Final = 5000  # lines looked up in the store at once (reuse)
NOT_ESTIMATED: Final = "nothing was estimated"
CACHE_BLOCK: Final = 128  # tokens: the provider reads a cached prefix back in whole blocks of this many
CACHE_MIN: Final = 1024  # tokens: a shorter shared start is never read from the cache
PRICE_UNKNOWN: Final = "price unknown"  # a model the price table does not know: never shown as $0
MAX_NAMED: Final = 5  # unpriced models named in the total line
CACHE_GROUPS: Final = 10_000  # groups whose first prompt is kept to compare later lines with (memory stays flat)


def model_of(body: Mapping[str, Any]) -> str | None:
    """The body's model name, if it has one."""
    m = body.get("model")
    return m if isinstance(m, str) else None


@dataclass
class OutputHistory:
    """Output tokens per answer of each model, learnt from answers (the store's, then a run's own)."""

    sums: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (answers, output tokens)

    @classmethod
    def from_bodies(cls, rows: Iterable[tuple[str, int]]) -> OutputHistory:
        """From (request body JSON, output tokens) pairs, such as `store.reuse.completed_outputs`."""
        h = cls()
        for body, out in rows:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            model = model_of(parsed) if isinstance(parsed, dict) else None
            if model is not None:
                h.observe(model, out)
        return h

    def observe(self, model: str, output_tokens: int) -> None:
        n, total = self.sums.get(model, (0, 0))
        self.sums[model] = (n + 1, total + max(output_tokens, 0))

    def answers(self, model: str) -> int:
        return self.sums.get(model, (0, 0))[0]

    def typical(self, model: str) -> float | None:
        """Mean output tokens of the model's answers, or None when none was seen."""
        n, total = self.sums.get(model, (0, 0))
        return total / n if n else None


@dataclass
class ModelEstimate:
    """What the lines of one model will send and cost."""

    model: str
    lines: int = 0
    input_tokens: float = 0.0
    cached_tokens: float = 0.0  # of input_tokens: what the prompt cache may serve (the shared starts of groups)
    bounded_lines: int = 0  # lines with max_output_tokens
    output_bound: int = 0  # the sum of their max_output_tokens
    history: int = 0  # answers of this model in the store the typical output comes from
    typical_output: float | None = None  # per line
    price_key: str | None = None
    low_usd: float | None = None
    high_usd: float | None = None  # None: unpriced, or no bound on the output

    @property
    def output_low(self) -> float:
        """Output tokens at the low end: the typical output (capped by each bound), or 0 when none is known."""
        if self.typical_output is None:
            return 0.0
        return min(self.typical_output * self.lines, self.output_high or float("inf"))

    @property
    def output_high(self) -> float | None:
        """Output tokens at the high end: the bound when every line has one, else the typical output, else None."""
        if self.bounded_lines == self.lines:
            return float(self.output_bound)
        if self.typical_output is None:
            return None
        return self.typical_output * (self.lines - self.bounded_lines) + self.output_bound

    def output_basis(self) -> str:
        """Where the output figure comes from, in words."""
        if self.bounded_lines == self.lines:
            return "output bounded by max_output_tokens"
        if self.typical_output is not None:
            return f"output from {self.history:,} earlier answers of this model in the store"
        return "output unknown: no max_output_tokens and no earlier answer of this model in the store"

    def price(self, prices: PriceTable, lane: Lane = Lane.SYNC) -> None:
        self.price_key = prices.key_for(self.model)
        p = prices.price(self.model)
        if p is None:
            return
        factor = prices.lane_factor(lane)
        inp = round(self.input_tokens)
        cached = min(round(self.cached_tokens), inp)
        low = UsageCounts(input_tokens=inp, cached_tokens=cached, output_tokens=round(self.output_low))
        self.low_usd = p.cost(low) * factor
        high = self.output_high
        if high is not None:
            self.high_usd = p.cost(UsageCounts(input_tokens=inp, output_tokens=round(high))) * factor


@dataclass
class Estimate:
    """`runner estimate`'s answer for a file or a job."""

    source: str
    lane: Lane
    lines: int = 0  # lines to send (reused ones excluded)
    reused: int = 0
    done: int = 0  # a job's lines already finished (not counted)
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    reuse: bool = False

    @property
    def lane_note(self) -> str | None:
        if self.lane == Lane.SYNC:
            return None
        return f"lane {self.lane} priced at the Batch rate"

    @property
    def low_usd(self) -> float:
        return sum(m.low_usd or 0.0 for m in self.models.values())

    @property
    def high_usd(self) -> float | None:
        """The upper end over priced models; None when one of them has no bound on its output."""
        if any(m.high_usd is None for m in self.models.values() if m.price_key is not None):
            return None
        return sum(m.high_usd or 0.0 for m in self.models.values())

    @property
    def unpriced(self) -> list[str]:
        return [m.model for m in self.models.values() if m.price_key is None]

    @property
    def priced(self) -> bool:
        """Whether any model of the estimate has a price: without one there is no dollar figure at all."""
        return any(m.price_key is not None for m in self.models.values())

    def total_text(self) -> str:
        """The total, which never reads as $0 for models it could not price: it says it leaves them out."""
        unpriced = self.unpriced
        if not unpriced:
            return _range(self.low_usd, self.high_usd)
        names = ", ".join(printable(n) for n in unpriced[:MAX_NAMED])
        if len(unpriced) > MAX_NAMED:
            names += f" and {len(unpriced) - MAX_NAMED:,} more"
        fix = f"add {'it' if len(unpriced) == 1 else 'them'} with --prices FILE; not sent under --max-cost"
        if not self.priced:
            return f"{PRICE_UNKNOWN}: no model here is in the price table ({names}: {fix})"
        n = len(unpriced)
        return (
            f"{_range(self.low_usd, self.high_usd)} for the priced models, leaving out {n} unpriced"
            f" model{'s' if n != 1 else ''} ({names}: {fix})"
        )

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "source": self.source,
            "lane": self.lane,
            "lane_note": self.lane_note,
            "lines": self.lines,
            "reused": self.reused if self.reuse else None,
            "done": self.done,
            "input_tokens": round(sum(m.input_tokens for m in self.models.values())),
            "cached_tokens": round(sum(m.cached_tokens for m in self.models.values())),
            # Over the priced models only (`complete` false when some are unpriced); null when none is priced.
            "cost_usd": {
                "low": round(self.low_usd, 6) if self.priced else None,
                "high": None if self.high_usd is None or not self.priced else round(self.high_usd, 6),
                "complete": not self.unpriced,
            },
            "unpriced": self.unpriced,
            "models": [
                {
                    "model": m.model,
                    "price_key": m.price_key,
                    "lines": m.lines,
                    "input_tokens": round(m.input_tokens),
                    "cached_tokens": round(m.cached_tokens),
                    "output_tokens": {
                        "low": round(m.output_low),
                        "high": None if m.output_high is None else round(m.output_high),
                        "basis": m.output_basis(),
                    },
                    "cost_usd": None
                    if m.price_key is None
                    else {
                        "low": round(m.low_usd or 0.0, 6),
                        "high": None if m.high_usd is None else round(m.high_usd, 6),
                    },
                }
                for m in self.models.values()
            ],
        }

    def render_text(self) -> str:
        """A few lines for people."""
        p = printable
        head = f"estimate for {p(self.source)} · lane {self.lane} · {self.lines:,} lines to send"
        if self.reuse:
            head += f" · {self.reused:,} reused from the store"
        if self.done:
            head += f" · {self.done:,} already done"
        out = [head]
        for m in self.models.values():
            high = m.output_high
            low_text = f"{round(m.output_low):,}"
            if high is None:
                out_text = low_text + "+"
            else:
                out_text = low_text if round(high) == round(m.output_low) else f"{low_text}-{round(high):,}"
            cost = PRICE_UNKNOWN if m.price_key is None else _range(m.low_usd or 0.0, m.high_usd)
            cached = f" ({round(m.cached_tokens):,} may come from the prompt cache)" if m.cached_tokens >= 1 else ""
            out.append(
                f"  {p(m.model)}: {m.lines:,} lines · input ~{round(m.input_tokens):,} tokens{cached} · output"
                f" {out_text} tokens ({m.output_basis()}) · {cost}"
            )
        out.append(f"  total: {self.total_text()}")
        if any(m.cached_tokens >= 1 for m in self.models.values()):
            out.append(
                "  the low end prices the tokens the prompt cache may serve at the cached rate, the high end at"
                " the full rate: a cache hit is likely, never promised"
            )
        if note := self.lane_note:
            out.append(f"  {note}")
        return "\n".join(out)


def _range(low: float, high: float | None) -> str:
    if high is None:
        return f"at least {usd(low)} (no upper bound on the output)"
    return usd(low) if abs(high - low) < 5e-5 else f"{usd(low)}-{usd(high)}"


class _Tally:
    """Adds lines to an Estimate, looking up reusable answers a chunk at a time."""

    def __init__(self, est: Estimate, store: Store | None, newer_than: float | None) -> None:
        self.est = est
        self.store = store
        self.newer_than = newer_than
        self.pending: list[dict[str, Any]] = []
        self.groups: dict[str, str] = {}  # cache group key -> the prompt text of its first line
        self.lines = 0  # valid lines added

    async def add(self, body: dict[str, Any]) -> None:
        self.lines += 1
        if not self.est.reuse or self.store is None:
            self._count(body)
            return
        self.pending.append(body)
        if len(self.pending) >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending or self.store is None:
            return
        hashes = [body_hash(b) for b in self.pending]
        known = await reusable_hashes(self.store, [h for h in hashes if h is not None], newer_than=self.newer_than)
        for b, h in zip(self.pending, hashes, strict=True):
            if h is not None and h in known:
                self.est.reused += 1
            else:
                self._count(b)
        self.pending = []

    def _count(self, body: Mapping[str, Any]) -> None:
        name = model_of(body) or UNKNOWN_MODEL
        m = self.est.models.get(name)
        if m is None:
            m = self.est.models[name] = ModelEstimate(name)
        self.est.lines += 1
        m.lines += 1
        m.input_tokens += Estimator.input_tokens(body)
        m.cached_tokens += self._cacheable(body)
        out = body.get("max_output_tokens")
        if isinstance(out, int) and not isinstance(out, bool):
            m.bounded_lines += 1
            m.output_bound += out

    def _cacheable(self, body: Mapping[str, Any]) -> float:
        """Tokens of this line the prompt cache may serve: the start its prompt shares with the first line of
        its group (the rule submit groups by), in whole cache blocks; 0 for a group's first line."""
        key = cache_key(body)
        if key is None:
            return 0.0
        text = prompt_prefix(body, limit=1 << 62)
        first = self.groups.get(key)
        if first is None:
            if len(self.groups) < CACHE_GROUPS:
                self.groups[key] = text
            return 0.0
        shared = _common_start(first, text) / CHARS_PER_TOKEN
        return 0.0 if shared < CACHE_MIN else float(int(shared // CACHE_BLOCK) * CACHE_BLOCK)


def _common_start(a: str, b: str) -> int:
    """The length of the longest common prefix of a and b (by halving: each comparison runs in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


async def _finish(est: Estimate, store: Store | None, prices: PriceTable) -> Estimate:
    history = OutputHistory.from_bodies(await completed_outputs(store)) if store is not None else OutputHistory()
    for m in est.models.values():
        m.history = history.answers(m.model)
        m.typical_output = history.typical(m.model)
        m.price(prices, est.lane)
    est.models = dict(sorted(est.models.items(), key=lambda kv: -kv[1].input_tokens))
    return est


async def estimate_file(
    path: Path,
    shown: str,
    store: Store | None,
    prices: PriceTable,
    *,
    lane: Lane = Lane.SYNC,
    model: str | None = None,
    reuse: bool = False,
    newer_than: float | None = None,
) -> Estimate:
    """Estimate a JSONL file (validated as submit would: InputError names its bad lines, exit 2)."""
    est = Estimate(shown, lane, reuse=reuse)
    tally = _Tally(est, store, newer_than)
    problems: list[LineProblem] = []
    bad = 0
    try:
        if not path.exists() or path.is_dir():  # a pipe or device is read as it comes (once)
            what = "is a directory, not a file" if path.is_dir() else "no such file"
            raise InputError(shown, [LineProblem(0, "", what)], bad_lines=0, consequence=NOT_ESTIMATED)
        for line_no, raw in read_lines(path):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                bad += 1
                problems.append(LineProblem(line_no, "", f"is not valid JSON: {e.msg} (column {e.colno})"))
                continue
            v = validate_line(obj, line_no, model=model)
            if v.errors:
                bad += 1
                if len(problems) < InputError.MAX_SHOWN:
                    problems.extend(LineProblem(line_no, i.field, i.reason) for i in v.errors[:1])
                continue
            await tally.add(v.body)
    except Unreadable as e:
        raise InputError(shown, [e.problem()], bad_lines=0, consequence=NOT_ESTIMATED) from None
    if bad:
        raise InputError(shown, problems, bad, consequence=NOT_ESTIMATED)
    if not tally.lines:  # as submit refuses it
        raise InputError(shown, [no_requests(path)], bad_lines=0, consequence=NOT_ESTIMATED)
    await tally.flush()
    return await _finish(est, store, prices)


async def estimate_job(
    store: Store,
    job_id: str,
    prices: PriceTable,
    *,
    lane: Lane = Lane.SYNC,
) -> Estimate:
    """Estimate what a job still has to send: its queued and in-progress lines (JobNotFound if unknown).

    Reuse is decided at submit, so a job's lines left to send are all counted.
    """
    job = await store.get_job(job_id)
    est = Estimate(job_id, lane)
    tally = _Tally(est, store, None)
    seen = 0
    bodies: AsyncIterator[list[str]] = unfinished_bodies(store, job_id)
    async for chunk in bodies:
        for text in chunk:
            seen += 1
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict):
                await tally.add(body)
    await tally.flush()
    est.done = job.total - seen
    return await _finish(est, store, prices)
