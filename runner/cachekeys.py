"""Which lines share a prompt prefix: the group key behind `prompt_cache_key` and the claim order, at submit.

The provider caches the leading part of a prompt (tools, then instructions, then the input, in that order)
once it has been processed, and a later request that starts with the same 1,024 tokens or more reads it back
at a discount. It routes a request to a cache machine by a hash of about its first 256 tokens plus its
`prompt_cache_key`. So requests that share a long prefix should carry one key and arrive close together.

The rule. A line's prompt text is its `tools` (as JSON), its `instructions` and the text of its `input`
(a string, or the text of each message item; other items and parts by their type), each ended by a
separator. Two lines of the same `model` whose prompt texts agree on their first `PREFIX_CHARS` characters
are one group: 4,096 characters, about 1,024 tokens, the least two prompts must share for one to read the
other's cache, so lines that could help each other are grouped and lines that cannot are not (twenty
templates behind one shared preamble of 300 tokens are twenty groups). A prompt shorter than that has no
group, nor does a line that continues server-side state (`conversation`, `previous_response_id`): what the
provider sees first there is the stored conversation, not this text.

The order (`CacheGroups.place`, stored as each row's `sched`; claims take a job's rows by sched, then id).
A group's lines go together, at the place of its first line in the file. The provider writes a prompt to
its cache once it has processed it, so the requests sent at the same moment as a group's first one all
miss. Each group's first line therefore goes one group early: just before the rest of the group before
it, whose requests give it the time to be processed. Line n of the file (on the scale of `sched`, 2n) is:
- in no group: 2n, its own place;
- the first line of a group: 2f - 1, where f is the first line of the previous group (its own if none);
- another line of a group whose first line is f: 2f.
So the file A1 B1 A2 B2 C1 C2 goes A1 B1 A2 C1 B2 C2 (A1 and B1 at 1, A2 at 2, C1 at 3, B2 at 4, C2 at 10).

The key is `runner-` and 24 hex digits of a BLAKE2b hash of the model and that prefix: the same prefix
gets the same key in every job and every store, so tomorrow's run finds today's cache warm. Characters are
counted, not tokens (4 to a token in English; text with more tokens per character, such as Chinese, needs
a longer shared prefix here than the provider does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = ["KEY_FIELD", "KEY_PREFIX", "MAX_GROUPS", "PREFIX_CHARS", "CacheGroups", "cache_key", "prompt_prefix"]

PREFIX_CHARS: Final = 4096  # about 1,024 tokens at 4 characters a token: the least a cache hit shares
KEY_PREFIX: Final = "runner-"
KEY_FIELD: Final = "prompt_cache_key"
# Groups whose first line is remembered for the order; past this many, a new group's lines keep their own
# place (they still get the key), so a submit's memory stays flat on any file.
MAX_GROUPS: Final = 100_000
_SEP: Final = "\x1e"  # ends each part, so "ab" + "c" and "a" + "bc" are different prompts
_STATEFUL: Final = ("conversation", "previous_response_id")


def _item_text(item: Any) -> str:
    """The text a model reads from one input item: a message's text parts; other items by their type."""
    if not isinstance(item, dict):
        return ""
    if "role" not in item and item.get("type", "message") != "message":
        return f"[{item.get('type')}]"
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            parts.append(text if isinstance(text, str) else f"[{part.get('type')}]")
    return "".join(parts)


def prompt_prefix(body: Mapping[str, Any], limit: int = PREFIX_CHARS) -> str:
    """The first `limit` characters of the body's prompt text (see the module's rule); shorter if it is."""
    pieces: list[str] = []
    size = 0
    tools = body.get("tools")
    if tools:
        text = orjson.dumps(tools).decode()
        pieces.append(text)
        size += len(text)
    pieces.append(_SEP)
    size += 1
    instructions = body.get("instructions")
    if isinstance(instructions, str) and size < limit:
        pieces.append(instructions)
        size += len(instructions)
    pieces.append(_SEP)
    size += 1
    value = body.get("input")
    if isinstance(value, str):
        pieces.append(value)
    elif isinstance(value, list):
        for item in value:
            if size >= limit:  # the rest cannot change the prefix: stop reading a long conversation here
                break
            text = _item_text(item)
            pieces.append(text)
            pieces.append(_SEP)
            size += len(text) + 1
    return "".join(pieces)[:limit]


def cache_key(body: Mapping[str, Any]) -> str | None:
    """The group key of a body (`runner-` + 24 hex digits), or None when it has no group (see the rule)."""
    for key in _STATEFUL:
        if body.get(key) is not None:
            return None
    instructions, value = body.get("instructions"), body.get("input")
    if isinstance(value, str) and not body.get("tools") and isinstance(instructions, str | None):
        # The common line: two lengths decide it, without building the prefix.
        size = len(value) + (len(instructions) if isinstance(instructions, str) else 0) + 2
        if size < PREFIX_CHARS:
            return None
    prefix = prompt_prefix(body)
    if len(prefix) < PREFIX_CHARS:
        return None
    model = body.get("model")
    h = hashlib.blake2b(digest_size=12)
    h.update(str(model).encode())
    h.update(b"\x00")
    h.update(prefix.encode("utf-8", "surrogatepass"))
    return KEY_PREFIX + h.hexdigest()


class CacheGroups:
    """The groups of one file as its lines are read: gives each line its key and its place in the claim order."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}  # group key -> its first line
        self.previous: int | None = None  # the first line of the newest group

    def place(self, body: dict[str, Any], line_no: int) -> int:
        """Give `body` its group's `prompt_cache_key` unless it has its own (in place), and return its `sched`."""
        key = cache_key(body)
        if key is None:
            return 2 * line_no
        if KEY_FIELD not in body:  # a line's own key is the line's to choose
            body[KEY_FIELD] = key
        first = self.first.get(key)
        if first is not None:
            return 2 * first
        if len(self.first) >= MAX_GROUPS:
            return 2 * line_no
        self.first[key] = line_no
        lead = line_no if self.previous is None else self.previous
        self.previous = line_no
        return 2 * lead - 1
