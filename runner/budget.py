"""The spending budget of a run (`runner run --max-cost USD`, a spec's `[limits] max_cost`).

The budget caps what the jobs of the run have cost in all, this run and earlier ones: the store's usage of
those jobs when the run starts, priced from the price table, plus what comes back during the run. Before a
request is sent, its cost is estimated (input from its text, calibrated by the usage that comes back;
output by `max_output_tokens`, else the typical output of its model in the store and in this run, else
`DEFAULT_OUTPUT_TOKENS`); it is sent only if the spend so far plus the estimates of every request in flight
plus its own stays within the budget. When it does not fit, no new request starts: the pool waits for what
is in flight, re-checks with the real figures, and stops once the next request does not fit with nothing in
flight. A request whose model the price table does not know cannot be priced, so it is never sent under a
budget: the run stops and says which model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from runner.estimate import OutputHistory, model_of
from runner.limits import Estimator
from runner.prices import PriceTable
from runner.usage import UsageCounts

__all__ = ["DEFAULT_OUTPUT_TOKENS", "Budget"]

# Output tokens assumed for a request with no max_output_tokens, before any answer of its model was seen.
DEFAULT_OUTPUT_TOKENS: Final = 1000


@dataclass
class _InFlight:
    model: str | None
    usd: float
    text_tokens: float  # the text estimate of its input, to calibrate against the usage that comes back
    factor: float = 1.0  # what its lane pays of the standard price (the batch lane: the Batch rate)


@dataclass
class Budget:
    """The run's budget: admits a request only while spend + in-flight estimates + its own fit in `limit`."""

    limit: float
    prices: PriceTable
    spent: float = 0.0  # USD of the jobs so far (earlier runs included), priced models only
    history: OutputHistory = field(default_factory=OutputHistory)
    unpriced_model: str | None = None  # the model that stopped the run, if one did
    refused_usd: float | None = None  # the estimate of the last request that did not fit
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _text_sum: float = 0.0
    _input_sum: float = 0.0

    @property
    def in_flight_usd(self) -> float:
        """The estimated cost of the requests in flight."""
        return sum(x.usd for x in self._in_flight.values())

    @property
    def left(self) -> float:
        """USD left under the budget (never below 0)."""
        return max(self.limit - self.spent, 0.0)

    def _ratio(self) -> float:
        # Real input tokens per text-estimated token, learnt from the replies; 1 until one came back.
        return self._input_sum / self._text_sum if self._text_sum > 0 and self._input_sum > 0 else 1.0

    def estimate(self, body: Mapping[str, Any]) -> tuple[float, float] | None:
        """(USD, text-estimated input tokens) of one request; None when its model is unpriced."""
        model = model_of(body)
        price = self.prices.price(model)
        if price is None:
            return None
        text = Estimator.input_tokens(body)
        bound = body.get("max_output_tokens")
        if isinstance(bound, int) and not isinstance(bound, bool):
            out = float(bound)
        else:
            typical = self.history.typical(model) if model is not None else None
            out = typical if typical is not None else float(DEFAULT_OUTPUT_TOKENS)
        usage = UsageCounts(input_tokens=round(text * self._ratio()) + 1, output_tokens=round(out) + 1)
        return price.cost(usage), text

    def hold(self, request_id: int, body_json: str, factor: float = 1.0) -> None:
        """Count a request already sent (by an earlier run: a batch still open) as in flight, fit or not."""
        try:
            body = orjson.loads(body_json)
        except orjson.JSONDecodeError:
            return
        est = self.estimate(body) if isinstance(body, dict) else None
        if est is not None:
            self._in_flight[request_id] = _InFlight(model_of(body), est[0] * factor, est[1], factor)

    def admit(self, request_id: int, body_json: str, factor: float = 1.0) -> bool:
        """Whether the request fits in what is left; if it does, its estimate counts as in flight from now.

        `factor` is what the request's lane pays of the standard price (PriceTable.lane_factor)."""
        try:
            body = orjson.loads(body_json)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return True  # not a request the API can bill (submit lets none through): it fails on its own
        est = self.estimate(body)
        if est is None:
            self.unpriced_model = model_of(body) or "(no model)"
            return False
        usd, text = est
        usd *= factor
        if self.spent + self.in_flight_usd + usd > self.limit:
            self.refused_usd = usd
            return False
        self._in_flight[request_id] = _InFlight(model_of(body), usd, text, factor)
        return True

    def settle(self, request_id: int, usage: UsageCounts) -> None:
        """A request came back (or went back to the queue): its real cost replaces its estimate."""
        x = self._in_flight.pop(request_id, None)
        if x is None:
            return
        cost = self.prices.cost(x.model, usage)
        self.spent += (cost or 0.0) * x.factor
        if usage.input_tokens > 0:
            self._text_sum += x.text_tokens
            self._input_sum += usage.input_tokens
        if usage.total_tokens > 0 and x.model is not None:
            self.history.observe(x.model, usage.output_tokens)

    @property
    def busy(self) -> bool:
        """Whether any admitted request is still out."""
        return bool(self._in_flight)
