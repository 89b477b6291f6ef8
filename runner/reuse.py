"""Which requests ask the same question: the hash of a request body's normalised form, for `--reuse`.

The rule. Two bodies ask the same question when they are equal after leaving out the fields that do not
shape the answer (`IGNORED_FIELDS`):

- `metadata`, `user` and `safety_identifier` label the request for the caller or for abuse monitoring;
- `store` and `background` say where and how the answer is kept and fetched, not what it says;
- `service_tier` picks a price and a latency for the same model;
- `prompt_cache_key` and `prompt_cache_retention` steer the provider's prompt cache, which changes the
  price of the input, not the output.

Every other field takes part, unknown ones included (a field the runner does not know may well shape the
answer), compared as JSON values: key order does not matter, `1` and `1.0` are different values. So a
changed `model`, `temperature`, `instructions`, `input`, `tools`, `reasoning`, `text`, `max_output_tokens`
or `include` is another question.

A body that continues server-side state (`previous_response_id`, or `conversation`) has no hash: its
answer depends on what the API holds, not only on the body, so it is never reused nor reused from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = ["IGNORED_FIELDS", "STATEFUL_FIELDS", "body_hash"]

IGNORED_FIELDS: Final = frozenset(
    {
        "metadata",
        "user",
        "safety_identifier",
        "store",
        "background",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
STATEFUL_FIELDS: Final = ("previous_response_id", "conversation")
_SORTED: Final = orjson.OPT_SORT_KEYS


def body_hash(body: Mapping[str, Any]) -> str | None:
    """The first 128 bits of the sha256 (32 hex digits) of `body` without IGNORED_FIELDS, keys sorted at every
    level; None for a body that continues server-side state (see the module's rule). 128 bits keep the index
    small, and make two different questions with one hash as unlikely as a hardware fault."""
    if body.get("previous_response_id") is not None or body.get("conversation") is not None:  # STATEFUL_FIELDS
        return None
    # Most bodies carry none of these (or only metadata): copy only when something must go.
    kept = body if IGNORED_FIELDS.isdisjoint(body) else {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    return hashlib.sha256(orjson.dumps(kept, option=_SORTED)).hexdigest()[:32]
