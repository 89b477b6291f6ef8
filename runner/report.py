"""A job's report: counts, usage, estimated cost, latency, retries, errors and the slowest requests.

`build_report` reads everything from the store; `Report.to_json()` is the machine form and
`Report.render_text()` fits one screen. A model the price table does not know is listed with its tokens and
never counted as $0: the total is then a lower bound, and both forms say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from runner.costs import UNKNOWN_MODEL, LaneCost, Reused, reused_summary
from runner.outputcheck import CheckStatus
from runner.prices import PriceTable
from runner.states import RequestState
from runner.status import job_state
from runner.store import Store, UsageCounts
from runner.store.batches import usage_by_model_and_lane
from runner.store.outputs import CheckCounts, check_counts
from runner.store.reports import (
    ErrorGroup,
    Latency,
    SlowRequest,
    attempt_totals,
    errors_by_code,
    latency,
    slowest,
)
from runner.term import printable, usd

__all__ = ["ModelCost", "Report", "Reused", "build_report", "reused_summary"]

_STATE_ORDER: Final = tuple(s.value for s in RequestState)
_ACTIVE: Final = frozenset({RequestState.QUEUED.value, RequestState.IN_PROGRESS.value})
_MAX_MODELS_SHOWN = 5
_MAX_ERRORS_SHOWN = 5
_MESSAGE_WIDTH = 120  # long enough for the cause of most API errors; the full text is in --json


def cost_headline(total: float, *, complete: bool, priced: bool) -> str:
    """A job's cost as the text and HTML reports headline it: a lower bound when some of its models have no
    price, and "unknown" when none has one (it read `at least $0.0000`, which looks like free)."""
    if not complete and not priced:
        return "unknown: none of its models has a price"
    return f"{'at least ' if not complete else ''}{usd(total)}"


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Usage and cost of the requests billed to one model."""

    model: str
    price_key: str | None  # the price table entry used; None when the model is unpriced
    requests: int
    usage: UsageCounts
    usd: float | None  # None when unpriced

    @property
    def priced(self) -> bool:
        return self.usd is not None


def _pname(q: float) -> str:
    return f"p{q * 100:g}"  # 0.5 -> p50, 0.999 -> p99.9


def _short(text: str | None, width: int = _MESSAGE_WIDTH) -> str:
    """`text` on one line, made printable, at most `width` characters: cut at a word boundary with "…".

    A single word longer than the width (a URL, an id) is cut inside it, as there is no boundary to use.
    `runner show JOB CUSTOM_ID` gives the whole text.
    """
    one_line = printable(" ".join((text or "").split()))
    if len(one_line) <= width:
        return one_line
    head = one_line[: width - 1]  # room for the ellipsis
    if one_line[width - 1] != " ":  # the cut falls inside a word: drop that word
        space = head.rfind(" ")
        if space > 0:
            head = head[:space]
    return head.rstrip(" ,;:-") + "…"


