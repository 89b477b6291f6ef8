"""The fake API's prompt cache: what `usage.input_tokens_details.cached_tokens` says, from what was sent before.

It follows what OpenAI documents of its own cache:
- Only a prompt of 1,024 tokens or more is cached, and it is cached as a prefix in blocks of 128 tokens:
  `cached_tokens` is the longest prefix this request shares with one processed before, in whole blocks,
  or 0 when that is under 1,024 tokens.
- A request is routed to one of `cache_machines` machines by a hash of its model, its first 256 tokens and
  its `prompt_cache_key`; a prefix is found only on the machine that processed it. So requests whose first
  256 tokens agree (a shared preamble) but that carry no key all land on one machine, and their prefixes
  compete there; a key per group spreads them out.
- A machine holds `cache_blocks` blocks (least recently used first out), and forgets a block `cache_ttl`
  seconds after its last use (the real cache: 5 to 10 minutes idle).
- A prompt can be read back `cache_write_delay` seconds after it arrived (default 0: at once). The provider
  writes it once it has processed the prompt, so requests that arrive together with the first one miss.

The prompt is the mock's own: `instructions` then the text of `input`, 4 characters a token (as
`content.usage_for` counts `input_tokens`). Not modelled: the spill of a busy prefix (about 15 requests a
minute) to more machines, and the Batch API (its lines report 0 cached tokens). Deterministic: the same
requests in the same order give the same counts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from runner_mock.knobs import Config

__all__ = ["BLOCK_TOKENS", "MIN_TOKENS", "PromptCache"]

CHARS_PER_TOKEN: Final = 4
BLOCK_TOKENS: Final = 128
MIN_TOKENS: Final = 1024
ROUTE_TOKENS: Final = 256
_BLOCK_CHARS: Final = BLOCK_TOKENS * CHARS_PER_TOKEN


class PromptCache:
    """Every machine's cached blocks: block-prefix hash -> (readable from, last used), least recently used first."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.machines: dict[int, OrderedDict[bytes, tuple[float, float]]] = {}
        self.keyed = 0  # answered requests that carried a prompt_cache_key
        self.lookups = 0  # of all answered requests, those long enough to be cached at all
        self.hits = 0  # of those, the ones that read a cached prefix

    def stats(self) -> dict[str, int]:
        """The `cache` part of `/_mock/stats`."""
        return {"keyed": self.keyed, "lookups": self.lookups, "hits": self.hits}

    def cached_tokens(self, body: Mapping[str, Any], text: str, now: float) -> int:
        """How many of this request's input tokens (its prompt `text`, see `content.prompt_text`) are read from
        the cache; the prompt is cached from now on."""
        key = body.get("prompt_cache_key")
        self.keyed += key is not None
        blocks = len(text) // _BLOCK_CHARS
        if blocks * BLOCK_TOKENS < MIN_TOKENS:
            return 0
        self.lookups += 1
        config = self.config
        route = hashlib.blake2b(digest_size=8)
        route.update(f"{body.get('model')}\x00{key if isinstance(key, str) else ''}\x00".encode())
        route.update(text[: ROUTE_TOKENS * CHARS_PER_TOKEN].encode("utf-8", "surrogatepass"))
        where = int.from_bytes(route.digest(), "big") % max(1, config.cache_machines)
        machine = self.machines.setdefault(where, OrderedDict())
        # One running hash over the prompt; its value after each whole block names that prefix.
        h = hashlib.blake2b(str(body.get("model")).encode(), digest_size=16)
        shared, missed = 0, False
        ready_at = now + config.cache_write_delay
        for i in range(blocks):
            h.update(text[i * _BLOCK_CHARS : (i + 1) * _BLOCK_CHARS].encode("utf-8", "surrogatepass"))
            name = h.digest()
            seen = machine.get(name)
            live = seen is not None and now - seen[1] <= config.cache_ttl
            if not missed and live and seen is not None and seen[0] <= now:
                shared = i + 1
            else:
                missed = True
            # (readable from, last used): a block still being written keeps its time; a forgotten one starts over
            machine[name] = (seen[0] if live and seen is not None else ready_at, now)
            machine.move_to_end(name)
        while len(machine) > max(0, config.cache_blocks):
            machine.popitem(last=False)
        cached = shared * BLOCK_TOKENS
        if cached < MIN_TOKENS:
            return 0
        self.hits += 1
        return cached
