"""The slow start's connections opened ahead: idle in the pool, no request sent, taken by the next requests."""

from __future__ import annotations

import asyncio

import pytest

from runner.client import ApiClient

pytestmark = pytest.mark.anyio
REPLY = b'{"id": "resp_1", "object": "response", "status": "completed", "output": []}'


class CountingServer:
    """An HTTP/1.1 server on 127.0.0.1 that counts connections and requests; each reply comes after 50 ms."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                await asyncio.sleep(0.05)  # the requests overlap: each needs a connection of its own
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(REPLY)}\r\n\r\n".encode()
                    + REPLY
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_warm_up_opens_idle_connections_that_the_next_requests_take() -> None:
    server = CountingServer()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = ApiClient(f"http://127.0.0.1:{port}/v1", "sk-test", max_connections=10)
    try:
        assert await client.warm_up(5) == 5
        await asyncio.sleep(0.05)  # the server has seen every connection it will see
        assert (server.connections, server.requests) == (5, 0)  # connections only: nothing counts as a request
        replies = await asyncio.gather(*(client.create(b'{"model": "m", "input": "x"}') for _ in range(5)))
        assert [r.status for r in replies] == [200] * 5
        assert (server.connections, server.requests) == (5, 5)  # all five went on the connections made ahead
    finally:
        await client.aclose()
        srv.close()
        await srv.wait_closed()


async def test_warm_up_to_nowhere_opens_nothing_and_raises_nothing() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()  # the port is free again: connections are refused
    client = ApiClient(f"http://127.0.0.1:{port}/v1", "sk-test", max_connections=10)
    try:
        assert await client.warm_up(3) == 0
    finally:
        await client.aclose()