@dataclass(frozen=True)
class Report:
    """Everything `runner report` shows about one job."""

    job_id: str
    name: str
    source: str
    status: str
    state: str  # the status in words, as `runner status` and `runner jobs` say it (`done, 3 failed`, `failed`)
    generated_at: float
    total: int
    counts: dict[str, int]
    usage: UsageCounts
    models: list[ModelCost]  # every model that used tokens, most tokens first
    prices_taken: str | None
    prices_source: str | None
    prices_user_file: str | None
    latency: Latency
    attempts: int
    retries: int  # attempts after each request's first
    rate_limited: int  # 429s met
    errors: list[ErrorGroup]
    slowest: list[SlowRequest]
    elapsed_seconds: float | None
    throughput_rps: float | None
    # Structured outputs: verdicts of the latest answers, and answers rejected and asked again (--repair).
    checks: CheckCounts = field(default_factory=lambda: CheckCounts({}, 0, 0, []))
    rejected_usd: float = 0.0  # what the rejected answers cost (priced models only), part of cost_usd
    rejected_unpriced: tuple[str, ...] = ()
    lanes: list[LaneCost] = field(default_factory=list)  # by lane: batch and flex pay the Batch rate

    @property
    def saved_usd(self) -> float:
        """What the job saved against the synchronous price by running on the flex or batch lane."""
        return sum(x.usd_standard - x.usd for x in self.lanes)

    reused: Reused = field(default_factory=lambda: Reused(0, UsageCounts(), 0.0, []))

    @property
    def priced(self) -> list[ModelCost]:
        return [m for m in self.models if m.usd is not None]

    @property
    def unpriced(self) -> list[ModelCost]:
        return [m for m in self.models if m.usd is None]

    @property
    def cost_usd(self) -> float:
        """The sum over priced models, rejected answers included; a lower bound when `cost_complete` is False."""
        return sum(m.usd for m in self.models if m.usd is not None) + self.rejected_usd

    @property
    def cost_complete(self) -> bool:
        return not self.unpriced and not self.rejected_unpriced

    @property
    def failed(self) -> int:
        return self.counts.get(RequestState.FAILED.value, 0)

    def cost_note(self) -> str | None:
        """Why the total is not the whole cost, if it is not."""
        if self.cost_complete:
            return None
        names = ", ".join(m.model for m in self.unpriced)
        return f"lower bound: no price for {names}; their tokens are not counted in the total"

    @property
    def cached_share(self) -> float:
        """The part of the input tokens read from the provider's prompt cache (0 to 1)."""
        u = self.usage
        return u.cached_tokens / u.input_tokens if u.input_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        lat = self.latency
        return {
            "job_id": self.job_id,
            "name": self.name,
            "source": self.source,
            "status": self.status,
            "state": self.state,
            "generated_at": self.generated_at,
            "total": self.total,
            "counts": dict(self.counts),
            "usage": self.usage.as_dict(),
            "cached_share": round(self.cached_share, 4),
            "cost": {
                "usd": round(self.cost_usd, 6),
                "complete": self.cost_complete,
                "note": self.cost_note(),
                "prices_taken": self.prices_taken,
                "prices_source": self.prices_source,
                "prices_user_file": self.prices_user_file,
                "by_model": [
                    {
                        "model": m.model,
                        "price_key": m.price_key,
                        "requests": m.requests,
                        "usage": m.usage.as_dict(),
                        "usd": round(m.usd, 6),
                    }
                    for m in self.priced
                    if m.usd is not None
                ],
                "unpriced": [
                    {"model": m.model, "requests": m.requests, "usage": m.usage.as_dict()} for m in self.unpriced
                ],
                "by_lane": [
                    {
                        "lane": x.lane,
                        "requests": x.requests,
                        "usd": round(x.usd, 6),
                        "usd_standard": round(x.usd_standard, 6),
                    }
                    for x in self.lanes
                ],
                "saved_usd": round(self.saved_usd, 6),
            },
            "latency_seconds": {
                "count": lat.count,
                **{_pname(q): v for q, v in lat.percentiles.items()},
                "mean": lat.mean,
                "max": lat.max,
            },
            "attempts": self.attempts,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "errors": [
                {
                    "code": g.code,
                    "count": g.count,
                    "examples": [
                        {
                            "custom_id": x.custom_id,
                            "line_no": x.line_no,
                            "http_status": x.http_status,
                            "message": x.message,
                        }
                        for x in g.examples
                    ],
                }
                for g in self.errors
            ],
            "slowest": [
                {"custom_id": s.custom_id, "line_no": s.line_no, "seconds": s.seconds, "attempts": s.attempts}
                for s in self.slowest
            ],
            "elapsed_seconds": self.elapsed_seconds,
            "throughput_rps": self.throughput_rps,
            "output_checks": self.checks_json(),
            "reused": {
                "requests": self.reused.requests,
                "usage": self.reused.usage.as_dict(),
                "saved_usd": round(self.reused.saved_usd, 6),
                "unpriced_models": self.reused.unpriced,
            },
        }

    def checks_json(self) -> dict[str, Any]:
        """Structured-output verdicts per status, and what repairs asked again and cost."""
        c = self.checks
        rejected = UsageCounts()
        for m in c.rejected:
            rejected = rejected + m.usage
        return {
            **{s.value: c.by_status.get(s.value, 0) for s in CheckStatus},
            "repaired_requests": c.repaired,
            "repairs": c.repairs,
            "rejected_usage": rejected.as_dict(),
            "rejected_usd": round(self.rejected_usd, 6),
            "rejected_unpriced": list(self.rejected_unpriced),
        }

    def render_text(self) -> str:
        """The report for a terminal: about 25 lines at most. Names, ids and messages from outside are escaped."""
        p = printable
        out: list[str] = [f"job {p(self.job_id)} ({p(self.name)}) · {self.total} requests · {self.state}"]
        out.append("  " + " · ".join(f"{s.replace('_', ' ')} {self.counts.get(s, 0)}" for s in _STATE_ORDER))
        u = self.usage
        share = f" ({round(100 * self.cached_share)} % of input from the prompt cache)" if u.cached_tokens else ""
        out.append(
            f"  usage: input {u.input_tokens:,} · cached {u.cached_tokens:,}{share} · output {u.output_tokens:,}"
            f" · reasoning {u.reasoning_tokens:,} · total {u.total_tokens:,}"
        )
        taken = f"prices of {p(self.prices_taken)}" if self.prices_taken else "prices of unknown date"
        if self.prices_user_file:
            taken += f" + {p(self.prices_user_file)}"
        priced = any(m.usd is not None for m in self.models)
        headline = cost_headline(self.cost_usd, complete=self.cost_complete, priced=priced)
        known = self.cost_complete or priced
        out.append(f"  cost: {headline} ({'estimate; ' if known else ''}{taken})")
        for m in self.models[:_MAX_MODELS_SHOWN]:
            what = usd(m.usd) if m.usd is not None else "no price"
            out.append(
                f"    {p(m.model)}: {m.requests} req · in {m.usage.input_tokens:,}"
                f" (cached {m.usage.cached_tokens:,}) · out {m.usage.output_tokens:,} · {what}"
            )
        if len(self.models) > _MAX_MODELS_SHOWN:
            out.append(f"    … and {len(self.models) - _MAX_MODELS_SHOWN} more model(s)")
        if any(x.lane != "sync" for x in self.lanes):
            by_lane = " · ".join(f"{x.lane} {x.requests} req {usd(x.usd)}" for x in self.lanes)
            out.append(f"    lanes: {by_lane}; saved {usd(self.saved_usd)} against the synchronous price")
        if note := self.cost_note():
            out.append(f"    {p(note)}")
        if r := self.reused:
            bound = "at least " if r.unpriced else ""
            out.append(
                f"  reused {r.requests:,} (answered from the store, no request sent): tokens reused"
                f" {r.usage.total_tokens:,} (input {r.usage.input_tokens:,} · output {r.usage.output_tokens:,})"
                f" · saved {bound}{usd(r.saved_usd)}"
            )
        lat = self.latency
        if lat.count:
            parts = [f"{_pname(q)} {v:.2f} s" for q, v in lat.percentiles.items()]
            out.append(f"  latency: {' · '.join(parts)} · max {lat.max or 0:.2f} s ({lat.count} requests)")
        out.append(f"  attempts {self.attempts} ({self.retries} retries) · rate limited (429) {self.rate_limited}")
        if self.errors:
            out.append(f"  errors ({self.failed} failed):")
            for g in self.errors[:_MAX_ERRORS_SHOWN]:
                ids = ", ".join(
                    p(x.custom_id) + (f" [{x.http_status}]" if x.http_status is not None else "") for x in g.examples
                )
                first = _short(g.examples[0].message) if g.examples else ""
                out.append(f"    {p(g.code)} ×{g.count}: {first} (e.g. {ids})")
            if len(self.errors) > _MAX_ERRORS_SHOWN:
                out.append(f"    … and {len(self.errors) - _MAX_ERRORS_SHOWN} more error code(s)")
            out.append(f"    one request in full: runner show {self.job_id} CUSTOM_ID")
        if self.slowest:
            out.append(
                "  slowest: "
                + " · ".join(
                    f"{p(s.custom_id)} {s.seconds:.2f} s" + (f" ({s.attempts} attempts)" if s.attempts > 1 else "")
                    for s in self.slowest
                )
            )
        if self.checks.by_status or self.checks.repairs:
            c = self.checks
            parts = [f"{s.value.replace('_', ' ')} {c.by_status.get(s.value, 0)}" for s in CheckStatus]
            line = "  structured outputs: " + " · ".join(parts)
            if c.repairs:
                line += f" · {c.repairs} answer(s) asked again for {c.repaired} request(s) ({usd(self.rejected_usd)})"
            out.append(line)
        if self.elapsed_seconds is not None:
            rate = f" · {self.throughput_rps:.2f} requests/s" if self.throughput_rps else ""
            out.append(f"  elapsed {self.elapsed_seconds:.1f} s{rate}")
        return "\n".join(out)


