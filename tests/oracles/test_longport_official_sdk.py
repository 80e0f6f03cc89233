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


def _simulator(requests: Any, commands: Any, dc_region: str) -> None:
    """Run a LongPortSim until told to stop; report its config, then what it received."""
    from poller.simulator.longport import LongPortSim

    sim = LongPortSim(seed=11, dc_region=dc_region).start()  # type: ignore[arg-type]
    try:
        config = sim.broker_config("lp")
        order = sim.book.place(config["account_id"], "AAPL.US", "BUY", 10, "190.5")
        sim.book.accept(order.order_id)
        sim.book.fill(order.order_id, 4, "190.4")
        requests.put((config, order.order_id))
        commands.get(timeout=120)  # "report"
        requests.put([(r.method, r.path, r.query, r.body, dict(r.headers))
                      for r in sim.server.requests()])
        commands.get(timeout=120)  # "stop"
    finally:
        sim.stop()


@pytest.fixture(params=["ap", "us"])
def simulator(request: pytest.FixtureRequest) -> Any:
    """The simulator in a process of its own, as an AP or a US data-centre account."""
    context = multiprocessing.get_context("spawn")
    requests, commands = context.Queue(), context.Queue()
    process = context.Process(target=_simulator, args=(requests, commands, request.param),
                              daemon=True)
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


def _sdk_detail(sdk: TradeContext, order_id: str, region: str
                ) -> tuple[Decimal, Decimal, Any, list[Decimal]]:
    """(quantity, executed, status, executions) of an order as the SDK reads it for the
    region: the trade API's detail, or a US account's ``us_order_detail``."""
    if region == "us":
        order = sdk.us_order_detail(order_id).order
        assert order is not None and order.id == order_id and order.symbol == "AAPL.US"
        executions = [Decimal(h.qty) for h in order.order_histories if h.exec_id]
        return (Decimal(order.quantity), Decimal(order.executed_qty), order.status,
                executions)
    detail = sdk.order_detail(order_id)
    assert detail.order_id == order_id
    executions = [h.quantity for h in detail.history
                  if h.status in (OrderStatus.PartialFilled, OrderStatus.Filled)]
    return detail.quantity, detail.executed_quantity, detail.status, executions


def test_the_official_sdk_reads_and_acts_on_the_simulator(simulator: Any) -> None:
    config, order_id, requests, commands = simulator
    region = "us" if config["app_key"].startswith("us_") else "ap"
    sdk = TradeContext(Config.from_apikey(
        config["app_key"], config["app_secret"], config["access_token"],
        http_url=config["base_url"],
        # The trade push socket is not used by these calls; point it nowhere.
        trade_ws_url="ws://127.0.0.1:9", quote_ws_url="ws://127.0.0.1:9"))
    today = sdk.today_orders()
    assert [o.order_id for o in today] == [order_id]
    assert today[0].quantity == Decimal(10) and today[0].status == OrderStatus.PartialFilled
    time.sleep(SPACING)
    qty, executed, _, executions = _sdk_detail(sdk, order_id, region)
    assert (qty, executed, executions) == (Decimal(10), Decimal(4), [Decimal(4)])
    time.sleep(SPACING)
    sdk.replace_order(order_id, Decimal(8), price=Decimal("190.1"))
    time.sleep(NEXT_SECOND)
    qty, *_ = _sdk_detail(sdk, order_id, region)
    assert qty == Decimal(8)
    time.sleep(SPACING)
    sdk.cancel_order(order_id)
    time.sleep(NEXT_SECOND)
    _, _, status, _ = _sdk_detail(sdk, order_id, region)
    assert str(status) in {str(s) for s in (
        OrderStatus.Canceled, OrderStatus.PendingCancel, OrderStatus.WaitToCancel,
        OrderStatus.PartialWithdrawal)} | {"PartialWithdrawal", "CanceledStatus",
                                           "PendingCancelStatus", "WaitToCancel"}
    time.sleep(SPACING)
    # poller's own adapter, on the same account: the same detail, by the same route.
    ours = _poller_detail(config, order_id)
    assert (ours.order_id, ours.symbol, ours.qty, ours.filled_qty) == (
        order_id, "AAPL.US", Decimal(8), Decimal(4))
    assert [fill.qty for fill in ours.fills] == [Decimal(4)]

    commands.put("report")
    received = requests.get(timeout=60)
    detail_path = f"/v1/us/orders/{order_id}" if region == "us" else "/v1/trade/order"
    assert {(method, path) for method, path, *_ in received} >= {
        ("GET", "/v1/trade/order/today"), ("GET", detail_path),
        ("PUT", "/v1/trade/order"), ("DELETE", "/v1/trade/order")}
    # Every request, the SDK's and poller's, was routed to the account's data centre.
    assert {headers.get("x-dc-region") for *_, headers in received} == {region}
    # poller's signer, fed what the SDK sent, signs it exactly as the SDK did.
    for method, path, query, body, headers in received:
        ours_signed = sign(method, path, query, body, app_key=config["app_key"],
                           app_secret=config["app_secret"], token=config["access_token"],
                           timestamp=headers["x-timestamp"])
        assert ours_signed["X-Api-Signature"] == headers["x-api-signature"], (method, path)


def _poller_detail(config: dict[str, Any], order_id: str) -> Any:
    """poller's adapter, built from the simulator's config, reads the order detail."""
    import asyncio

    import httpx

    from poller.brokers.longport import LongPortAdapter, LongPortConfig
    from poller.ratelimit import LimitGroup, RateBudget

    settings = LongPortConfig.model_validate(config)

    async def read() -> Any:
        async with httpx.AsyncClient(base_url=settings.base_url) as client:
            budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"])])
            adapter = LongPortAdapter("lp", settings, client, budget)
            return await adapter.fetch_order(settings.account_id, order_id)

    return asyncio.run(read())
