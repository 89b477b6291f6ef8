"""The fake API's knobs, declared once.

`Config` is the single declaration: each field carries its default and its help text. The command-line
flags (`--latency 0.5`), their `--help` defaults and the checks of `POST /_mock/config` are all derived
from it, so a new knob is one line here.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Config", "add_flags", "apply_changes", "bad_change", "from_flags"]

_T = TypeVar("_T")


def _knob(default: _T, help: str) -> _T:
    """A `Config` field with its default and the help text its flag shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Fault and behaviour knobs; every fault defaults to off."""

    api_key: str | None = _knob(None, "require this key (None: accept any key, or none)")
    latency: float = _knob(0.0, "seconds per foreground create")
    # A create takes latency * (1 +- jitter), uniformly: real latencies vary.
    latency_jitter: float = _knob(0.0, "creates take latency x (1 +- this), uniformly")
    bg_delay: float = _knob(1.0, "seconds until a background response ends")
    p429: float = _knob(0.0, "fraction of creates answered 429")
    retry_after: float = _knob(0.2, "retry-after seconds on injected 429s")
    p5xx: float = _knob(0.0, "fraction of creates answered 503")
    p500: float = _knob(0.0, "fraction of creates answered 500 (a failure of that request, not of the server)")
    pdrop: float = _knob(0.0, "fraction of creates whose connection drops")
    quota: bool = _knob(False, "answer every create with insufficient_quota")
    quota_after: int | None = _knob(None, "insufficient_quota after N creates")
    bg_fail: float = _knob(0.0, "fraction of background responses that fail")
    bg_fail_code: str = _knob("server_error", "error code of background responses that fail")
    poll_p429: float = _knob(0.0, "fraction of GET polls answered 429")
    poll_hint: bool = _knob(False, "send openai-poll-after-ms on a background response still running: ms until it ends")
    rpm: int | None = _knob(None, "requests per minute (per-second windows)")
    tpm: int | None = _knob(None, "tokens per minute (per-second windows)")
    no_limit_headers: bool = _knob(False, "send no x-ratelimit-* headers (as vLLM, Ollama and most proxies do)")
    flex_latency: float | None = _knob(None, "seconds per foreground create on service_tier flex (None: as latency)")
    flex_p429: float = _knob(0.0, "fraction of flex creates answered 429 resource_unavailable")
    flex_busy: int = _knob(0, "answer the next N flex creates 429 resource_unavailable")
    batch_validate_delay: float = _knob(0.2, "seconds a batch stays validating")
    batch_run_delay: float = _knob(1.0, "seconds a batch stays in_progress")
    batch_finalize_delay: float = _knob(0.2, "seconds a batch stays finalizing (or cancelling)")
    batch_expire: float = _knob(0.0, "fraction of each batch's lines left undone: the batch ends expired")
    batch_fail: int = _knob(0, "the next N batches fail validation")
    batch_drop_create: int = _knob(0, "drop the connection of the next N batch creates, after making the batch")
    batch_reply_delay: float = _knob(0.0, "seconds an upload or batch create waits, after it took effect, to reply")
    file_read_delay: float = _knob(0.0, "seconds a file download pauses after its first half")
    batch_token_limit: int | None = _knob(None, "enqueued input tokens per model; a batch over it fails")
    cache_ttl: float = _knob(300.0, "seconds a cached prompt prefix lives after its last use")
    cache_machines: int = _knob(16, "cache machines; a request goes to one by its model, first 256 tokens and key")
    cache_blocks: int = _knob(4096, "128-token blocks each cache machine holds (least recently used go first)")
    cache_write_delay: float = _knob(0.0, "seconds after a request arrives until its prompt can be read from cache")
    seed: int = _knob(0, "seed of the fault draws")


def _accepted(hint: Any) -> tuple[type, ...]:
    """The JSON value types a knob takes at runtime: its own types, and an int wherever a float goes."""
    kinds: tuple[type, ...] = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return (*kinds, int) if float in kinds else kinds


_HINTS = typing.get_type_hints(Config)
_FIELDS = dataclasses.fields(Config)
# Knob name -> the value types `POST /_mock/config` accepts for it.
_TYPES: dict[str, tuple[type, ...]] = {f.name: _accepted(_HINTS[f.name]) for f in _FIELDS}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per knob (`bg_delay` -> `--bg-delay`), with its default and help."""
    for f in _FIELDS:
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        kinds = [k for k in _TYPES[f.name] if k is not type(None)]
        if kinds == [bool]:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=kinds[0], default=f.default, help=help_text)


def from_flags(args: argparse.Namespace) -> Config:
    """The `Config` the parsed flags of `add_flags` describe."""
    return Config(**{f.name: getattr(args, f.name) for f in _FIELDS})


def bad_change(changes: Mapping[str, Any]) -> str | None:
    """The first knob in `changes` that is unknown or has a value of the wrong type, or None."""
    for name, value in changes.items():
        kinds = _TYPES.get(name)
        # bool is an int to isinstance, but `"rpm": true` is a mistake, not 1.
        if kinds is None or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return name
    return None


def apply_changes(config: Config, changes: Mapping[str, Any]) -> None:
    """Set checked (`bad_change`) knobs on `config`, as floats where the knob is a float."""
    for name, value in changes.items():
        setattr(config, name, float(value) if float in _TYPES[name] else value)
