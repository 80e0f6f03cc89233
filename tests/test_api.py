"""The local order-action API: token required, actions run through the daemon."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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
    assert unauthorised == (401, {"error": "missing or wrong token"})
    assert unknown[0] == 404 and "no running connection 'nope'" in unknown[1]["error"]
    assert replaced[0] == 200
    assert (replaced[1]["state"], replaced[1]["outcome"]) == ("succeeded", "MODIFY_SUCCESS")
    assert invalid == (400, {"error": "replace needs a new quantity and/or price"})
    assert fetched == (200, replaced[1])
    assert str(sim.book.get(order.order_id).price) == "27.05"
