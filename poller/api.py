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
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from poller.actionqueue import ActionRefused, submit
from poller.databaseurl import DatabaseUrl
from poller.errors import StoreError
from poller.loopserver import LoopbackServer, StartResponse, json_answer
from poller.records import ActionRow
from poller.statestore import open_store

logger = logging.getLogger(__name__)

MAX_WAIT = 120.0


def action_json(row: ActionRow) -> dict[str, Any]:
    """The JSON shape of an action."""
    return {"id": row.id, "connection": row.broker, "account_id": row.account_id,
            "order_id": row.order_id, "kind": row.kind, "qty": row.qty, "price": row.price,
            "state": row.state, "outcome": row.outcome, "message": row.message,
            "attempts": row.attempts, "created_at": row.created_at,
            "updated_at": row.updated_at}


#: The largest request body read, and the deepest JSON accepted (nested arrays/objects).
MAX_BODY = 64 * 1024
MAX_DEPTH = 8


class ApiServer:
    """Serves the action API for the daemon's database on a loopback address."""

    def __init__(self, database: Path | DatabaseUrl, token: str, host: str, port: int, *,
                 connections: Callable[[], set[str]], wake: Callable[[], None],
                 password: str | None = None) -> None:
        self.database = database
        self._password = password
        self._token = token.encode()
        self._connections = connections
        self._wake = wake
        self._server = LoopbackServer(self._wsgi, host, port, name="api")

    @property
    def port(self) -> int:
        """The port actually bound."""
        return self._server.port

    def start(self) -> None:
        """Start serving."""
        self._server.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def _authorized(self, environ: dict[str, Any]) -> bool:
        """``Authorization: Bearer <token>``, the scheme required, compared in constant time."""
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                   self._token)

    def _wsgi(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        if not self._authorized(environ):
            return json_answer(start, "401 Unauthorized",
                               {"error": "missing or wrong token (Authorization: Bearer …)"},
                               [("WWW-Authenticate", 'Bearer realm="poller"')])
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            if method == "POST" and path == "/v1/actions":
                return self._post(environ, start)
            if method == "GET" and path.startswith("/v1/actions/"):
                return self._get(path.rsplit("/", 1)[1], start)
        except StoreError as err:
            return json_answer(start, "503 Service Unavailable", {"error": str(err)})
        return json_answer(start, "404 Not Found", {"error": f"no route {method} {path}"})

    def _post(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        try:
            body = read_json(environ)
            connection, order_id = _field(body, "connection"), _field(body, "order_id")
            kind = str(body.get("kind", ""))
            wait = min(float(body.get("wait") or 0), MAX_WAIT)
            if not wait >= 0:
                raise ValueError("wait must be a number of seconds")
        except BadRequest as err:
            return json_answer(start, err.status, {"error": str(err)})
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            return json_answer(start, "400 Bad Request", {"error": f"bad request: {err}"})
        if connection not in self._connections():
            return json_answer(start, "404 Not Found",
                               {"error": f"no running connection {connection!r}"})

        def nap(seconds: float) -> None:
            time.sleep(seconds)  # this thread serves one request: waiting here blocks no one

        try:
            row = submit(self.database, connection, order_id, kind,
                         account_id=str(body.get("account_id") or ""),
                         qty=_text(body.get("qty")), price=_text(body.get("price")),
                         wait=False, password=self._password)
            self._wake()
            if wait:
                store = open_store(self.database, password=self._password)
                try:
                    deadline = time.monotonic() + wait
                    while not row.done and time.monotonic() < deadline:
                        nap(0.1)
                        row = store.action(row.id) or row
                finally:
                    store.close()
        except ActionRefused as err:
            return json_answer(start, "400 Bad Request", {"error": str(err)})
        status = "200 OK" if row.done else "202 Accepted"
        return json_answer(start, status, action_json(row))

    def _get(self, ident: str, start: StartResponse) -> Iterable[bytes]:
        # SQLite integers have 64 bits: a longer id is simply not an action of ours.
        if not ident.isdigit() or len(ident) > 18:
            return json_answer(start, "404 Not Found", {"error": "no such action"})
        store = open_store(self.database, password=self._password)
        try:
            row = store.action(int(ident))
        finally:
            store.close()
        if row is None:
            return json_answer(start, "404 Not Found", {"error": "no such action"})
        return json_answer(start, "200 OK", action_json(row))


class BadRequest(ValueError):
    """A request body that cannot be read, with the HTTP status that says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_json(environ: dict[str, Any]) -> dict[str, Any]:
    """The request body as a JSON object, within :data:`MAX_BODY` and :data:`MAX_DEPTH`.

    :raises BadRequest: not a number as Content-Length, too large, not JSON, too deeply
        nested (a 60 000-deep body must not reach the parser's recursion), not an object.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("400 Bad Request", "Content-Length is not a number") from None
    if length > MAX_BODY:
        raise BadRequest("413 Content Too Large", f"the body is over {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(max(length, 0)) if length > 0 else b""
    depth = deepest = 0
    for char in raw:
        if char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        raise BadRequest("400 Bad Request", f"the JSON is nested deeper than {MAX_DEPTH}")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as err:
        raise BadRequest("400 Bad Request", f"the body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadRequest("400 Bad Request", "the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"{name} must be a non-empty string")
    return str(value)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
