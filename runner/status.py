"""What `runner status` (and `runner run`, at its end) shows of a job, beside `runner.report`'s fuller report.

`JobStatusReport.to_json()` is the `status --json` document, `render_text()` the few lines for people.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from runner.states import RESULTS, JobStatus, RequestState, count
from runner.store import JobStats
from runner.store.batches import BatchRow
from runner.store.fleet import FleetView
from runner.term import printable

__all__ = ["JobStatusReport", "job_state"]


def job_state(st: JobStats) -> str:
    """A job's status in words: a finished job whose every line failed is `failed`, not `completed`."""
    failed = count(st.counts, RequestState.FAILED)
    status = st.status
    if status is JobStatus.COMPLETED:
        if not failed:
            return JobStatus.COMPLETED.value
        ok = count(st.counts, *RESULTS)
        return RequestState.FAILED.value if not ok else f"done, {failed:,} failed"
    text = status.value.replace("_", " ")
    return f"{text}, {failed:,} failed" if failed and status is not JobStatus.CANCELLED else text


@dataclass(frozen=True)
class JobStatusReport:
    """One job's counts, usage and timing, as `runner status` shows them."""

    stats: JobStats
    open_batches: list[BatchRow] = field(default_factory=list)  # the batch lane's batches not merged yet
    reused: int | None = None  # lines answered from the store at submit (`--reuse`); None: not asked
    fleet: FleetView | None = field(default=None)  # the store's live runners and stale leases (`runner status`)

    def to_json(self) -> dict[str, Any]:
        """The `status --json` document."""
        st = self.stats
        elapsed = st.elapsed()
        return {
            "job_id": st.job.id,
            "name": st.job.name,
            "source": st.job.source,
            "status": st.status.value,
            # The words `runner jobs` and `runner report` show: a finished job whose lines all failed is `failed`,
            # where `status` (where the job is in its life) says `completed`, and a script took that for success.
            "state": job_state(st),
            "total": st.job.total,
            "counts": st.counts,
            "attempts": st.attempts,
            "rate_limited": st.rate_limited,
            "usage": st.usage.as_dict(),
            "elapsed_seconds": round(elapsed, 3) if elapsed is not None else None,
            # Lines reused at submit were not finished by a run: they do not count toward its throughput.
            "throughput_rps": round((st.finished - (self.reused or 0)) / elapsed, 2) if elapsed else None,
            "background": st.job.background,
            "created_at": st.job.created_at,
            "in_flight_by_owner": st.in_flight_by_owner,
            "stale_leases": st.stale_leases,
            "open_batches": [
                {
                    "batch_id": b.batch_id,
                    "step": b.step,
                    "status": b.status,
                    "requests": b.lines,
                    "completed": b.done_count,
                    "failed": b.failed_count,
                    "model": b.model,
                    "age_seconds": round(time.time() - b.created_at, 1),
                }
                for b in self.open_batches
            ],
            **({} if self.reused is None else {"reused": self.reused}),
            **({"fleet": self._fleet_json()} if self.fleet is not None else {}),
        }

    def _fleet_json(self) -> dict[str, Any]:
        f = self.fleet
        assert f is not None
        return {
            "runners": [
                {
                    "id": r.id,
                    "host": r.host,
                    "pid": r.pid,
                    "in_flight": r.in_flight,
                    "heartbeat_age_seconds": round(r.heartbeat_age, 1),
                    "started_at": r.started_at,
                }
                for r in f.runners
            ],
            "stale_leases": f.stale_leases,
            "oldest_stale_lease_seconds": None if f.oldest_stale_age is None else round(f.oldest_stale_age, 1),
        }

    def render_text(self) -> str:
        """The human-readable figures, a few lines."""
        d = self.to_json()
        c, u = d["counts"], d["usage"]
        lines = [f"job {d['job_id']} ({printable(d['name'])}) · {d['total']} requests · {job_state(self.stats)}"]
        lines.append(
            "  "
            + " · ".join(
                f"{k.replace('_', ' ')} {c.get(k, 0)}"
                for k in (s.value for s in RequestState)  # the order of the flow: queued first, cancelled last
            )
        )
        if self.reused:
            lines.append(f"  reused {self.reused:,} (answered from the store at submit, no request sent)")
        retries = max(d["attempts"] - sum(v for k, v in c.items() if k != RequestState.QUEUED.value), 0)
        lines.append(f"  attempts {d['attempts']} ({retries} retries) · rate limited {d['rate_limited']}")
        lines.append(
            f"  usage: input {u['input_tokens']:,} · cached {u['cached_tokens']:,} · output {u['output_tokens']:,}"
            f" · reasoning {u['reasoning_tokens']:,} · total {u['total_tokens']:,}"
        )
        if d["elapsed_seconds"] is not None:
            rate = f" · {d['throughput_rps']:.1f} requests/s" if d["throughput_rps"] else ""
            lines.append(f"  elapsed {d['elapsed_seconds']:.1f} s{rate}")
        if d["in_flight_by_owner"] or d["stale_leases"]:
            owners = ", ".join(f"{printable(o)}: {n}" for o, n in d["in_flight_by_owner"].items()) or "none"
            lines.append(f"  in flight by runner: {owners} · stale leases {d['stale_leases']}")
        for b in d["open_batches"]:
            name = printable(b["batch_id"]) if b["batch_id"] else f"(not created yet: {b['step']})"
            lines.append(
                f"  batch {name}: {printable(b['status'] or b['step'])} · {b['completed']:,} of {b['requests']:,}"
                f" done, {b['failed']:,} failed · {b['age_seconds']:.0f} s old"
            )
        f = d.get("fleet")
        if f is not None and (f["runners"] or f["stale_leases"]):
            lines.append(f"  runners on this store: {len(f['runners'])} live")
            for r in f["runners"]:
                lines.append(
                    f"    {printable(r['host'])} pid {r['pid']}: {r['in_flight']} in flight,"
                    f" last heartbeat {r['heartbeat_age_seconds']:.1f} s ago"
                )
            if f["stale_leases"]:
                lines.append(
                    f"  stale leases in the store: {f['stale_leases']}, the oldest expired"
                    f" {f['oldest_stale_lease_seconds']:.0f} s ago (taken back by the next runner)"
                )
        return "\n".join(lines)
