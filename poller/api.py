"""The local HTTP API for programs: queue order actions through the daemon (loopback only).

    POST /v1/actions      {"connection": "us-webull", "order_id": "…", "kind": "replace",
                           "qty": "5", "price": "101.5", "account_id": "", "wait": 30}
    GET  /v1/actions/ID   the action's state, outcome scene and message

Every request needs ``Authorization: Bearer <daemon.api_token>`` (compared in constant time).
With ``"wait"`` the answer comes once the outcome is known (or the wait is over). A trading
bot hands its replaces to poller this way, so the broker's limits (Webull: 1 replace per
second per app key) hold for both.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from poller.actionqueue import ActionRefused, submit
from poller.errors import StoreError
from poller.records import ActionRow
from poller.store import Store

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
MAX_WAIT = 120.0


def action_json(row: ActionRow) -> dict[str, Any]:
    """The JSON shape of an action."""
    return {"id": row.id, "connection": row.broker, "account_id": row.account_id,
            "order_id": row.order_id, "kind": row.kind, "qty": row.qty, "price": row.price,
            "state": row.state, "outcome": row.outcome, "message": row.message,
            "attempts": row.attempts, "created_at": row.created_at,
            "updated_at": row.updated_at}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("api: " + format, *args)


class ApiServer:
    """Serves the action API for the daemon's database on a loopback address."""

    def __init__(self, database: Path, token: str, host: str, port: int, *,
                 connections: Callable[[], set[str]], wake: Callable[[], None]) -> None:
        self.database = database
        self._token = token.encode()
        self._connections = connections
        self._wake = wake
        self._server: WSGIServer = make_server(host, port, self._wsgi,
                                               handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api",
                                        daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_port)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _answer(self, start: StartResponse, status: str, body: dict[str, Any]
                ) -> Iterable[bytes]:
        start(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def _wsgi(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, self._token):
            return self._answer(start, "401 Unauthorized", {"error": "missing or wrong token"})
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            if method == "POST" and path == "/v1/actions":
                return self._post(environ, start)
            if method == "GET" and path.startswith("/v1/actions/"):
                return self._get(path.rsplit("/", 1)[1], start)
        except StoreError as err:
            return self._answer(start, "503 Service Unavailable", {"error": str(err)})
        return self._answer(start, "404 Not Found", {"error": f"no route {method} {path}"})

    def _post(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(min(length, 65536)) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            connection, order_id = str(body["connection"]), str(body["order_id"])
            kind = str(body.get("kind", ""))
            wait = min(float(body.get("wait") or 0), MAX_WAIT)
        except (KeyError, ValueError, TypeError) as err:
            return self._answer(start, "400 Bad Request", {"error": f"bad request: {err}"})
        if connection not in self._connections():
            return self._answer(start, "404 Not Found",
                                {"error": f"no running connection {connection!r}"})

        def nap(seconds: float) -> None:
            time.sleep(seconds)  # this thread serves one request: waiting here blocks no one

        try:
            row = submit(self.database, connection, order_id, kind,
                         account_id=str(body.get("account_id") or ""),
                         qty=_text(body.get("qty")), price=_text(body.get("price")),
                         wait=False)
            self._wake()
            if wait:
                store = Store.open(self.database)
                try:
                    deadline = time.monotonic() + wait
                    while not row.done and time.monotonic() < deadline:
                        nap(0.1)
                        row = store.action(row.id) or row
                finally:
                    store.close()
        except ActionRefused as err:
            return self._answer(start, "400 Bad Request", {"error": str(err)})
        status = "200 OK" if row.done else "202 Accepted"
        return self._answer(start, status, action_json(row))

    def _get(self, ident: str, start: StartResponse) -> Iterable[bytes]:
        if not ident.isdigit():
            return self._answer(start, "404 Not Found", {"error": "no such action"})
        store = Store.open(self.database)
        try:
            row = store.action(int(ident))
        finally:
            store.close()
        if row is None:
            return self._answer(start, "404 Not Found", {"error": "no such action"})
        return self._answer(start, "200 OK", action_json(row))


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
