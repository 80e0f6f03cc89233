"""A small real HTTP server on loopback for the simulators, with a request log and windows.

Runs the standard library's threading HTTP server in a background thread, so the simulated
broker answers over real sockets whatever the daemon's event loop is doing, and measures
arrival times on its own clock the way a broker does.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from poller.simulator.peerpid import pid_of_peer

logger = logging.getLogger(__name__)


@dataclass
class SimRequest:
    """One request as the simulator saw it on arrival."""

    method: str
    path: str
    query: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    arrived: float
    host: str = ""
    #: The local process that sent it, when the server identifies peers (else None).
    peer_pid: int | None = None

    def json(self) -> Any:
        """The body parsed as JSON (``None`` when empty or not JSON)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def param(self, name: str) -> str | None:
        """The first query parameter called ``name``."""
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass
class SimResponse:
    """What the simulator answers: status, JSON (or raw) body and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    #: Fault injection: seconds to wait before answering, and between single body bytes.
    delay: float = 0.0
    trickle: float = 0.0
    #: A streaming answer (server-sent events): chunks written as they come, with chunked
    #: transfer encoding; ``body`` and ``raw`` are then unused. The iterator ending finishes
    #: the answer cleanly; raising :class:`DropConnection` cuts the connection mid-answer
    #: (no final chunk), as a network drop would.
    stream: Iterator[bytes] | None = None

    def encode(self) -> bytes:
        """The bytes to send."""
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, separators=(",", ":"), default=str).encode()


class DropConnection(Exception):
    """Raised by a :attr:`SimResponse.stream` iterator to cut its connection abruptly."""


Handler = Callable[[SimRequest], SimResponse]
Fault = Callable[[SimRequest], SimResponse | None]


class SlidingWindow:
    """Counts arrivals in a trailing window, the way a broker enforces "N per W seconds"."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.window = window
        self._arrivals: deque[float] = deque()
        self.violations = 0
        self.max_seen = 0

    def admit(self, now: float) -> bool:
        """Record an arrival; False when it is one too many for the window."""
        arrivals = self._arrivals
        while arrivals and arrivals[0] <= now - self.window:
            arrivals.popleft()
        arrivals.append(now)
        self.max_seen = max(self.max_seen, len(arrivals))
        if len(arrivals) > self.count:
            self.violations += 1
            return False
        return True


class SimServer:
    """An HTTP server on 127.0.0.1 with a route table and a log of every request."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.routes: dict[tuple[str, str], Handler] = {}
        #: (method, path prefix) → handler, for paths that carry an id (``/v1/us/orders/ID``).
        self.prefix_routes: dict[tuple[str, str], Handler] = {}
        self.log: list[SimRequest] = []
        self.lock = threading.RLock()
        self.fault: Fault | None = None
        self.clock: Callable[[], float] = time.monotonic
        #: Answer delay, uniform between the two bounds (seconds): a network and a broker
        #: that take their time (benchmarks). Arrivals are stamped before it.
        self.latency: tuple[float, float] | None = None
        #: Look up which local process sent each request (``SimRequest.peer_pid``): the
        #: cluster tests check at the broker that two instances never poll one key at once.
        self.identify_peers = False
        self._rng = random.Random(0)
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, each answer would wait
            # ~40 ms for a delayed ACK on loopback.
            disable_nagle_algorithm = True

            peer_pid: int | None = None
            peer_known = False

            def _serve(self) -> None:
                arrived = server.clock()
                if server.identify_peers and not self.peer_known:
                    # Once per TCP connection: keep-alive carries the later requests.
                    self.peer_pid = pid_of_peer(self.client_address[1], server.port)
                    self.peer_known = True
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = SimRequest(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    params=parse_qsl(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    arrived=arrived,
                    host=self.headers.get("Host", ""),
                    peer_pid=self.peer_pid,
                )
                response = server.dispatch(request)
                if response.stream is not None:
                    self._stream(response, response.stream)
                    return
                payload = response.encode()
                try:
                    if server.latency is not None:
                        time.sleep(server._rng.uniform(*server.latency))
                    if response.delay:
                        time.sleep(response.delay)  # a slow broker, for fault tests
                    self.send_response(response.status)
                    headers = {"Content-Type": "application/json", **response.headers}
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if response.trickle:
                        for index in range(len(payload)):
                            self.wfile.write(payload[index:index + 1])
                            self.wfile.flush()
                            time.sleep(response.trickle)
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, response: SimResponse, chunks: Iterator[bytes]) -> None:
                """Write a streaming answer chunk by chunk, flushed at once."""
                try:
                    self.send_response(response.status)
                    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                               **response.headers}
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    for chunk in chunks:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except DropConnection:
                    self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()  # a generator's cleanup runs now, not at garbage collection

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s: " + format, server.name, *args)

        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43117``."""
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` with ``handler``."""
        self.routes[(method.upper(), path)] = handler

    def route_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        """Answer ``method`` on every path under ``prefix`` (that no exact route takes)."""
        self.prefix_routes[(method.upper(), prefix)] = handler

    def dispatch(self, request: SimRequest) -> SimResponse:
        """Log the request and route it (a configured fault may answer instead)."""
        with self.lock:
            self.log.append(request)
            if self.fault is not None:
                forced = self.fault(request)
                if forced is not None:
                    return forced
            handler = self.routes.get((request.method, request.path))
            if handler is None:
                handler = next((h for (method, prefix), h in self.prefix_routes.items()
                                if method == request.method
                                and request.path.startswith(prefix)), None)
            if handler is None:
                return self.not_found(request)
            try:
                return handler(request)
            except Exception:
                logger.exception("%s: handler for %s %s failed", self.name, request.method,
                                 request.path)
                return SimResponse(500, {"error": "simulator handler failed"})

    def not_found(self, request: SimRequest) -> SimResponse:
        """The answer for an unknown path (simulators override the shape)."""
        return SimResponse(404, {"code": 404, "message": f"no route {request.path}"})

    def requests(self, path: str | None = None) -> list[SimRequest]:
        """A copy of the request log, optionally for one path."""
        with self.lock:
            return [r for r in self.log if path is None or r.path == path]

    def start(self) -> SimServer:
        """Start serving in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"sim-{self.name}", daemon=True,
            kwargs={"poll_interval": 0.05},
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (also when it was never started)."""
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
