"""Shioaji adapter: status table, parsing, error answers, and a lifecycle against the simulator."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller.adapter import ListScope
from poller.brokers.shioaji import STATUS_TABLE, ShioajiAdapter, ShioajiConfig, parse_trade
from poller.errors import (
    BrokerAuthError,
    BrokerMalformed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
)
from poller.models import OrderStatus
from poller.ratelimit import LimitGroup, RateBudget
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app

SEED_TRADE = json.loads(
    '{"contract":{"security_type":"STK","exchange":"TSE","code":"2890"},"order":{"id":"a647f23d",'
    '"action":"Buy","price":27.1,"quantity":2,"seqno":"214115","ordno":"Y27FI","order_type":"ROD",'
    '"price_type":"LMT","account":{"account_type":"S","person_id":"YOUR_PERSON_ID","broker_id":'
    '"YOUR_BROKER_ID","account_id":"YOUR_ACCOUNT_ID","signed":true,"username":""},"order_cond":'
    '"Cash","order_lot":"Common"},"status":{"id":"a647f23d","status":"Filled","status_code":"00",'
    '"order_datetime":"2026-05-20T11:24:30+08:00","web_id":"137","modified_time":'
    '"2026-05-20T11:24:30+08:00","order_quantity":2,"deal_quantity":2,"deals":[{"seq":"000001",'
    '"price":27.1,"quantity":2,"ts":1747714234.123456}]}}',
    parse_float=Decimal,
)


SEED_TRADE_JSON = json.loads(json.dumps(SEED_TRADE, default=str))


def trade(status: str = "Submitted", **state: Any) -> dict[str, Any]:
    t = json.loads(json.dumps(SEED_TRADE, default=str), parse_float=Decimal)
    t["status"].update({"status": status, "deal_quantity": 0, "deals": []}, **state)
    return t


@pytest.mark.parametrize(("raw", "canonical"), [
    ("PendingSubmit", OrderStatus.PENDING),
    ("PreSubmitted", OrderStatus.PENDING),
    ("Submitted", OrderStatus.SUBMITTED),
    ("PartFilled", OrderStatus.PARTIAL_FILLED),
    ("Filling", OrderStatus.PARTIAL_FILLED),
    ("Filled", OrderStatus.FILLED),
    ("Cancelled", OrderStatus.CANCELLED),
    ("Failed", OrderStatus.FAILED),
    ("Inactive", OrderStatus.FAILED),
])
def test_status_table(raw: str, canonical: OrderStatus) -> None:
    assert STATUS_TABLE[raw] is canonical
    snap = parse_trade(trade(raw), broker="tw", account_id="A")
    assert snap.status is canonical and not snap.unknown_status and snap.broker_status == raw


def test_every_documented_status_is_in_the_table() -> None:
    documented = {"Cancelled", "Filled", "PartFilled", "Inactive", "Failed", "PendingSubmit",
                  "PreSubmitted", "Submitted"}
    assert documented <= set(STATUS_TABLE)


def test_undocumented_status_is_flagged_not_guessed() -> None:
    snap = parse_trade(trade("Mystery"), broker="tw", account_id="A")
    assert snap.unknown_status and snap.broker_status == "Mystery"


def test_seed_example_parses_exactly() -> None:
    snap = parse_trade(SEED_TRADE, broker="tw", account_id="fallback")
    assert snap.order_id == "a647f23d" and snap.account_id == "YOUR_ACCOUNT_ID"
    assert snap.symbol == "2890" and snap.side == "BUY" and snap.order_type == "LIMIT"
    assert snap.qty == Decimal(2) and snap.price == Decimal("27.1")
    assert snap.filled_qty == Decimal(2) and snap.avg_fill_price == Decimal("27.1")
    assert [f.fill_id for f in snap.fills] == ["000001"]
    assert snap.placed_at is not None and snap.placed_at.utcoffset() is not None
    assert snap.placed_at.isoformat() == "2026-05-20T11:24:30+08:00"


@pytest.mark.parametrize(("state", "expected_qty", "expected_price"), [
    ({}, Decimal(2), Decimal("27.1")),
    ({"modified_price": Decimal("27.05")}, Decimal(2), Decimal("27.05")),
    # Shioaji's stock-order tutorial, an order of 2 reduced by 1 with update_qty:
    # order_quantity is already net of the reduction (brokers.md §4.3).
    ({"order_quantity": 1, "cancel_quantity": 1}, Decimal(1), Decimal("27.1")),
])
def test_modifications(state: dict[str, Any], expected_qty: Decimal,
                       expected_price: Decimal) -> None:
    snap = parse_trade(trade("Submitted", **state), broker="tw", account_id="A")
    assert (snap.qty, snap.price) == (expected_qty, expected_price)


def test_the_tutorial_cancel_keeps_the_quantity_placed() -> None:
    """The tutorial's cancel of the order of 2: order_quantity=0, cancel_quantity=2."""
    snap = parse_trade(trade("Cancelled", order_quantity=0, cancel_quantity=2),
                       broker="tw", account_id="A")
    assert snap.status is OrderStatus.CANCELLED and snap.qty == 2 and snap.filled_qty == 0


