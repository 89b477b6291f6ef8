"""The prompt-cache group key (runner/cachekeys.py): which bodies share one, and which get none."""

from __future__ import annotations

from typing import Any

from runner.cachekeys import KEY_PREFIX, PREFIX_CHARS, CacheGroups, cache_key, prompt_prefix

LONG = "You grade answers. " * 250  # 4,750 characters: past the 4,096 of the prefix


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "instructions": LONG, "input": "item 1", **kw}


def test_lines_that_differ_only_after_the_prefix_share_a_key() -> None:
    a, b = cache_key(body(input="item 1")), cache_key(body(input="item 2", temperature=0.2, metadata={"k": "v"}))
    assert a is not None and a == b
    assert a.startswith(KEY_PREFIX) and len(a) == len(KEY_PREFIX) + 24
    # The same prompt in input messages instead of a string is the same text.
    msgs = body(input=[{"role": "user", "content": [{"type": "input_text", "text": "item 3"}]}])
    assert cache_key(msgs) == a


def test_what_changes_the_key() -> None:
    base = cache_key(body())
    assert cache_key(body(model="gpt-4.1")) != base  # the cache is per model
    assert cache_key(body(instructions="Other. " + LONG)) != base  # the prefix differs at its start
    assert cache_key(body(tools=[{"type": "function", "name": "f"}])) != base  # tools come first in the prompt
    # A difference past the first 4,096 characters is the same group.
    assert cache_key(body(instructions=LONG + " and one more rule")) == base
    # The boundary between instructions and input counts: moving text across it is another prompt.
    split = body(instructions="Grade it.", input=LONG)
    moved = body(instructions="Grade", input=" it." + LONG)
    assert None is not cache_key(split) != cache_key(moved)


def test_what_has_no_key() -> None:
    assert cache_key({"model": "m", "input": "short"}) is None  # too short ever to be cached
    assert cache_key({"model": "m", "input": "x" * (PREFIX_CHARS - 3)}) is None
    assert cache_key({"model": "m", "input": "x" * PREFIX_CHARS}) is not None
    # Continuing server-side state: what the provider sees first is the stored conversation.
    assert cache_key(body(conversation="conv_1")) is None
    assert cache_key(body(previous_response_id="resp_1")) is None
    # Long text anywhere in a list of items counts; non-text parts by their type.
    image = {"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}
    items = [image, {"role": "user", "content": LONG}]
    assert cache_key({"model": "m", "input": items}) is not None
    assert prompt_prefix({"model": "m", "input": items}).startswith("\x1e\x1e[input_image]\x1e")


def test_the_prefix_stops_reading_a_long_conversation() -> None:
    items = [{"role": "user", "content": LONG}] + [{"role": "user", "content": {"bad": 1}}] * 10_000
    assert len(prompt_prefix({"input": items})) == PREFIX_CHARS


def test_the_order_sends_each_groups_first_line_one_group_early() -> None:
    groups = CacheGroups()
    a, b, c = (body(instructions=f"{t} " + LONG) for t in "ABC")
    lines = [a, b, a, {"model": "m", "input": "short"}, b, c, c, a]
    places = [groups.place(dict(x), n) for n, x in enumerate(lines, start=1)]
    # A's first line at 1; B's first line one group early (before A's rest, at 2); C's before B's rest.
    assert places == [1, 1, 2, 8, 4, 3, 12, 2]
    order = [n for _, n in sorted((p, n) for n, p in enumerate(places, start=1))]
    assert order == [1, 2, 3, 8, 6, 5, 4, 7]
    own = body(prompt_cache_key="mine")
    groups.place(own, 9)
    assert own["prompt_cache_key"] == "mine"  # a line's own key is never changed
