"""Which unknown body keys look like mistakes: Chat Completions keys (and what to write instead), and keys
one edit (or one camelCase/kebab-case spelling) away from a known one. runner/validate.py asks only about
keys its checks do not know, so none of this runs for a line with known keys only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Final

# Fields other OpenAI-compatible servers accept that happen to be one edit away from a known key.
_FOREIGN_KEYS: Final = frozenset({"top_k"})

_REMOVE: Final = ""  # a Chat Completions key with no Responses counterpart
# Chat Completions keys, and what the Responses API takes instead.
CHAT_KEYS: Final[Mapping[str, str]] = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "functions": "tools",
    "function_call": "tool_choice",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
    "logprobs": "include: ['message.output_text.logprobs']",
    "web_search_options": "tools: [{'type': 'web_search'}]",
    "n": _REMOVE,
    "stop": _REMOVE,
    "frequency_penalty": _REMOVE,
    "presence_penalty": _REMOVE,
    "logit_bias": _REMOVE,
    "seed": _REMOVE,
    "modalities": _REMOVE,
    "audio": _REMOVE,
    "prediction": _REMOVE,
}
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether b is a with one character inserted, deleted or replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def key_advisor(known: frozenset[str]) -> Callable[[str], tuple[str, bool] | None]:
    """A cached `advise(key)` for a schema whose top-level keys are `known`.

    `advise(key)` is (reason, is a Chat Completions key) for an unknown top-level body key that looks like a
    mistake, else None. Called only for keys the body checks do not know; keys far from every known one are
    the API's business.
    """
    ordered = sorted(known)

    @functools.lru_cache(maxsize=4096)
    def advise(key: str) -> tuple[str, bool] | None:
        if key in known or key in _FOREIGN_KEYS:
            return None
        instead = CHAT_KEYS.get(key)
        if instead is not None:
            if instead == _REMOVE:
                return "Chat Completions field that the Responses API does not accept; remove it", True
            return f"Chat Completions field; write {instead!r} instead", True
        plain = _CAMEL.sub(r"_\1", key).lower().replace("-", "_")
        if plain in known:
            return f"unknown field; did you mean {plain!r}?", False
        if len(key) >= 3:
            for candidate in ordered:
                if _one_edit_apart(plain, candidate):
                    return f"unknown field; did you mean {candidate!r}?", False
        return None

    return advise
