"""A fake LongPort trade push server: the binary WebSocket protocol of the official SDK.

It speaks what ``rust/crates/wsclient`` (longbridge/openapi) speaks, framed here with its
own few lines of ``struct`` (independent of :mod:`poller.brokers.longportframes`, so the
two can check each other): requests ``[header=0x01][cmd][request id u32][timeout u16]
[len u24][body]``, responses ``[0x02][cmd][request id][status u8][len u24][body]``, pushes
``[0x03][cmd][len u24][body]``. The upgrade must carry ``version=1&codec=1&platform=9``.

* ``AuthRequest`` (command 2) with a one-time password the simulator's
  ``GET /v1/socket/token`` issued (``accept_token``; each works once) → ``AuthResponse``
  with a session id; anything else → status 3 with an ``Error{code: 401003}`` body (the
  real server's status and code for this are not documented: the simulator's choice).
* ``ReconnectRequest`` (3) with a session id it issued → a new session (the SDK's resume).
* ``Sub`` (16) after auth → ``SubResponse{success, current}``; before auth → status 3.
* :meth:`LongPortPushServer.push` sends a ``Notification{topic: "private",
  content_type: JSON, data: {"event": "order_changed_lb", "data": …}}`` (command 18) to
  every subscribed connection; :meth:`drop` closes every connection.
* Heartbeats are WebSocket pings every ``ping_interval`` seconds, as the SDK expects.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from poller.brokers.longportproto import control_pb2, error_pb2, subscribe_pb2

CMD_AUTH = 2
CMD_RECONNECT = 3
CMD_SUB = 16
CMD_UNSUB = 17
CMD_NOTIFY = 18
#: The status and code of a refused request (the simulator's choice; see the docstring).
STATUS_REFUSED = 3
CODE_UNAUTHORIZED = 401003
REQUIRED_QUERY = {"version": "1", "codec": "1", "platform": "9"}
SESSION_SECONDS = 86400.0


def pack_response(command: int, request_id: int, status: int, body: bytes) -> bytes:
    """A response packet (header type 2)."""
    return struct.pack(">BBIB", 0x02, command, request_id, status) + \
        len(body).to_bytes(3, "big") + body


def pack_push(command: int, body: bytes) -> bytes:
    """A push packet (header type 3)."""
    return struct.pack(">BB", 0x03, command) + len(body).to_bytes(3, "big") + body


def unpack_request(data: bytes) -> tuple[int, int, int, bytes]:
    """(command, request id, timeout ms, body) of a request packet (no verify/gzip bits:
    the SDK never sets them on requests).

    :raises ValueError: not a request packet.
    """
    if len(data) < 11 or data[0] != 0x01:
        raise ValueError("not a request packet")
    command, request_id, timeout = struct.unpack_from(">BIH", data, 1)
    length = int.from_bytes(data[8:11], "big")
    body = data[11:11 + length]
    if len(body) != length:
        raise ValueError("truncated request")
    return command, request_id, timeout, body


@dataclass(eq=False)  # by identity: peers live in a set
class _Peer:
    """One client connection and where it is in the protocol."""

    ws: ServerConnection
    session: str = ""
    topics: set[str] = field(default_factory=set)


class LongPortPushServer:
    """The trade push WebSocket on loopback, in a thread of its own.

    :param accept_token: takes a one-time password once; True when it was issued.
    """

    def __init__(self, *, accept_token: Callable[[str], bool], ping_interval: float | None = 20.0,
                 host: str = "127.0.0.1") -> None:
        self.accept_token = accept_token
        self.ping_interval = ping_interval
        self.host = host
        self.port = 0
        #: (command, request id, body) of every request received, in order.
        self.requests: list[tuple[int, int, bytes]] = []
        #: The upgrade request's path+query and headers, per connection.
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        self.refused_auth = 0
        self.pushed = 0
        #: Subscriptions accepted since the start.
        self.subscriptions = 0
        self._sessions: dict[str, float] = {}
        self._peers: set[_Peer] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[bytes] | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        """The trade WebSocket URL (``ws://``; the SDK's default path ``/v2``)."""
        return f"ws://{self.host}:{self.port}/v2"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LongPortPushServer:
        """Listen on a free port; returns once it does."""
        self._thread = threading.Thread(target=self._run, name="longport-push", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the LongPort push server did not start")
        return self

    def stop(self) -> None:
        """Close every connection and stop listening."""
        loop = self._loop
        if loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._queue = asyncio.Queue()
        self._server = loop.run_until_complete(self._open())
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        broadcaster = loop.create_task(self._broadcast())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            broadcaster.cancel()
            loop.run_until_complete(asyncio.gather(broadcaster, return_exceptions=True))
            loop.close()

    async def _open(self) -> Server:
        return await serve(self._handle, self.host, 0, compression=None,
                           ping_interval=self.ping_interval,
                           process_request=self._check_upgrade)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    # -- for tests and the simulator -------------------------------------------------------

    def push(self, event: str, data: dict[str, Any]) -> None:
        """Send ``{"event": event, "data": data}`` on topic ``private`` to every subscribed
        connection (thread-safe; sent in the order pushed)."""
        note = subscribe_pb2.Notification(
            topic="private", content_type=subscribe_pb2.CONTENT_JSON,
            dispatch_type=subscribe_pb2.DISPATCH_DIRECT,
            data=json.dumps({"event": event, "data": data}).encode())
        self.push_raw(pack_push(CMD_NOTIFY, note.SerializeToString()))

    def push_raw(self, packet: bytes) -> None:
        """Send any bytes as one binary message to every subscribed connection."""
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None:
            loop.call_soon_threadsafe(queue.put_nowait, packet)

    def drop(self) -> None:
        """Close every connection open now (code 1011), as a failing server would.

        It does not wait for the clients' answers (a client on the calling thread's loop
        could not give one)."""
        loop = self._loop
        with self._changed:
            peers = list(self._peers)
        if loop is not None:
            for peer in peers:
                asyncio.run_coroutine_threadsafe(
                    peer.ws.close(1011, "dropped by the simulator"), loop)

    def subscribed(self) -> int:
        """How many connections are subscribed to ``private`` now."""
        with self._changed:
            return sum(1 for peer in self._peers if "private" in peer.topics)

    def wait_subscriptions(self, total: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``total`` subscriptions were accepted since the start (a count that
        only grows, so a test can wait for the next one after a drop)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.subscriptions >= total, timeout)

    # -- the protocol -----------------------------------------------------------------------

    def _check_upgrade(self, connection: ServerConnection, request: Request
                       ) -> Response | None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()}
        self.handshakes.append((request.path, {k.lower(): v for k, v in
                                               request.headers.raw_items()}))
        if any(query.get(k) != v for k, v in REQUIRED_QUERY.items()):
            return Response(400, "Bad Request", Headers(), b"version, codec, platform needed")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _Peer(ws)
        with self._changed:
            self._peers.add(peer)
            self._changed.notify_all()
        try:
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(1003, "binary packets only")
                    return
                await self._answer(peer, message)
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                self._peers.discard(peer)
                self._changed.notify_all()

    async def _answer(self, peer: _Peer, message: bytes) -> None:
        try:
            command, request_id, _, body = unpack_request(message)
        except ValueError:
            await peer.ws.close(1002, "unreadable packet")
            return
        self.requests.append((command, request_id, body))
        ws = peer.ws
        if command == CMD_AUTH:
            auth = control_pb2.AuthRequest.FromString(body)
            if not self.accept_token(str(auth.token)):
                self.refused_auth += 1
                await ws.send(self._refusal(command, request_id, "token invalid"))
                return
            peer.session = self._new_session()
            await ws.send(pack_response(command, request_id, 0, self._session_answer(
                control_pb2.AuthResponse, peer.session)))
        elif command == CMD_RECONNECT:
            resume = control_pb2.ReconnectRequest.FromString(body)
            if self._sessions.get(str(resume.session_id), 0.0) < time.time():
                await ws.send(self._refusal(command, request_id, "session expired"))
                return
            peer.session = self._new_session()
            await ws.send(pack_response(command, request_id, 0, self._session_answer(
                control_pb2.ReconnectResponse, peer.session)))
        elif command in (CMD_SUB, CMD_UNSUB):
            if not peer.session:
                await ws.send(self._refusal(command, request_id, "not authenticated"))
                return
            topics = [str(t) for t in subscribe_pb2.Sub.FromString(body).topics]
            with self._changed:
                if command == CMD_SUB:
                    peer.topics.update(topics)
                    self.subscriptions += 1
                else:
                    peer.topics.difference_update(topics)
                self._changed.notify_all()
            current = sorted(peer.topics)
            answer = (subscribe_pb2.SubResponse(success=topics, current=current)
                      if command == CMD_SUB else subscribe_pb2.UnsubResponse(current=current))
            await ws.send(pack_response(command, request_id, 0, answer.SerializeToString()))
        else:
            await ws.send(self._refusal(command, request_id, f"unknown command {command}"))

    def _new_session(self) -> str:
        session = secrets.token_hex(16)
        self._sessions[session] = time.time() + SESSION_SECONDS
        return session

    def _session_answer(self, kind: Any, session: str) -> bytes:
        expires = int((time.time() + SESSION_SECONDS) * 1000)
        answer: bytes = kind(session_id=session, expires=expires, limit=10,
                             online=len(self._peers)).SerializeToString()
        return answer

    @staticmethod
    def _refusal(command: int, request_id: int, message: str) -> bytes:
        body = error_pb2.Error(code=CODE_UNAUTHORIZED, msg=message).SerializeToString()
        return pack_response(command, request_id, STATUS_REFUSED, body)

    async def _broadcast(self) -> None:
        assert self._queue is not None
        while True:
            packet = await self._queue.get()
            with self._changed:
                targets = [p for p in self._peers if "private" in p.topics]
            for peer in targets:
                try:
                    await peer.ws.send(packet)
                    self.pushed += 1
                except ConnectionClosed:
                    continue


__all__ = ["LongPortPushServer", "pack_push", "pack_response", "unpack_request"]
