"""The official LongPort/Longbridge SDK (``longbridge`` on PyPI, Rust inside) against our
simulator: it lists today's orders, reads a detail, replaces and cancels, and the simulator
verifies every signature it sent; poller's signer gives the same signature for the same
request.

The SDK holds the GIL while it waits for an answer, so the simulator runs in a process of
its own (in this process its server threads could never answer).
"""

from __future__ import annotations

import multiprocessing
import time
from decimal import Decimal
from typing import Any

import pytest
from longbridge.openapi import Config, OrderStatus, TradeContext

from poller.brokers.longport import sign

#: The SDK's trade calls share one budget, >= 20 ms apart (brokers.md 2.5); the simulator
#: enforces it, so the test keeps to it.
SPACING = 0.05
#: The SDK signs integer-second timestamps, and the same request with the same X-Timestamp
#: is refused as "403202 duplicate request" (brokers.md 2.2): a repeated identical call
#: waits for the next second, as any SDK user's would have to.
NEXT_SECOND = 1.05


def _simulator(requests: Any, commands: Any) -> None:
    """Run a LongPortSim until told to stop; report its config, then what it received."""
    from poller.simulator.longport import LongPortSim

    sim = LongPortSim(seed=11).start()
    try:
        config = sim.broker_config("lp")
        order = sim.book.place(config["account_id"], "AAPL.US", "BUY", 10, "190.5")
        sim.book.accept(order.order_id)
        requests.put((config, order.order_id))
        commands.get(timeout=120)  # "report"
        requests.put([(r.method, r.path, r.query, r.body, dict(r.headers))
                      for r in sim.server.requests()])
        commands.get(timeout=120)  # "stop"
    finally:
        sim.stop()


@pytest.fixture
def simulator() -> Any:
    context = multiprocessing.get_context("spawn")
    requests, commands = context.Queue(), context.Queue()
    process = context.Process(target=_simulator, args=(requests, commands), daemon=True)
    process.start()
    try:
        config, order_id = requests.get(timeout=60)
        yield config, order_id, requests, commands
    finally:
        commands.put("stop")
        commands.put("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def test_the_official_sdk_reads_and_acts_on_the_simulator(simulator: Any) -> None:
    config, order_id, requests, commands = simulator
    sdk = TradeContext(Config.from_apikey(
        config["app_key"], config["app_secret"], config["access_token"],
        http_url=config["base_url"],
        # The trade push socket is not used by these calls; point it nowhere.
        trade_ws_url="ws://127.0.0.1:9", quote_ws_url="ws://127.0.0.1:9"))
    today = sdk.today_orders()
    assert [o.order_id for o in today] == [order_id]
    assert today[0].quantity == Decimal(10) and today[0].status == OrderStatus.New
    time.sleep(SPACING)
    detail = sdk.order_detail(order_id)
    assert detail.order_id == order_id and detail.executed_quantity == Decimal(0)
    time.sleep(SPACING)
    sdk.replace_order(order_id, Decimal(8), price=Decimal("190.1"))
    time.sleep(NEXT_SECOND)
    replaced = sdk.order_detail(order_id)
    assert replaced.quantity == Decimal(8) and replaced.price == Decimal("190.1")
    time.sleep(SPACING)
    sdk.cancel_order(order_id)
    time.sleep(NEXT_SECOND)
    assert sdk.order_detail(order_id).status in (OrderStatus.Canceled,
                                                  OrderStatus.PendingCancel,
                                                  OrderStatus.WaitToCancel)

    commands.put("report")
    received = requests.get(timeout=60)
    assert {(method, path) for method, path, *_ in received} >= {
        ("GET", "/v1/trade/order/today"), ("GET", "/v1/trade/order"),
        ("PUT", "/v1/trade/order"), ("DELETE", "/v1/trade/order")}
    # poller's signer, fed what the SDK sent, signs it exactly as the SDK did.
    for method, path, query, body, headers in received:
        ours = sign(method, path, query, body, app_key=config["app_key"],
                    app_secret=config["app_secret"], token=config["access_token"],
                    timestamp=headers["x-timestamp"])
        assert ours["X-Api-Signature"] == headers["x-api-signature"], (method, path)