def test_cancelled_with_fills_keeps_the_quantity_placed() -> None:
    t = trade("Cancelled", order_quantity=2, cancel_quantity=3, deal_quantity=2,
              deals=[{"seq": "1", "price": Decimal("27"), "quantity": 2,
                      "ts": Decimal("1747714234.5")}])
    t["order"]["quantity"] = 5
    snap = parse_trade(t, broker="tw", account_id="A")
    assert snap.status is OrderStatus.CANCELLED and snap.qty == 5 and snap.filled_qty == 2


def test_a_reduced_order_can_be_reduced_again() -> None:
    """Before, the reduced order of 3 → 2 parsed as 1 and a reduction to 1 was refused as an
    increase."""
    t = trade("Submitted", order_quantity=2, cancel_quantity=1)
    t["order"]["quantity"] = 3
    snap = parse_trade(t, broker="tw", account_id="A")
    assert snap.qty == 2
    adapter = _adapter(lambda request: httpx.Response(500))
    assert adapter.check_action(snap, "replace", Decimal(1), None) is None
    assert "increase" in (adapter.check_action(snap, "replace", Decimal(3), None) or "")


@pytest.mark.parametrize("spelling", ["datetime", "ts"])
def test_both_timestamp_spellings(spelling: str) -> None:
    t = trade("Submitted")
    del t["status"]["order_datetime"], t["status"]["modified_time"]
    if spelling == "ts":
        t["status"].update(order_ts=Decimal("1747714230.5"), modified_ts=Decimal("1747714234"))
    else:
        t["status"].update(order_datetime="2025-05-20T12:10:30+08:00",
                           modified_time="2025-05-20T12:10:34+08:00")
    snap = parse_trade(t, broker="tw", account_id="A")
    assert snap.placed_at is not None and snap.updated_at is not None
    assert int(snap.updated_at.timestamp()) == 1747714234


def test_deal_quantity_ahead_of_deal_list() -> None:
    t = trade("PartFilled", deal_quantity=3,
              deals=[{"seq": "1", "price": Decimal("27"), "quantity": 1, "ts": 1747714234}])
    assert parse_trade(t, broker="tw", account_id="A").filled_qty == 3


def _adapter(handler: Any, **cfg: Any) -> ShioajiAdapter:
    config = ShioajiConfig.model_validate({
        "kind": "shioaji", "base_url": "http://127.0.0.1:9",
        "accounts": [{"broker_id": "9A95", "account_id": "1234567"}], **cfg})
    client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
    budget = RateBudget([LimitGroup("orders", ShioajiAdapter.limits["orders"])])
    return ShioajiAdapter("tw", config, client, budget)


ERROR_CASES = [
    (401, {"code": 401, "message": "Unauthorized", "details": None}, BrokerAuthError,
     "Unauthorized"),
    (429, {"code": 429, "message": "Too many requests", "details": None}, BrokerRateLimited,
     "Too many requests"),
    (500, {"code": 500, "message": "Internal error", "details": "boom"}, BrokerUnavailable,
     "boom"),
    (502, "<html><body>Bad gateway</body></html>", BrokerUnavailable, "HTML"),
    (404, {"code": 404, "message": "Account not found", "details": None}, BrokerRejected,
     "Account not found"),
    (400, {"code": 400, "message": "Invalid request body", "details": None}, BrokerRejected,
     "Invalid"),
    (200, "not json at all", BrokerMalformed, "not JSON"),
    (200, {"unexpected": "object"}, BrokerMalformed, "expected a list"),
]


