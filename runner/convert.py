"""`runner convert`: Chat Completions lines (Batch lines or bare bodies) rewritten as Responses API lines.

What is rewritten: `messages` becomes `input` (system, developer, user and assistant messages keep their
role; assistant `tool_calls` and `tool` messages become function_call and function_call_output items; text,
image_url and file parts become input_text/output_text, input_image and input_file),
`max_tokens`/`max_completion_tokens` become `max_output_tokens`, `response_format` becomes `text.format`,
`tools`/`functions` and `tool_choice`/`function_call` take the Responses shapes, `reasoning_effort` and
`verbosity` move under `reasoning` and `text`, `logprobs: true` becomes an `include` entry, and a Batch
line's url `/v1/chat/completions` becomes `/v1/responses`. Other keys pass through unchanged.

Keys with no Responses counterpart (`n` above 1, `stop`, the penalties, `logit_bias`, `seed`, ...) are
refused, naming the line and the field, unless `drop_unsupported` says to leave them out. A file with any
refused line produces no output at all. Line numbers stay the same (blank lines stay blank), so an error
from `runner submit` on the output points at the same line of the input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from runner.errors import InputError, LineProblem
from runner.ingest import MAX_PROBLEMS_KEPT, Unreadable, read_lines
from runner.validate import ENVELOPE_KEYS, RESPONSES_URL

CHAT_URL: Final = "/v1/chat/completions"
NOTHING_WRITTEN: Final = "nothing was written"
# Chat Completions keys the Responses API has no place for. A null value (or n = 1) is dropped silently.
UNSUPPORTED: Final = frozenset(
    {
        "n",
        "stop",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "seed",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
    }
)
_MESSAGE_KEYS: Final = frozenset({"role", "content", "tool_calls", "tool_call_id", "refusal"})


@dataclass
class ConvertCounts:
    """What a conversion did: lines written, and how often each unsupported key was left out."""

    lines: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class _Refused(Exception):
    def __init__(self, field_: str, reason: str) -> None:
        self.field = field_
        self.reason = reason
        super().__init__(reason)


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Converter:
    def __init__(self, drop_unsupported: bool, counts: ConvertCounts) -> None:
        self.drop = drop_unsupported
        self.counts = counts

    def unsupported(self, path: str, key: str) -> None:
        if not self.drop:
            raise _Refused(_at(path, key), "has no Responses API counterpart; remove it (or pass --drop-unsupported)")
        self.counts.dropped[key] += 1

    def line(self, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise _Refused("", "must be a JSON object")
        if not any(k in obj for k in ENVELOPE_KEYS):
            return self.body(obj, "")
        out = dict(obj)
        url = obj.get("url")
        if url == CHAT_URL:
            out["url"] = RESPONSES_URL
        elif url != RESPONSES_URL:
            raise _Refused("url", f"must be {CHAT_URL!r} to be converted (got {url!r})")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _Refused("body", "must be a JSON object")
        out["body"] = self.body(body, "body")
        return out

    def body(self, body: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in body.items():
            here = _at(path, key)
            if key == "messages":
                self.put(out, "input", self.messages(value, here), here)
            elif key in ("max_tokens", "max_completion_tokens"):
                self.put(out, "max_output_tokens", value, here)
            elif key == "response_format":
                self.nested(out, "text", here)["format"] = self.response_format(value, here)
            elif key == "verbosity":
                self.nested(out, "text", here)["verbosity"] = value
            elif key == "reasoning_effort":
                self.nested(out, "reasoning", here)["effort"] = value
            elif key == "functions":
                tools = [{"type": "function", **self.obj(f, _at(here, i))} for i, f in enumerate(self.arr(value, here))]
                out["tools"] = [*out.get("tools", []), *tools]
            elif key == "tools":
                out["tools"] = [
                    *out.get("tools", []),
                    *(self.tool(t, _at(here, i)) for i, t in enumerate(self.arr(value, here))),
                ]
            elif key in ("tool_choice", "function_call"):
                self.put(out, "tool_choice", self.tool_choice(value, here), here)
            elif key == "logprobs":
                if value is True:
                    out["include"] = [*out.get("include", []), "message.output_text.logprobs"]
            elif key in UNSUPPORTED:
                if value is not None and not (key == "n" and value == 1):
                    self.unsupported(path, key)
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**value, **out[key]}  # e.g. a Responses `text` beside a converted response_format
            elif isinstance(value, list) and isinstance(out.get(key), list):
                out[key] = [*value, *out[key]]
            else:
                out[key] = value
        return out

    @staticmethod
    def put(out: dict[str, Any], key: str, value: Any, here: str) -> None:
        if key in out and out[key] != value:
            raise _Refused(here, f"conflicts with another field that also becomes {key!r}")
        out[key] = value

    @staticmethod
    def nested(out: dict[str, Any], key: str, here: str) -> dict[str, Any]:
        current = out.setdefault(key, {})
        if not isinstance(current, dict):
            raise _Refused(here, f"cannot be merged into {key!r}, which is not an object")
        return current

    @staticmethod
    def obj(value: Any, here: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Refused(here, "must be an object")
        return value

    @staticmethod
    def arr(value: Any, here: str) -> list[Any]:
        if not isinstance(value, list):
            raise _Refused(here, "must be an array")
        return value

    def response_format(self, value: Any, here: str) -> dict[str, Any]:
        fmt = self.obj(value, here)
        if fmt.get("type") != "json_schema":
            return dict(fmt)
        inner = self.obj(fmt.get("json_schema"), _at(here, "json_schema"))
        return {"type": "json_schema", **inner}

    def tool(self, value: Any, here: str) -> dict[str, Any]:
        tool = self.obj(value, here)
        if tool.get("type") != "function" or "function" not in tool:
            return dict(tool)
        return {"type": "function", **self.obj(tool["function"], _at(here, "function"))}

    def tool_choice(self, value: Any, here: str) -> Any:
        if not isinstance(value, dict):
            return value
        fn = value.get("function", value)  # tool_choice {type, function: {name}}; function_call {name}
        name = self.obj(fn, here).get("name")
        if not isinstance(name, str):
            raise _Refused(here, "must name a function")
        return {"type": "function", "name": name}

    def messages(self, value: Any, here: str) -> list[Any]:
        items: list[Any] = []
        for i, m in enumerate(self.arr(value, here)):
            mp = _at(here, i)
            msg = self.obj(m, mp)
            for key in msg:
                if key not in _MESSAGE_KEYS:
                    self.unsupported(mp, key)
            role = msg.get("role")
            content = msg.get("content")
            if role in ("system", "developer", "user"):
                items.append({"role": role, "content": self.content(content, "input", _at(mp, "content"))})
            elif role == "assistant":
                if content not in (None, "", []):
                    items.append({"role": "assistant", "content": self.content(content, "output", _at(mp, "content"))})
                for j, call in enumerate(self.arr(msg.get("tool_calls") or [], _at(mp, "tool_calls"))):
                    cp = _at(_at(mp, "tool_calls"), j)
                    fn = self.obj(self.obj(call, cp).get("function"), _at(cp, "function"))
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": call.get("id"),
                            "name": fn.get("name"),
                            "arguments": fn.get("arguments"),
                        }
                    )
            elif role == "tool":
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": msg.get("tool_call_id"),
                        "output": self.text_of(content, _at(mp, "content")),
                    }
                )
            else:
                raise _Refused(_at(mp, "role"), f"cannot convert role {role!r}")
        return items

    def content(self, value: Any, side: str, here: str) -> Any:
        if isinstance(value, str):
            return value
        parts: list[dict[str, Any]] = []
        for i, p in enumerate(self.arr(value, here)):
            pp = _at(here, i)
            part = self.obj(p, pp)
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": f"{side}_text", "text": part.get("text")})
            elif kind == "image_url" and side == "input":
                image = part.get("image_url")
                url, detail = (
                    (image.get("url"), image.get("detail", "auto")) if isinstance(image, dict) else (image, "auto")
                )
                parts.append({"type": "input_image", "image_url": url, "detail": detail})
            elif kind == "file" and side == "input":
                parts.append({"type": "input_file", **self.obj(part.get("file"), _at(pp, "file"))})
            elif kind == "refusal" and side == "output":
                parts.append({"type": "refusal", "refusal": part.get("refusal")})
            else:
                raise _Refused(_at(pp, "type"), f"cannot convert a part of type {kind!r} in an {side} message")
        return parts

    def text_of(self, value: Any, here: str) -> str:
        if isinstance(value, str):
            return value
        parts = self.content(value, "input", here)
        return "".join(p.get("text") or "" for p in parts)


def convert_file(path: Path, out: IO[bytes], *, shown: str, drop_unsupported: bool = False) -> ConvertCounts:
    """Write `path` converted to `out`, line for line; InputError (before the caller keeps anything) names
    every line that cannot be converted."""
    counts = ConvertCounts()
    conv = _Converter(drop_unsupported, counts)
    kept: list[LineProblem] = []
    bad = 0
    last = 0
    try:
        for line_no, raw in read_lines(path):
            out.write(b"\n" * (line_no - last - 1))  # blank lines stay, so line numbers do
            last = line_no
            try:
                converted = conv.line(orjson.loads(raw))
            except orjson.JSONDecodeError as e:
                problem = LineProblem(line_no, "", f"is not valid JSON: {e.msg} (column {e.colno})")
            except _Refused as r:
                problem = LineProblem(line_no, r.field, r.reason)
            else:
                if not bad:  # once a line is refused nothing is kept; only the problems matter
                    out.write(orjson.dumps(converted) + b"\n")
                counts.lines += 1
                continue
            bad += 1
            if len(kept) < MAX_PROBLEMS_KEPT:
                kept.append(problem)
    except Unreadable as e:
        raise InputError(shown, [e.problem()], bad_lines=0, consequence=NOTHING_WRITTEN) from None
    if bad:
        raise InputError(shown, kept, bad, consequence=NOTHING_WRITTEN)
    return counts
