"""The small HTTP servers on loopback (health and metrics, the action API): threaded, with a
time limit per connection, and never a traceback or an HTML error page as an answer.

Each request gets its own thread, so a client that connects and sends nothing, or a POST
that waits for an action's outcome, never holds up another request; an idle connection is
dropped after ``timeout`` seconds; the handler threads never keep the daemon from stopping.
Any exception in the application becomes a JSON 500 (logged, with the traceback, for us).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Seconds a connection may stay idle (half-open, or slow to send its request) before it is
#: dropped.
CONNECTION_TIMEOUT = 10.0


def json_answer(start: StartResponse, status: str, body: dict[str, Any],
                headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    """Answer ``status`` with a JSON body."""
    start(status, [("Content-Type", "application/json"), *headers])
    return [json.dumps(body).encode()]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # Handler threads are daemons and not joined on close: an idle client must not keep
    # SIGTERM from finishing.
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or timed out is not our error, and not for stderr.
        logger.debug("http: connection from %s ended badly", client_address, exc_info=True)


class LoopbackServer:
    """Serves one WSGI application on ``host:port`` in background threads."""

    def __init__(self, app: WSGIApp, host: str, port: int, *, name: str,
                 timeout: float = CONNECTION_TIMEOUT) -> None:
        self.name = name
        self._app = app

        class Handler(WSGIRequestHandler):
            def setup(self) -> None:
                super().setup()
                self.connection.settimeout(timeout)  # a client that sends nothing goes

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug(f"{name}: " + format, *args)

        self._server = make_server(host, port, self._guarded, server_class=_ThreadingServer,
                                   handler_class=Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name,
                                        daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        """``host:port`` as bound."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def _guarded(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        try:
            return list(self._app(environ, start))
        except Exception:
            logger.exception("%s: request %s %s failed", self.name,
                             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            try:
                return json_answer(start, "500 Internal Server Error",
                                   {"error": "internal error (logged by the daemon)"})
            except AssertionError:  # headers were already sent: nothing more to say
                return []

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; connections still open are dropped with the process."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

