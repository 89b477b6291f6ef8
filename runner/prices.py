"""Model prices, for cost estimates: a table shipped with the package (prices.toml), extendable by a user file.

A model the table does not know is *unpriced*: its cost is None, never 0, so a report can say that its
total is only a lower bound instead of quietly under-counting.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.errors import ConfigError
from runner.spec import describe_validation_error, read_toml

__all__ = ["ModelPrice", "PriceError", "PriceFile", "PriceTable", "UsageLike", "load_prices"]

PER_TOKENS: Final = 1_000_000  # prices are per 1M tokens
# Batch API and flex requests cost this fraction of the standard price unless the table says otherwise.
DEFAULT_BATCH_FACTOR: Final = 0.5
_DATE_SUFFIX: Final = "-20"  # "gpt-4.1-mini-2025-04-14": a dated snapshot of "gpt-4.1-mini"

# A dollar a token. Above it is a typo, or TOML's `inf` (1e400 reads as inf too), which made every cost NaN
# and put `"usd": NaN` (not JSON) into `report --json`; under it, a job's sums of costs stay finite.
MAX_USD_PER_MTOK: Final = 1_000_000
_Usd = Annotated[float, Field(ge=0, le=MAX_USD_PER_MTOK)]


class PriceError(ConfigError):
    """A price file is invalid."""


class UsageLike(Protocol):
    """Anything with the token counts a cost needs (`reply.UsageCounts`)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


class ModelPrice(BaseModel):
    """USD per 1M tokens for one model. Without `cached_input`, cached tokens cost the same as input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input: _Usd
    output: _Usd
    cached_input: _Usd | None = None

    def cost(self, usage: UsageLike) -> float:
        """USD for `usage`. Cached tokens are part of input tokens; reasoning tokens are part of output tokens."""
        cached = min(max(usage.cached_tokens, 0), usage.input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (usage.input_tokens - cached) * self.input + cached * cached_price + usage.output_tokens * self.output
        ) / PER_TOKENS


class PriceFile(BaseModel):
    """The shape of prices.toml and of a user's price file."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    taken: str | None = None  # YYYY-MM-DD, when the prices were read off the pricing page
    source: str | None = None
    # The Batch API's and the flex tier's price as a fraction of the standard one (OpenAI: 50 % off).
    batch_factor: Annotated[float, Field(ge=0, le=1)] | None = None
    models: dict[str, ModelPrice] = Field(default_factory=dict)


class PriceTable(PriceFile):
    """Prices by model name, with the date they were taken from the pricing page."""

    user_file: str | None = None  # the user's file that extended the built-in table, if any

    def key_for(self, model: str | None) -> str | None:
        """The table entry that prices `model`: the longest key equal to it, or followed in it by a date."""
        if not model:
            return None
        best: str | None = None
        for key in self.models:
            if (model == key or model.startswith(key + _DATE_SUFFIX)) and (best is None or len(key) > len(best)):
                best = key
        return best

    def price(self, model: str | None) -> ModelPrice | None:
        """The price of `model`, or None when the table does not know it."""
        key = self.key_for(model)
        return None if key is None else self.models[key]

    def lane_factor(self, lane: str) -> float:
        """What a lane pays of the standard price: batch and flex the Batch rate, sync all of it."""
        if lane == "sync":
            return 1.0
        return DEFAULT_BATCH_FACTOR if self.batch_factor is None else self.batch_factor

    def cost(self, model: str | None, usage: UsageLike) -> float | None:
        """USD for `usage` on `model`; None when the model is unpriced (never 0 for an unknown model)."""
        p = self.price(model)
        return None if p is None else p.cost(usage)


def _parse(data: Mapping[str, Any], where: str) -> PriceFile:
    try:
        return PriceFile.model_validate(dict(data))
    except ValidationError as e:
        raise PriceError(describe_validation_error(Path(where), e, ("models",))) from None


def load_prices(user_file: Path | None = None) -> PriceTable:
    """The built-in table, extended by `user_file` (same shape) when given: its entries replace built-in ones."""
    text = resources.files("runner").joinpath("prices.toml").read_text(encoding="utf-8")
    table = _parse(tomllib.loads(text), "runner/prices.toml")
    if user_file is None:
        return PriceTable(taken=table.taken, source=table.source, batch_factor=table.batch_factor, models=table.models)
    user = _parse(read_toml(user_file, PriceError), str(user_file))
    return PriceTable(
        taken=user.taken or table.taken,
        source=user.source or table.source,
        batch_factor=table.batch_factor if user.batch_factor is None else user.batch_factor,
        models={**table.models, **user.models},
        user_file=str(user_file),
    )
