"""The local order-action API: token required, actions run through the daemon."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poller.api import ApiServer
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app

TOKEN = "t0ken-for-the-local-api"


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None,
         token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_actions_through_the_api(tmp_path: Path, receiver: Receiver) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        order = sim.book.place(account, "2890", "BUY", 10, "27.1")
        sim.book.accept(order.order_id)
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True)

        async def scenario() -> list[tuple[int, dict[str, Any]]]:
            async with running_app(config) as app:
                loop = asyncio.get_running_loop()
                api = ApiServer(app.settings.daemon.database, TOKEN, "127.0.0.1", 0,
                                connections=lambda: set(app.trackers),
                                wake=lambda: loop.call_soon_threadsafe(app.wake_actions) and None)
                api.start()
                try:
                    await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                    port = api.port
                    results = [
                        await asyncio.to_thread(call, port, "POST", "/v1/actions", {
                            "connection": "tw", "order_id": order.order_id, "kind": "cancel"},
                            "wrong-token"),
                        await asyncio.to_thread(call, port, "POST", "/v1/actions", {
                            "connection": "nope", "order_id": "1", "kind": "cancel"}),
                        await asyncio.to_thread(call, port, "POST", "/v1/actions", {
                            "connection": "tw", "order_id": order.order_id, "kind": "replace",
                            "price": "27.05", "wait": 30}),
                        await asyncio.to_thread(call, port, "POST", "/v1/actions", {
                            "connection": "tw", "order_id": order.order_id, "kind": "replace"}),
                    ]
                    results.append(await asyncio.to_thread(
                        call, port, "GET", f"/v1/actions/{results[2][1]['id']}"))
                    return results
                finally:
                    api.stop()

        (unauthorised, unknown, replaced, invalid, fetched) = asyncio.run(scenario())
    finally:
        sim.stop()
    assert unauthorised == (401, {"error": "missing or wrong token (Authorization: Bearer …)"})
    assert unknown[0] == 404 and "no running connection 'nope'" in unknown[1]["error"]
    assert replaced[0] == 200
    assert (replaced[1]["state"], replaced[1]["outcome"]) == ("succeeded", "MODIFY_SUCCESS")
    assert invalid == (400, {"error": "replace needs a new quantity and/or price"})
    assert fetched == (200, replaced[1])
    assert str(sim.book.get(order.order_id).price) == "27.05"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    """An API server over a real database, with no daemon behind it (actions stay queued)."""
    server = ApiServer(tmp_path / "p.db", TOKEN, "127.0.0.1", 0, connections=lambda: {"tw"},
                       wake=lambda: None)
    server.start()
    yield server
    server.stop()


def raw(port: int, data: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``data`` as it is; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post(body: bytes, *, auth: str = f"Bearer {TOKEN}", length: str | None = None) -> bytes:
    return (f"POST /v1/actions HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n").encode() + body


ORDER = b'{"connection": "tw", "order_id": "1", "kind": "cancel"}'


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (post(ORDER, auth=TOKEN), 401, "missing or wrong token"),  # no scheme
    (post(ORDER, auth=f"Basic {TOKEN}"), 401, "missing or wrong token"),
    (post(ORDER, auth="Bearer"), 401, "missing or wrong token"),
    (post(b"[" * 60_000 + b"]" * 60_000), 413, "over 65536 bytes"),
    (post(b"[" * 2_000 + b"]" * 2_000), 400, "nested deeper than 8"),
    (post(b"x" * 70_000), 413, "over 65536 bytes"),
    (post(ORDER, length="ten"), 400, "Content-Length is not a number"),
    (post(b'{"connection": "tw", "order_id": "1"'), 400, "not JSON"),
    (post(b'["connection", "tw"]'), 400, "must be a JSON object"),
    (post(b'{"connection": "tw", "order_id": null, "kind": "cancel"}'), 400,
     "order_id must be a non-empty string"),
    (post(b'{"connection": "tw", "order_id": "1", "kind": "cancel", "wait": "nan"}'), 400,
     "wait must be a number"),
    (post(b'{"connection": "tw", "order_id": "1", "kind": "amend"}'), 400, "unknown action"),
    (b"GET /v1/actions/123456789012345678901234567890 HTTP/1.1\r\nHost: x\r\n"
     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n",
     404, "no such action"),
    (b"DELETE /v1/actions/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n", 404, "no route DELETE"),
])
def test_hostile_requests_get_a_clear_json_answer(api: ApiServer, request_bytes: bytes,
                                                  status: int, error: str) -> None:
    code, body = raw(api.port, request_bytes)
    assert (code, error in body["error"]) == (status, True), body


def test_half_open_connections_and_a_waiting_post_block_no_one(api: ApiServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(10)]
    try:
        waiting: list[tuple[int, dict[str, Any]]] = []
        poster = threading.Thread(target=lambda: waiting.append(call(
            api.port, "POST", "/v1/actions", {"connection": "tw", "order_id": "7",
                                              "kind": "cancel", "wait": 3})))
        poster.start()
        # While ten clients say nothing and one waits for an outcome, others are served.
        status, body = call(api.port, "GET", "/v1/actions/999")
        assert (status, body) == (404, {"error": "no such action"})
        poster.join(timeout=30)
        assert waiting and waiting[0][0] == 202 and waiting[0][1]["state"] == "queued"
    finally:
        for sock in idle:
            sock.close()
