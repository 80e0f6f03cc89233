"""A raw HTTP/1.1 server on loopback for tests that must see requests byte for byte, or hold
answers back: each request's head and body recorded, the answer a coroutine's to give."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

Reply = Callable[[bytes, bytes], Awaitable[bytes | None]]


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    """A 200 answer with a JSON body (and any extra header lines)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class RawServer:
    """A loopback HTTP/1.1 server that records each request's head and body and answers
    with ``reply`` (``None``: close the connection without answering)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = await self.reply(head, body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()


async def serving(reply: Reply, work: Callable[[str, RawServer], Awaitable[Any]],
                  tls: ssl.SSLContext | None = None) -> Any:
    """Run ``work(base_url, server)`` against a :class:`RawServer` answering with ``reply``."""
    raw = RawServer(reply)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        return await work(f"{'https' if tls else 'http'}://127.0.0.1:{port}", raw)
    finally:
        server.close()
        await server.wait_closed()