@pytest.mark.parametrize(("status", "body", "error", "text"), ERROR_CASES)
def test_error_answers(status: int, body: Any, error: type[Exception], text: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    adapter = _adapter(handler)
    with pytest.raises(error) as caught:
        asyncio.run(adapter.list_orders(ListScope("1234567")))
    assert text in str(caught.value)
    if error is BrokerRateLimited:
        # The whole orders group pauses past the one-minute suspension.
        assert adapter.budget.group("orders").paused_until - adapter.budget.now() > 60


def test_request_shape_and_bearer_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    adapter = _adapter(handler, base_url="https://sj.example.com", api_key="KEY1234",
                       secret_key="SECRET99")
    asyncio.run(adapter.list_orders(ListScope("1234567")))
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/api/v1/order/update_status"
    assert json.loads(request.content) == {
        "account": {"broker_id": "9A95", "account_id": "1234567"}}
    assert request.headers["authorization"] == "Bearer KEY1234:SECRET99"


def test_flat_trades_endpoint() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[json.loads(json.dumps(SEED_TRADE, default=str))])

    adapter = _adapter(handler, endpoint="trades")
    result = asyncio.run(adapter.list_orders(ListScope("1234567")))
    assert seen[0].url.path == "/api/v1/order/trades"
    assert json.loads(seen[0].content) == {"account_type": "S", "broker_id": "9A95",
                                           "account_id": "1234567"}
    assert [o.order_id for o in result.orders] == ["a647f23d"]
    assert "authorization" not in seen[0].headers


def test_one_bad_trade_does_not_hide_the_others() -> None:
    good = json.loads(json.dumps(SEED_TRADE, default=str))
    adapter = _adapter(lambda r: httpx.Response(200, json=[{"order": 5}, good, "junk"]))
    result = asyncio.run(adapter.list_orders(ListScope("1234567")))
    assert [o.order_id for o in result.orders] == ["a647f23d"]
    assert len(result.problems) == 2


@pytest.mark.parametrize(("cfg", "problem"), [
    ({"base_url": "https://sj.example.com"}, "required when base_url is not on localhost"),
    ({"api_key": "K1234"}, "secret_key is required"),
    ({"accounts": []}, "at least 1"),
])
def test_config_validation(cfg: dict[str, Any], problem: str) -> None:
    base = {"kind": "shioaji", "accounts": [{"broker_id": "9A95", "account_id": "1"}]}
    with pytest.raises(ValueError, match=problem):
        ShioajiConfig.model_validate({**base, **cfg})


def test_lifecycle_against_simulator(tmp_path: Path, receiver: Receiver) -> None:
    """Every transition reaches the webhook exactly once, in order, with deals as fills."""
    sim = ShioajiSim(seed=3, timestamps="ts", api_key="k-12345", secret_key="s-67890")
    sim.start()
    try:
        account = sim.accounts()[0]
        table = sim.broker_config("tw") | {"interval": 0.2, "base_url": sim.url}
        config = daemon_config(tmp_path, {"tw": table}, receiver.url, announce_existing=True)

        async def scenario() -> tuple[str, str, str]:
            async with running_app(config):
                book = sim.book
                a = book.place(account, "2890", "BUY", 10, "27.1")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                book.accept(a.order_id)
                book.fill(a.order_id, 4, "27.1")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 2)
                book.modify(a.order_id, price="27.0")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 3)
                book.fill(a.order_id, 3, "27.0")
                book.fill(a.order_id, 3, "27.0")  # two deals between polls
                b = book.place(account, "2330", "SELL", 2, "1085")
                book.accept(b.order_id)
                book.cancel(b.order_id)
                c = book.place(account, "0050", "BUY", 1, "195")
                book.reject(c.order_id, "insufficient buying power")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 7)
                return a.order_id, b.order_id, c.order_id

        a_id, b_id, c_id = asyncio.run(scenario())
        assert receiver.scenes(a_id) == ["PLACED", "FILLED", "MODIFY_SUCCESS", "FILLED",
                                               "FINAL_FILLED"]
        assert receiver.scenes(b_id) == ["CANCEL_SUCCESS"]
        assert receiver.scenes(c_id) == ["PLACE_FAILED"]
        final = [e for e in receiver.events if e["payload"]["scene_type"] == "FINAL_FILLED"][0]
        assert final["payload"]["filled_qty"] == "10" and final["payload"]["last_fill_qty"] == "3"
        ids = [e["id"] for e in receiver.events]
        assert len(ids) == len(set(ids)) == 7
        assert all(r.headers.get("authorization") == "Bearer k-12345:s-67890"
                   for r in sim.server.requests("/api/v1/order/update_status"))
    finally:
        sim.stop()


def test_update_qty_sends_the_new_quantity() -> None:
    """shioaji 1.7.9's HTTP reference and CLI: "quantity: new quantity (decrease only)"."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=SEED_TRADE_JSON)

    t = trade("Submitted", order_quantity=10, cancel_quantity=0)
    t["order"]["quantity"] = 10
    known = parse_trade(t, broker="tw", account_id="A")
    adapter = _adapter(handler)

    async def go() -> None:
        try:
            await adapter.replace_order(known, qty=Decimal(6), price=None)
        finally:
            await adapter.aclose()

    asyncio.run(go())
    assert bodies == [{"trade_id": "a647f23d", "quantity": 6}]
