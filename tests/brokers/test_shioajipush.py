"""Shioaji's order event stream: the callback dicts of shioaji 1.7.9 parsed, and the stream
read over real HTTP from the simulator (events, refusals, drops, skips, aclose, secrets)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import poller.brokers
from poller.adapter import ListScope
from poller.brokers.shioaji import STATUS_TABLE, ShioajiAdapter, ShioajiConfig, _quantity
from poller.brokers.shioajipush import (
    HEARTBEAT_INTERVAL,
    IDLE_TIMEOUT,
    ORDER_EVENT_PATH,
    RECONNECT_AFTER,
    RECONNECT_DELAY,
    ShioajiEventStream,
    TradeAccount,
    parse_event,
)
from poller.errors import BrokerAuthError, BrokerError, BrokerMalformed, BrokerUnavailable
from poller.models import OrderStatus
from poller.pushfeed import PushedOrder
from poller.ratelimit import LimitGroup, RateBudget
from poller.simulator.httpserver import SimResponse, SimServer
from poller.simulator.shioaji import ShioajiSim
from tests.brokers.consumer import Consumer
from tests.conftest import Receiver, daemon_config, running_app, until

T = TypeVar("T")
WAIT = 10.0
KEY = "sjKey0123456789"
SECRET = "sjSecret0123456789"
CANARY = "canarySecret0x5EED5EED"
ACCOUNT = "1234567"

#: An order callback with the keys of ``_core.pyi`` ``StockOrderEvent`` (values as in the
#: callback tutorial: placed 2, reduced by 1 → order_quantity 1, cancel_quantity 1).
ORDER_EVENT: dict[str, Any] = {
    "event_id": "ev-1",
    "operation": {"op_type": "New", "op_code": "00", "op_msg": ""},
    "order": {"id": "97b63e2f", "seqno": "267677", "ordno": "IM394",
              "account": {"account_type": "S", "person_id": "", "broker_id": "9A95",
                          "account_id": ACCOUNT, "signed": True, "username": ""},
              "action": "Buy", "price": 16.0, "quantity": 2, "order_type": "ROD",
              "price_type": "LMT", "order_cond": "Cash", "order_lot": "Common",
              "custom_field": "test"},
    "status": {"id": "97b63e2f", "exchange_ts": 1673576134.038, "modified_price": 0,
               "cancel_quantity": 0, "order_quantity": 2, "web_id": "137"},
    "contract": {"security_type": "STK", "exchange": "TSE", "code": "2890",
                 "symbol": "", "name": "", "currency": "TWD"},
}
#: A deal callback with the keys of ``_core.pyi`` ``StockDealEvent``.
DEAL_EVENT: dict[str, Any] = {
    "event_id": "ev-2", "trade_id": "97b63e2f", "seqno": "267677", "ordno": "IM394001",
    "exchange_seq": "669915", "broker_id": "9A95", "account_id": ACCOUNT, "action": "Buy",
    "code": "2890", "order_cond": "Cash", "order_lot": "Common", "price": 16.05,
    "quantity": 1, "web_id": "137", "custom_field": "test", "ts": 1673577256.354,
}


def frame(state: str, event: dict[str, Any], *, wrap: bool = True) -> str:
    return json.dumps({"state": state, "data": {state: event} if wrap else event})


def order_event(op_type: str, op_code: str = "00", op_msg: str = "",
                **status: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(json.dumps(ORDER_EVENT))
    event["operation"] = {"op_type": op_type, "op_code": op_code, "op_msg": op_msg}
    event["status"].update(status)
    return event


def parse(text: str) -> PushedOrder:
    return parse_event(text, status_table=STATUS_TABLE, quantity=_quantity)


# -- parsing the documented callbacks ------------------------------------------------------


@pytest.mark.parametrize(("op_type", "op_code", "status", "broker_status"), [
    ("New", "00", OrderStatus.SUBMITTED, "Submitted"),
    ("New", "88", OrderStatus.FAILED, "Failed"),
    ("Cancel", "00", OrderStatus.CANCELLED, "Cancelled"),
    ("Cancel", "88", None, ""),
    ("UpdatePrice", "00", None, ""),
    ("UpdateQty", "00", None, ""),
    ("UpdateQty", "88", None, ""),
    ("Reject", "00", OrderStatus.FAILED, "Failed"),
])
def test_operations_map_through_the_adapters_table(
        op_type: str, op_code: str, status: OrderStatus | None, broker_status: str) -> None:
    update = parse(frame("StockOrder", order_event(op_type, op_code)))
    assert update.status is status and update.broker_status == broker_status
    if broker_status:
        assert STATUS_TABLE[broker_status] is status  # the adapter's table, not a copy
    assert update.kind == (op_type if op_code == "00" else f"{op_type} failed")
    assert update.order_id == "97b63e2f" and update.account_id == ACCOUNT
    assert update.filled_qty is None and update.fill is None


def test_order_callback_fields() -> None:
    update = parse(frame("StockOrder", ORDER_EVENT))
    assert update.qty == Decimal("2") and isinstance(update.qty, Decimal)
    assert update.price == Decimal("16.0") and isinstance(update.price, Decimal)
    assert (update.symbol, update.side, update.client_order_id) == ("2890", "BUY", "test")
    assert update.event_time is not None and int(update.event_time.timestamp()) == 1673576134
    assert update.extra["event_id"] == "ev-1" and update.extra["ordno"] == "IM394"


def test_quantities_follow_the_issue_13_reading() -> None:
    # Reduced by 1: order_quantity is already net (1), not 2 - 1 - 1.
    reduced = parse(frame("StockOrder", order_event(
        "UpdateQty", order_quantity=1, cancel_quantity=1)))
    assert reduced.qty == 1 and reduced.extra["cancel_quantity"] == "1"
    # Cancelled: the order's quantity is the one placed, as the polls report it.
    cancelled = parse(frame("StockOrder", order_event(
        "Cancel", order_quantity=0, cancel_quantity=2)))
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.qty == 2


def test_modified_price_is_the_price() -> None:
    update = parse(frame("StockOrder", order_event("UpdatePrice", modified_price=15.5)))
    assert update.price == Decimal("15.5") and update.kind == "UpdatePrice"


def test_failed_operation_carries_its_message_escaped() -> None:
    update = parse(frame("StockOrder", order_event("Cancel", "88", "no such order\x1b[2J")))
    assert update.message == "no such order\\x1b[2J" and update.status is None
    assert update.extra["op_code"] == "88"


def test_deal_callback_is_one_fill_without_a_filled_total() -> None:
    update = parse(frame("StockDeal", DEAL_EVENT))
    assert update.order_id == "97b63e2f"  # trade_id = order.id, the polls' order_id
    assert update.fill is not None and update.fill.fill_id == "669915"
    assert update.fill.qty == Decimal("1") and update.fill.price == Decimal("16.05")
    assert isinstance(update.fill.price, Decimal)
    assert update.filled_qty is None and update.status is None
    assert update.kind == "StockDeal" and update.side == "BUY" and update.symbol == "2890"
    assert update.fill.time is not None and int(update.fill.time.timestamp()) == 1673577256


@pytest.mark.parametrize(("state", "wrap"), [
    ("SORDER", False), ("StockOrder", False), ("FuturesOrder", True), ("FORDER", True)])
def test_state_values_and_an_unwrapped_payload_are_read(state: str, wrap: bool) -> None:
    assert parse(frame(state, ORDER_EVENT, wrap=wrap)).status is OrderStatus.SUBMITTED


def test_futures_deal_is_read() -> None:
    deal = {**DEAL_EVENT, "subaccount": "", "security_type": "FUT", "full_code": "TXFA3",
            "delivery_month": "202301", "strike_price": 0, "option_right": "Future",
            "market_type": "Day", "combo": False}
    assert parse(frame("FDEAL", deal)).fill is not None


def test_single_account_default() -> None:
    event = json.loads(json.dumps(ORDER_EVENT))
    del event["order"]["account"]
    update = parse_event(frame("StockOrder", event), status_table=STATUS_TABLE,
                         quantity=_quantity, default_account="A1")
    assert update.account_id == "A1"


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"state": "StockOrder"}', '{"state": "Mystery", "data": {}}',
    frame("StockOrder", {"operation": {"op_type": "New"}}),
    frame("StockDeal", {**DEAL_EVENT, "trade_id": ""}),
    frame("StockDeal", {**DEAL_EVENT, "quantity": "many"}),
    frame("StockDeal", {**DEAL_EVENT, "quantity": 0}),
])
def test_unreadable_events_raise_for_the_stream_to_skip(text: str) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        parse(text)


def test_reconnect_policy_constants() -> None:
    assert RECONNECT_DELAY == 3.0 and HEARTBEAT_INTERVAL == 30.0
    assert IDLE_TIMEOUT == 3 * HEARTBEAT_INTERVAL
    # The official reader stops after each of these; the runner decides (auth: no retry).
    assert RECONNECT_AFTER == {"401": False, "non-200": False, "session_terminated": False}


# -- the stream over real HTTP -------------------------------------------------------------


#: Clients the adapters of one :func:`run` made; it closes them (``adapter_for``).
CLIENTS: list[httpx.AsyncClient] = []


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            async with asyncio.timeout(30):
                return await work()
        finally:
            while CLIENTS:
                await CLIENTS.pop().aclose()
    return asyncio.run(main())


@pytest.fixture
def sim() -> Iterator[ShioajiSim]:
    simulator = ShioajiSim(seed=7, api_key=KEY, secret_key=SECRET, push_events=True)
    simulator.start()
    yield simulator
    simulator.stop()


def adapter_for(sim_or_url: ShioajiSim | str, **cfg: Any) -> ShioajiAdapter:
    table: dict[str, Any] = (
        sim_or_url.broker_config("tw") if isinstance(sim_or_url, ShioajiSim)
        else {"kind": "shioaji", "base_url": sim_or_url,
              "accounts": [{"broker_id": "9A95", "account_id": ACCOUNT}]})
    config = ShioajiConfig.model_validate({**table, **cfg})
    budget = RateBudget([LimitGroup("orders", ShioajiAdapter.limits["orders"])])
    client = httpx.AsyncClient(base_url=config.base_url)
    CLIENTS.append(client)
    return ShioajiAdapter("tw", config, client, budget)


def test_book_changes_arrive_as_order_and_deal_events(sim: ShioajiSim) -> None:
    async def work() -> list[PushedOrder]:
        adapter = adapter_for(sim)
        consumer = Consumer(adapter.open_push())
        await consumer.up()
        order = sim.book.place(ACCOUNT, "2890", "BUY", 5, "27.1")
        sim.book.accept(order.order_id)
        sim.book.fill(order.order_id, 2, "27.05")
        sim.book.modify(order.order_id, price="27.2")
        sim.book.modify(order.order_id, qty=4)
        sim.book.cancel(order.order_id)
        got = [await consumer.next() for _ in range(5)]
        polled = (await adapter.list_orders(ListScope(ACCOUNT))).orders
        await consumer.stream.aclose()
        assert await consumer.finished() is None
        assert [o.order_id for o in polled] == [order.order_id]
        # Push and poll agree on the final order (issue 13: the same quantity rule).
        final = polled[0]
        assert (got[-1].status, got[-1].qty, got[-1].price) == (
            final.status, final.qty, final.price)
        return got

    new, deal, price, qty, cancel = run(work)
    assert (new.kind, new.status, new.qty, new.price) == (
        "New", OrderStatus.SUBMITTED, Decimal(5), Decimal("27.1"))
    assert deal.fill is not None and deal.fill.qty == 2 and deal.fill.price == Decimal("27.05")
    assert deal.fill.fill_id == "000001" and deal.filled_qty is None
    assert (price.kind, price.status, price.price) == ("UpdatePrice", None, Decimal("27.2"))
    assert (qty.kind, qty.qty, qty.extra["cancel_quantity"]) == ("UpdateQty", Decimal(4), "1")
    assert (cancel.kind, cancel.status) == ("Cancel", OrderStatus.CANCELLED)
    # Each connection subscribed the configured account for its reports.
    assert sim.trade_subscriptions == [
        {"account_type": "S", "broker_id": "9A95", "account_id": ACCOUNT}]
    streams = sim.server.requests(ORDER_EVENT_PATH)
    assert streams[0].headers["authorization"] == f"Bearer {KEY}:{SECRET}"
    assert streams[0].headers["accept"] == "text/event-stream"


def test_rejection_and_refused_cancel(sim: ShioajiSim) -> None:
    async def work() -> list[PushedOrder]:
        consumer = Consumer(adapter_for(sim).open_push())
        await consumer.up()
        first = sim.book.place(ACCOUNT, "2330", "SELL", 1, "1085")
        sim.book.reject(first.order_id, "insufficient shares")
        second = sim.book.place(ACCOUNT, "2330", "SELL", 1, "1085")
        sim.book.accept(second.order_id)
        sim.book.request_cancel(second.order_id)
        sim.book.refuse_cancel(second.order_id)
        got = [await consumer.next() for _ in range(3)]
        await consumer.stream.aclose()
        await consumer.finished()
        return got

    rejected, accepted, refused = run(work)
    assert (rejected.status, rejected.message, rejected.side) == (
        OrderStatus.FAILED, "insufficient shares", "SELL")
    assert accepted.status is OrderStatus.SUBMITTED
    assert (refused.kind, refused.status) == ("Cancel failed", None)


def test_wrong_token_is_one_auth_error_without_the_secret(
        sim: ShioajiSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def work() -> tuple[BrokerError | None, bool]:
        consumer = Consumer(adapter_for(sim, secret_key=CANARY).open_push())
        error = await consumer.finished()
        return error, consumer.connected.is_set()

    error, connected = run(work)
    assert isinstance(error, BrokerAuthError) and not connected
    assert str(error) == ("order event stream: HTTP 401: Unauthorized: invalid or missing "
                          "API key (credentials refused)")
    assert error.code == "401" and error.connection == "tw"
    assert CANARY not in str(error) and CANARY not in repr(error)
    assert CANARY not in caplog.text
    assert len(sim.server.requests(ORDER_EVENT_PATH)) == 1 and sim.trade_subscriptions == []


def test_refusal_text_is_scrubbed_of_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = SimServer("echo").start()
    server.route("GET", ORDER_EVENT_PATH, lambda r: SimResponse(
        401, {"code": 401, "message": f"bad token {r.headers['authorization']}"}))
    try:
        async def work() -> BrokerError | None:
            adapter = adapter_for(server.url, api_key=CANARY, secret_key=CANARY)
            return await Consumer(adapter.open_push()).finished()
        error = run(work)
    finally:
        server.stop()
    assert isinstance(error, BrokerAuthError)
    assert str(error) == ("order event stream: HTTP 401: bad token Bearer ***:*** "
                          "(credentials refused)")
    assert CANARY not in caplog.text


@pytest.mark.parametrize(("status", "code"), [(403, "403"), (500, "500"), (404, "404")])
def test_other_refusals_are_unavailable(status: int, code: str) -> None:
    server = SimServer("refuse").start()
    server.route("GET", ORDER_EVENT_PATH,
                 lambda r: SimResponse(status, {"code": status, "message": "nope"}))
    try:
        async def work() -> BrokerError | None:
            return await Consumer(adapter_for(server.url).open_push()).finished()
        error = run(work)
    finally:
        server.stop()
    assert isinstance(error, BrokerUnavailable) and error.code == code
    assert str(error) == f"order event stream: HTTP {status}: nope"


def test_failed_subscription_is_not_a_stream_that_is_up(sim: ShioajiSim) -> None:
    sim.server.route("POST", "/api/v1/auth/subscribe_trade", lambda r: SimResponse(
        500, {"code": 500, "message": "upstream error", "details": None}))

    async def work() -> tuple[BrokerError | None, bool]:
        consumer = Consumer(adapter_for(sim).open_push())
        return await consumer.finished(), consumer.connected.is_set()

    error, connected = run(work)
    assert isinstance(error, BrokerUnavailable) and not connected
    assert str(error) == f"subscribe_trade for account {ACCOUNT}: HTTP 500: upstream error"


def test_a_dropped_stream_is_unavailable_and_the_next_call_reconnects(sim: ShioajiSim) -> None:
    async def work() -> None:
        stream = adapter_for(sim).open_push()
        first = Consumer(stream)
        await first.up()
        sim.drop_streams()
        error = await first.finished()
        assert isinstance(error, BrokerUnavailable)
        assert str(error) == "order event stream failed (RemoteProtocolError)"
        second = Consumer(stream)  # the runner's reconnect: one call, one connection
        await second.up()
        order = sim.book.place(ACCOUNT, "0050", "BUY", 1, "195.3")
        sim.book.accept(order.order_id)
        assert (await second.next()).order_id == order.order_id
        await stream.aclose()
        assert await second.finished() is None

    run(work)
    assert len(sim.server.requests(ORDER_EVENT_PATH)) == 2


def test_the_server_ending_the_stream_is_unavailable(sim: ShioajiSim) -> None:
    async def work() -> BrokerError | None:
        consumer = Consumer(adapter_for(sim).open_push())
        await consumer.up()
        sim.end_streams()
        return await consumer.finished()

    error = run(work)
    assert isinstance(error, BrokerUnavailable) and error.code == "closed"


@pytest.mark.parametrize(("event", "data", "code"), [
    ("session_terminated", '{"reason": "logout"}', "session_terminated"),
    ("order_event", '{"type": "lagged", "dropped": 3}', "lagged"),
])
def test_control_events_end_the_stream(sim: ShioajiSim, event: str, data: str,
                                       code: str) -> None:
    async def work() -> BrokerError | None:
        consumer = Consumer(adapter_for(sim).open_push())
        await consumer.up()
        sim.push_event(event, data)
        return await consumer.finished()

    error = run(work)
    assert isinstance(error, BrokerUnavailable) and error.code == code


def test_unreadable_event_is_skipped_and_logged_once(
        sim: ShioajiSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="poller")

    async def work() -> tuple[PushedOrder, ShioajiEventStream]:
        stream = adapter_for(sim).open_push()
        consumer = Consumer(stream)
        await consumer.up()
        sim.push_frame(b"event: order_event\nid: 41\ndata: {not json\n\n")
        sim.push_event("heartbeat", {"type": "heartbeat", "timestamp": "t",
                                     "connection_id": "c"})
        sim.push_event("tick_stk", {"code": "2890"})  # another stream's event: ignored
        sim.push_frame(b"retry: 7000\n\n")
        sim.push_event("order_event", frame("StockOrder", ORDER_EVENT))
        update = await consumer.next()
        await stream.aclose()
        assert await consumer.finished() is None
        return update, stream

    update, stream = run(work)
    assert update.order_id == "97b63e2f"
    skipped = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING
    assert "(id 41)" in skipped[0].getMessage()
    assert stream.seen == {"unreadable": 1, "heartbeat": 1, "other": 1, "order": 1}
    assert stream.retry_delay == 7.0


def test_events_of_accounts_not_configured_are_left_out(sim: ShioajiSim) -> None:
    other = json.loads(json.dumps(ORDER_EVENT))
    other["order"]["account"]["account_id"] = "9999999"

    async def work() -> PushedOrder:
        consumer = Consumer(adapter_for(sim).open_push())
        await consumer.up()
        sim.push_event("order_event", frame("StockOrder", other))
        sim.push_event("order_event", frame("StockDeal", DEAL_EVENT))
        update = await consumer.next()
        await consumer.stream.aclose()
        await consumer.finished()
        return update

    assert run(work).fill is not None


def test_aclose_ends_a_waiting_stream(sim: ShioajiSim) -> None:
    async def work() -> BrokerError | None:
        consumer = Consumer(adapter_for(sim).open_push())
        await consumer.up()
        await consumer.stream.aclose()
        error = await consumer.finished()
        # Closed for good: a later call does not connect again.
        assert [u async for u in consumer.stream.updates()] == []
        return error

    assert run(work) is None
    assert len(sim.server.requests(ORDER_EVENT_PATH)) == 1


def test_silence_past_the_idle_limit_is_unavailable() -> None:
    simulator = ShioajiSim(seed=1, heartbeat=60.0)  # no heartbeat in time
    simulator.start()
    try:
        async def work() -> BrokerError | None:
            stream = adapter_for(simulator).open_push()
            stream.settings = replace(stream.settings, idle_timeout=0.2)
            return await Consumer(stream).finished()
        error = run(work)
    finally:
        simulator.stop()
    assert isinstance(error, BrokerUnavailable)
    assert str(error) == "order event stream: nothing, not even a heartbeat, for 0.2 s"


def test_nothing_listening_is_unavailable() -> None:
    server = SimServer("closed")
    url = server.url
    server.stop()  # the port is free again: nothing listens there

    async def work() -> BrokerError | None:
        return await Consumer(adapter_for(url).open_push()).finished()

    error = run(work)
    assert isinstance(error, BrokerUnavailable)
    assert str(error) == "order event stream failed (ConnectError)"


def test_an_answer_that_is_not_an_event_stream_is_malformed() -> None:
    server = SimServer("json").start()
    server.route("GET", ORDER_EVENT_PATH, lambda r: SimResponse(200, {"hello": "world"}))
    try:
        async def work() -> BrokerError | None:
            return await Consumer(adapter_for(server.url).open_push()).finished()
        error = run(work)
    finally:
        server.stop()
    assert isinstance(error, BrokerMalformed) and "text/event-stream" in str(error)


def test_the_daemon_hears_a_fill_from_the_stream_long_before_the_next_poll(
        sim: ShioajiSim, receiver: Receiver, tmp_path: Path) -> None:
    # Polls every 120 s: within the wait below only the stream can tell of the fill.
    table = sim.broker_config("tw") | {"interval": 120.0, "reconcile_interval": 120.0}
    assert "push" not in table  # the default: on where the broker pushes
    # The first list poll announces the order, so the test knows it is known before the fill.
    config = daemon_config(tmp_path, {"tw": table}, receiver.url, announce_existing=True)
    order = sim.book.place(ACCOUNT, "2890", "BUY", 3, "27.1")
    sim.book.accept(order.order_id)

    async def scenario() -> list[str]:
        async with running_app(config) as app:
            assert await asyncio.to_thread(sim.subscribed.wait, WAIT)
            assert app.trackers["tw"].push is not None
            await asyncio.to_thread(receiver.wait_for, lambda events: len(events) == 1, WAIT)
            sim.book.fill(order.order_id, 3)
            await asyncio.to_thread(receiver.wait_for, lambda events: any(
                e["payload"]["scene_type"] == "FINAL_FILLED" for e in events), WAIT)
            return receiver.scenes(order.order_id)

    assert run(scenario) == ["PLACED", "FINAL_FILLED"]
    assert len(sim.server.requests("/api/v1/order/update_status")) <= 3


# -- the adapter ------------------------------------------------------------------------------


def test_open_push_uses_the_adapters_client_table_and_credentials(sim: ShioajiSim) -> None:
    adapter = adapter_for(sim)
    stream = adapter.open_push()
    cfg = stream.settings
    assert stream.client is adapter.client
    assert cfg.status_table is STATUS_TABLE and cfg.quantity is _quantity
    assert cfg.url == ORDER_EVENT_PATH and cfg.accounts == (TradeAccount("9A95", ACCOUNT, "S"),)
    assert cfg.headers == {"Authorization": f"Bearer {KEY}:{SECRET}"}
    assert KEY not in repr(cfg) and SECRET not in repr(cfg)
    assert adapter_for(sim, push_url="http://127.0.0.1:1/x").open_push().settings.url == (
        "http://127.0.0.1:1/x")


LOCAL = {"kind": "shioaji", "base_url": "http://127.0.0.1:8080",
         "accounts": [{"broker_id": "9A95", "account_id": ACCOUNT}]}
REMOTE = {**LOCAL, "base_url": "https://sj.example.com", "api_key": KEY, "secret_key": SECRET}


@pytest.mark.parametrize(("table", "reason"), [
    (LOCAL, None),
    ({**LOCAL, "push_tls": False}, None),
    (REMOTE, None),
    ({**LOCAL, "push": False}, "push = false"),
    ({**REMOTE, "base_url": "http://10.0.0.5:8080"},
     "the order event stream at http://10.0.0.5 would not be encrypted: use an https:// "
     "base_url or push_url (plain http is for loopback only)"),
    ({**REMOTE, "push_tls": False},
     "push_tls = false is allowed for a loopback address only, not sj.example.com"),
    ({**REMOTE, "push_url": "https://push.example.com/api/v1/stream/data/order_event"}, None),
])
def test_push_available(table: dict[str, Any], reason: str | None) -> None:
    assert ShioajiAdapter.supports_push
    assert ShioajiAdapter.push_problem(ShioajiConfig.model_validate(table)) == reason


def test_push_available_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As without the extra: httpx_sse, and so the stream module, cannot be imported.
    monkeypatch.setitem(sys.modules, "httpx_sse", None)
    monkeypatch.delitem(sys.modules, "poller.brokers.shioajipush")
    monkeypatch.delattr(poller.brokers, "shioajipush")
    adapter = adapter_for("http://127.0.0.1:8080")
    assert adapter.push_available() == (
        "the push extra is missing (httpx_sse cannot be imported): pip install '.[push]'")


# -- a drop mid-order, end to end -------------------------------------------------------------


def test_a_drop_mid_order_through_the_daemon_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, receiver: Receiver) -> None:
    """A real App on the simulator's stream: placed, part-filled, the stream cut, a fill
    while it is down (no stream to carry it: polling announces it), the stream back on its
    own backoff, the final fill; every scene once, each event id once."""
    sim = ShioajiSim(seed=11, api_key=KEY, secret_key=SECRET, push_events=True)
    sim.start()
    try:
        # A long reconcile interval: while the stream is up, a change is heard within the
        # test only through the stream (a deal report makes poller confirm with a list poll);
        # while it is down, polling runs every second.
        table = sim.broker_config("tw") | {"interval": 1.0, "reconcile_interval": 120.0}
        config = daemon_config(tmp_path, {"tw": table}, receiver.url)

        def list_calls() -> int:
            return sum(1 for r in sim.server.requests() if sim.is_list_request(r))

        async def scenario() -> dict[str, Any]:
            async with running_app(config) as app:
                tracker = app.trackers["tw"]
                push = tracker.push
                assert push is not None
                await until(lambda: push.up and bool(tracker.known_accounts), timeout=WAIT)
                placed = sim.book.place(ACCOUNT, "2890", "BUY", 10, "27.1")
                sim.book.accept(placed.order_id)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1, WAIT)
                sim.book.fill(placed.order_id, 2)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 2, WAIT)
                before_drop = push.status.events
                sim.drop_streams()
                await until(lambda: push.status.drops == 1 and not push.up, timeout=WAIT)
                # Checked and filled in one step of the loop: the runner is waiting out its
                # reconnect delay (seconds) and cannot reconnect before this fill is made.
                down = (push.status.state, sim.stream_count(), push.next_delay)
                lists_at_fill = list_calls()
                sim.book.fill(placed.order_id, 3)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 3, WAIT)
                caught_up = (list_calls() - lists_at_fill, push.status.events - before_drop)
                await until(lambda: push.up and sim.stream_count() == 1, timeout=2 * WAIT)
                back = push.status.events
                sim.book.fill(placed.order_id)  # the rest
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 4, WAIT)
                return {"order": placed.order_id, "down": down, "caught_up": caught_up,
                        "drops": push.status.drops, "pushed_after": push.status.events - back}

        found = asyncio.run(scenario())
    finally:
        sim.stop()
    assert found["down"] == ("down", 0, RECONNECT_DELAY)  # no stream could carry the fill
    polled, streamed = found["caught_up"]
    assert polled >= 1 and streamed == 0  # announced by a list poll, nothing by the stream
    assert found["pushed_after"] == 1 and found["drops"] == 1  # the final deal, streamed
    scenes = receiver.scenes(found["order"])
    assert scenes == ["PLACED", "FILLED", "FILLED", "FINAL_FILLED"], scenes
    assert len(receiver.events) == 4  # nothing else: no repeat, no stray operator event
    ids = [e["id"] for e in receiver.events]
    assert len(set(ids)) == 4, ids
    filled = [str(e["payload"].get("filled_qty")) for e in receiver.events]
    assert filled == ["0", "2", "5", "10"], filled
    assert receiver.events[2]["payload"].get("via") is None  # a poll's, not the stream's