async def build_report(store: Store, job_id: str, prices: PriceTable) -> Report:
    """Read a job's figures from the store and price its usage (JobNotFound for an unknown job)."""
    st = await store.job_stats(job_id)
    now = time.time()
    # Priced per model and lane: the Batch API and the flex tier pay the Batch rate.
    by_model: dict[str | None, tuple[int, UsageCounts, float]] = {}
    lanes: dict[str, LaneCost] = {}
    for m in await usage_by_model_and_lane(store, job_id):
        key = prices.key_for(m.model)
        standard = prices.models[key].cost(m.usage) if key is not None else 0.0
        usd = standard * prices.lane_factor(m.lane)
        n, usage, total = by_model.get(m.model, (0, UsageCounts(), 0.0))
        by_model[m.model] = (n + m.requests, usage + m.usage, total + usd)
        was = lanes.get(m.lane, LaneCost(m.lane, 0, 0.0, 0.0))
        lanes[m.lane] = LaneCost(m.lane, was.requests + m.requests, was.usd + usd, was.usd_standard + standard)
    models: list[ModelCost] = []
    for model, (n, usage, total) in by_model.items():
        key = prices.key_for(model)
        models.append(ModelCost(model or UNKNOWN_MODEL, key, n, usage, total if key is not None else None))
    models.sort(key=lambda m: (-m.usage.total_tokens, m.model))
    status = st.status
    elapsed = st.elapsed(now)
    finished = st.finished
    tries = await attempt_totals(store, job_id)
    checks = await check_counts(store, job_id)
    rejected_usd = 0.0
    rejected_unpriced: list[str] = []
    for r in checks.rejected:
        key = prices.key_for(r.model)
        if key is None:
            rejected_unpriced.append(r.model or UNKNOWN_MODEL)
        else:
            rejected_usd += prices.models[key].cost(r.usage)
    reused = await reused_summary(store, job_id, prices)
    sent = finished - reused.requests  # reused lines were finished at submit, not by the run
    return Report(
        job_id=st.job.id,
        name=st.job.name,
        source=st.job.source,
        status=status.value,
        state=job_state(st),
        generated_at=now,
        total=st.job.total,
        counts={s: st.counts.get(s, 0) for s in _STATE_ORDER},
        usage=st.usage,
        models=models,
        prices_taken=prices.taken,
        prices_source=prices.source,
        prices_user_file=prices.user_file,
        latency=await latency(store, job_id),
        attempts=tries.attempts,
        retries=tries.retries,
        rate_limited=tries.rate_limited,
        errors=await errors_by_code(store, job_id),
        slowest=await slowest(store, job_id),
        elapsed_seconds=elapsed,
        throughput_rps=sent / elapsed if elapsed else None,
        checks=checks,
        rejected_usd=rejected_usd,
        rejected_unpriced=tuple(rejected_unpriced),
        lanes=sorted(lanes.values(), key=lambda x: x.lane),
        reused=reused,
    )
