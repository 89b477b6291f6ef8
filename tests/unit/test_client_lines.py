"""ApiClient.lines: a Batch output file read line by line as its chunks arrive, whatever the chunks' cut."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from runner.client import ApiClient
from runner.errors import PermanentApiError

pytestmark = pytest.mark.anyio


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c


def client(chunks: list[bytes]) -> ApiClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Chunks(chunks)))
    return ApiClient("http://127.0.0.1:9/v1", "k", transport=transport)


async def read(chunks: list[bytes], max_line: int = 1 << 20) -> list[bytes]:
    async with client(chunks) as c:
        return [line async for line in c.lines("files/f/content", max_line=max_line)]


async def test_lines_across_any_cut_of_the_chunks() -> None:
    text = b'{"a": 1}\n\n{"b": 2}\nlast without newline'
    want = text.split(b"\n")
    for size in (1, 2, 3, 7, len(text)):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert await read([b"", *chunks, b""]) == want, size
    assert await read([b"one\n", b"two\n"]) == [b"one", b"two"]  # a final newline ends no extra line


async def test_a_long_line_in_many_chunks_is_read_whole_and_one_too_long_is_refused() -> None:
    line = b"x" * (4 << 20)
    chunks = [line[i : i + 4096] for i in range(0, len(line), 4096)]  # 1,024 chunks: linear, not 1,024 copies
    assert await read([*chunks, b"\nnext\n"], max_line=len(line)) == [line, b"next"]
    with pytest.raises(PermanentApiError) as e:
        await read([*chunks, b"y\n"], max_line=len(line))
    assert e.value.code == "reply_too_large"
