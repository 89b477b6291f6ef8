"""Token counts: the one type for them, whether of one reply, a job or a model.

It is ground that both sides stand on: runner/reply.py reads counts out of replies (bounded), and the store
keeps and sums them. Neither of those may import the other, so the type lives here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """Token counts of one response, or a sum of them. cached and reasoning are subsets, not addends."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """The five counts under their JSON names, as `status --json` and reports print them."""
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
        }

    def __add__(self, other: UsageCounts) -> UsageCounts:
        """Element-wise sum."""
        return UsageCounts(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.total_tokens + other.total_tokens,
        )
