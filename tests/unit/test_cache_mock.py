"""The mock server's prompt cache (runner_mock/cache.py): counts a test can predict."""

from __future__ import annotations

from typing import Any

from runner_mock.cache import PromptCache
from runner_mock.content import prompt_text
from runner_mock.knobs import Config

SHARED = "s" * 5000  # 1,250 tokens: 9 whole blocks of 128 tokens (1,152), past the 1,024 minimum


def ask(cache: PromptCache, instructions: str, item: str, now: float = 0.0, **kw: Any) -> int:
    body = {"model": "m", "instructions": instructions, "input": item, **kw}
    return cache.cached_tokens(body, prompt_text(body), now)


def test_a_shared_prefix_is_read_back_in_whole_blocks_from_1024_tokens() -> None:
    cache = PromptCache(Config())
    assert ask(cache, SHARED, "first item " * 20) == 0  # nothing seen yet
    assert ask(cache, SHARED, "second item " * 20) == 9 * 128  # 5,000 shared characters: 9 whole blocks
    assert ask(cache, SHARED, "first item " * 20) == 10 * 128  # the same prompt again: its 10 whole blocks
    short = "t" * 4000  # 1,000 tokens shared: 7 blocks, under the 1,024 minimum
    assert ask(cache, short, "a" * 600) == 0
    assert ask(cache, short, "b" * 600) == 0
    assert ask(cache, "x" * 1000, "tiny") == 0  # too short to be cached at all
    assert cache.stats() == {"keyed": 0, "lookups": 5, "hits": 2}


def test_the_window_forgets_an_idle_prefix() -> None:
    cache = PromptCache(Config(cache_ttl=300.0))
    ask(cache, SHARED, "one", now=0.0)
    assert ask(cache, SHARED, "two", now=299.0) == 9 * 128  # within the window, and used again now
    assert ask(cache, SHARED, "three", now=598.0) == 9 * 128  # 299 s after its last use
    assert ask(cache, SHARED, "four", now=899.0) == 0  # 301 s idle: forgotten


def test_routing_by_first_256_tokens_and_key() -> None:
    # Two templates behind one preamble of 300 tokens: without keys both land on the machine that preamble
    # picks; a machine that holds 12 blocks cannot keep both (10 blocks each), so taking turns always misses.
    preamble = "p" * 1200
    a, b = preamble + "a" * 4000, preamble + "b" * 4000
    cache = PromptCache(Config(cache_machines=16, cache_blocks=12))
    assert [ask(cache, t, f"item {i}") for i in range(3) for t in (a, b)] == [0] * 6
    # With a key per template they go to machines of their own (these two keys land apart), and hit.
    cache = PromptCache(Config(cache_machines=16, cache_blocks=12))
    got = [ask(cache, t, f"item {i}", prompt_cache_key=k) for i in range(3) for t, k in ((a, "ka"), (b, "kb"))]
    assert got == [0, 0] + [10 * 128] * 4
    assert cache.stats()["keyed"] == 6
    # The same prefix under another key is another machine: not found there.
    assert ask(cache, a, "item 9", prompt_cache_key="kz") == 0


def test_a_prompt_is_readable_once_written() -> None:
    cache = PromptCache(Config(cache_write_delay=0.5))
    assert ask(cache, SHARED, "one", now=0.0) == 0
    assert ask(cache, SHARED, "two", now=0.4) == 0  # arrived while the first was being processed
    assert ask(cache, SHARED, "three", now=0.5) == 9 * 128  # the first one's write is done
