"""LongPort adapter: status table, signing, error answers, fills from history[], expiries,
and lifecycles against the simulator through the real daemon."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller.adapter import ListResult, ListScope
from poller.brokers.longport import (
    STATUS_TABLE,
    LongPortAdapter,
    LongPortConfig,
    expiry_passed,
    history_fills,
    merge_detail,
    parse_detail,
    parse_order,
    parse_us_detail,
    sign,
    us_counter_symbol,
)
from poller.diff import diff
from poller.errors import (
    BrokerAuthError,
    BrokerMalformed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
)
from poller.models import OrderSnapshot, OrderStatus
from poller.ratelimit import LimitGroup, RateBudget
from poller.simulator.longport import LongPortSim, expected_signature
from tests.conftest import Receiver, daemon_config, running_app

APP_KEY, APP_SECRET, TOKEN = "lp-key-123", "lp-secret-456", "lp-token-789"
NOW = datetime(2023, 4, 10, 12, 0, tzinfo=UTC)

# Seed 002 (order detail): its data object, with the Chinese names translated.
SEED_DETAIL: dict[str, Any] = json.loads("""{
  "order_id": "828940451093708800", "status": "FilledStatus", "stock_name": "Apple",
  "quantity": "10", "executed_quantity": "10", "price": "200.000", "executed_price": "164.660",
  "submitted_at": "1680863604", "side": "Buy", "symbol": "AAPL.US", "order_type": "LO",
  "last_done": "164.660", "trigger_price": "0.0000", "msg": "", "tag": "Normal",
  "time_in_force": "Day", "expire_date": "2023-04-10", "updated_at": "1681113000",
  "trigger_at": "0", "trailing_amount": "", "trailing_percent": "", "limit_offset": "",
  "trigger_status": "NOT_USED", "outside_rth": "ANY_TIME", "currency": "USD",
  "remark": "1680863603.927165", "free_status": "None", "free_amount": "",
  "free_currency": "", "deductions_status": "NONE", "deductions_amount": "",
  "deductions_currency": "", "platform_deducted_status": "NONE",
  "platform_deducted_amount": "", "platform_deducted_currency": "",
  "history": [
    {"price": "164.6600", "quantity": "10", "status": "FilledStatus",
     "msg": "Execution of 10", "time": "1681113000"},
    {"price": "200.0000", "quantity": "10", "status": "NewStatus", "msg": "",
     "time": "1681113000"}],
  "charge_detail": {"items": [{"code": "BROKER_FEES", "name": "Broker fees", "fees": []},
                              {"code": "THIRD_FEES", "name": "Third fees", "fees": []}],
                    "total_amount": "0", "currency": "USD"}
}""", parse_float=Decimal)

_DETAIL_ONLY = {"history", "charge_detail", "free_status", "free_amount", "free_currency",
                "deductions_status", "deductions_amount", "deductions_currency",
                "platform_deducted_status", "platform_deducted_amount",
                "platform_deducted_currency"}


def order(status: str = "NewStatus", **fields: Any) -> dict[str, Any]:
    """A today-list Order built from the seed, not yet filled unless told."""
    item = {k: v for k, v in SEED_DETAIL.items() if k not in _DETAIL_ONLY}
    item.update(status=status, executed_quantity="0", executed_price="0", last_done="")
    item.update(fields)
    return item


def parse(item: dict[str, Any], *, now: datetime = NOW, trusted: bool = True) -> OrderSnapshot:
    return parse_order(item, broker="lp", account_id="acc", now=now,
                       trust_time_in_force=trusted)


# -- status table ---------------------------------------------------------------------------

DOCUMENTED = [  # brokers.md 2.6: wire value, executed quantity, canonical status
    ("NotReported", "0", OrderStatus.PENDING),
    ("ReplacedNotReported", "0", OrderStatus.PENDING),
    ("ProtectedNotReported", "0", OrderStatus.PENDING),
    ("VarietiesNotReported", "0", OrderStatus.PENDING),
    ("DelayedNotReported", "0", OrderStatus.PENDING),  # time-conditional, monitored
    ("FilledStatus", "10", OrderStatus.FILLED),
    ("WaitToNew", "0", OrderStatus.PENDING),
    ("NewStatus", "0", OrderStatus.SUBMITTED),
    ("WaitToReplace", "0", OrderStatus.PENDING_REPLACE),
    ("PendingReplaceStatus", "0", OrderStatus.PENDING_REPLACE),
    ("ReplacedStatus", "0", OrderStatus.SUBMITTED),
    ("ReplacedStatus", "4", OrderStatus.PARTIAL_FILLED),
    ("PartialFilledStatus", "4", OrderStatus.PARTIAL_FILLED),
    ("WaitToCancel", "0", OrderStatus.PENDING_CANCEL),
    ("PendingCancelStatus", "4", OrderStatus.PENDING_CANCEL),
    ("RejectedStatus", "0", OrderStatus.FAILED),
    ("CanceledStatus", "0", OrderStatus.CANCELLED),
    ("ExpiredStatus", "0", OrderStatus.EXPIRED),
    ("PartialWithdrawal", "3", OrderStatus.CANCELLED),
]


@pytest.mark.parametrize(("raw", "executed", "canonical"), DOCUMENTED)
def test_status_table(raw: str, executed: str, canonical: OrderStatus) -> None:
    snap = parse(order(raw, executed_quantity=executed, executed_price="199.5"))
    assert snap.status is canonical and not snap.unknown_status
    assert snap.broker_status == raw and snap.filled_qty == Decimal(executed)
    # The seed order is a Day order and the detail's time_in_force is trusted: final.
    assert not snap.provisional


def test_every_documented_status_is_in_the_table() -> None:
    documented = {raw for raw, _, _ in DOCUMENTED}
    # 17 in brokers.md, and DelayedNotReported from the official SDK (longbridge 5.3: the
    # serde names of its OrderStatus are exactly these 18).
    assert len(documented) == 18 and documented == set(STATUS_TABLE)


def test_undocumented_status_is_flagged_not_guessed() -> None:
    snap = parse(order("MysteryStatus"))
    assert snap.unknown_status and snap.broker_status == "MysteryStatus"
    previous = parse(order("NewStatus"))
    result = diff(previous, snap, detected_at=NOW)
    assert result.events == [] and result.snapshot is not None
    assert result.snapshot.status is OrderStatus.SUBMITTED and result.warnings


def test_partial_withdrawal_is_a_cancel_with_fills() -> None:
    previous = parse(order("PartialFilledStatus", executed_quantity="3",
                           executed_price="200.000"))
    snap = parse(order("PartialWithdrawal", executed_quantity="3", executed_price="200.000"))
    assert snap.status is OrderStatus.CANCELLED and snap.final and snap.filled_qty == 3
    events = diff(previous, snap, detected_at=NOW).events
    assert [e.scene for e in events] == ["CANCEL_SUCCESS"]
    assert events[0].payload["filled_qty"] == "3"
    assert events[0].payload["broker_status"] == "PartialWithdrawal"


def test_seed_detail_parses_exactly() -> None:
    snap = parse_detail(SEED_DETAIL, broker="lp", account_id="acc", now=NOW)
    assert snap.order_id == "828940451093708800" and snap.status is OrderStatus.FILLED
    assert (snap.symbol, snap.side, snap.order_type) == ("AAPL.US", "BUY", "LIMIT")
    assert snap.qty == Decimal(10) and snap.price == Decimal("200.000")
    assert snap.filled_qty == Decimal(10) and snap.avg_fill_price == Decimal("164.660")
    assert snap.time_in_force == "Day" and snap.client_order_id == "1680863603.927165"
    assert snap.placed_at == datetime.fromtimestamp(1680863604, UTC)
    assert snap.updated_at == datetime.fromtimestamp(1681113000, UTC)
    assert [(f.fill_id, f.qty, f.price) for f in snap.fills] == [
        ("h:1681113000:10", Decimal(10), Decimal("164.6600"))]
    assert isinstance(snap.qty, Decimal) and isinstance(snap.fills[0].price, Decimal)


# -- big ids and per-item isolation -------------------------------------------------------


def test_big_ids_stay_exact_strings() -> None:
    # A JSON integer id beyond 2**53 (as the submit docs show) read the way httpclient reads.
    item = json.loads('{"order_id": 701276261045858304123, "status": "NewStatus",'
                      '"quantity": "100", "executed_quantity": "0", "price": "320.200"}',
                      parse_float=Decimal)
    assert parse(item).order_id == "701276261045858304123"
    assert parse(order(order_id="701276261045858304")).order_id == "701276261045858304"
    with pytest.raises(TypeError):  # a fraction has been through float: never an id
        parse(json.loads('{"order_id": 7.012762610458583e17, "status": "NewStatus"}',
                         parse_float=Decimal))


def _adapter(handler: Any, *, clock: float = 1_700_000_000.0, **cfg: Any) -> LongPortAdapter:
    config = LongPortConfig.model_validate({
        "kind": "longport", "app_key": APP_KEY, "app_secret": APP_SECRET,
        "access_token": TOKEN, "account_id": "acc", **cfg})
    client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
    budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"], share=1.0)])
    return LongPortAdapter("lp", config, client, budget, clock=lambda: clock)


def _orders_answer(*items: Any) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "message": "success",
                                     "data": {"orders": list(items)}})


def test_one_bad_order_does_not_hide_the_others() -> None:
    good = order("NewStatus", order_id="701276261045858304")
    raw = json.dumps({"code": 0, "message": "success", "data": {"orders": [
        {"order_id": 5.5, "status": "NewStatus"}, good, "junk",
        order("NewStatus", order_id="2", quantity="many"),
        order("NewStatus", order_id=701276261045858305999)]}})
    adapter = _adapter(lambda r: httpx.Response(200, text=raw))
    result = asyncio.run(adapter.list_orders(ListScope("acc")))
    assert [o.order_id for o in result.orders] == ["701276261045858304",
                                                   "701276261045858305999"]
    assert len(result.problems) == 3 and "order #0" in result.problems[0]


# -- signing ----------------------------------------------------------------------------------


def _by_hand(canonical: str, secret: str) -> str:
    string_to_sign = "HMAC-SHA256|" + hashlib.sha1(canonical.encode()).hexdigest()
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


GET_CANONICAL = ("GET|/v1/trade/order|order_id=701276261045858304|"
                 "authorization:lp-token-789\nx-api-key:lp-key-123\nx-timestamp:1539095200.123\n"
                 "|authorization;x-api-key;x-timestamp|")
POST_BODY = (b'{"symbol":"700.HK","order_type":"LO","submitted_price":"320.2",'
             b'"submitted_quantity":"100","side":"Buy","time_in_force":"Day"}')
POST_CANONICAL = ("POST|/v1/trade/order||"
                  "authorization:lp-token-789\nx-api-key:lp-key-123\nx-timestamp:1700000000\n"
                  "|authorization;x-api-key;x-timestamp|"
                  + hashlib.sha1(POST_BODY).hexdigest())
VECTORS = [  # method, path, query, body, timestamp, hand-built canonical, pinned signature
    ("GET", "/v1/trade/order", "order_id=701276261045858304", b"", "1539095200.123",
     GET_CANONICAL, "f80827ddb8c16d694092e34ffde1441d5a9f63aa07ca35b71ac8988b82bb0cba"),
    ("POST", "/v1/trade/order", "", POST_BODY, "1700000000",
     POST_CANONICAL, "665e55830264594483233dc5f3529714a5aa3ed1155145e852e5ecbd1517eb91"),
]


@pytest.mark.parametrize(("method", "path", "query", "body", "ts", "canonical", "pinned"),
                         VECTORS, ids=["get-with-query", "post-with-body"])
def test_signing_vectors(method: str, path: str, query: str, body: bytes, ts: str,
                         canonical: str, pinned: str) -> None:
    expected = _by_hand(canonical, APP_SECRET)
    assert expected == pinned
    headers = sign(method, path, query, body, app_key=APP_KEY, app_secret=APP_SECRET,
                   token=TOKEN, timestamp=ts)
    assert headers == {
        "X-Api-Key": APP_KEY, "Authorization": TOKEN, "X-Timestamp": ts,
        "X-Api-Signature": "HMAC-SHA256 SignedHeaders=authorization;x-api-key;x-timestamp, "
                           f"Signature={expected}",
    }
    # The simulator's independent implementation agrees.
    assert expected_signature(method, path, query, body, app_key=APP_KEY,
                              app_secret=APP_SECRET, token=TOKEN, timestamp=ts) == expected


def test_adapter_signs_exactly_what_it_sends() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"code": 0, "message": "success",
                                             "data": order(order_id="701276261045858304")})
        return httpx.Response(200, json={"code": 0, "message": "success", "data": {}})

    adapter = _adapter(handler, clock=1539095200.123)

    async def calls() -> None:
        known = await adapter.fetch_order("acc", "701276261045858304")
        assert known is not None
        await adapter.replace_order(known, qty=Decimal("200"), price=Decimal("320.4"))

    asyncio.run(calls())
    get, put = seen
    # GET with a query and no body: exactly the hand-computed vector.
    assert get.url.raw_path == b"/v1/trade/order?order_id=701276261045858304"
    assert {k: get.headers[k] for k in ("x-api-key", "authorization", "x-timestamp",
                                        "x-api-signature")} == {
        "x-api-key": APP_KEY, "authorization": TOKEN, "x-timestamp": "1539095200.123",
        "x-api-signature": "HMAC-SHA256 SignedHeaders=authorization;x-api-key;x-timestamp, "
                           f"Signature={_by_hand(GET_CANONICAL, APP_SECRET)}"}
    # PUT with a JSON body: the signature covers the exact bytes sent.
    assert json.loads(put.content) == {"order_id": "701276261045858304", "quantity": "200",
                                       "price": "320.4"}
    canonical = ("PUT|/v1/trade/order||authorization:lp-token-789\nx-api-key:lp-key-123\n"
                 "x-timestamp:1539095200.123\n|authorization;x-api-key;x-timestamp|"
                 + hashlib.sha1(put.content).hexdigest())
    assert put.headers["x-api-signature"].endswith(
        "Signature=" + _by_hand(canonical, APP_SECRET))
    assert put.headers["content-type"] == "application/json; charset=utf-8"


def test_oauth_sends_a_bearer_token_and_no_signature() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _orders_answer()

    adapter = _adapter(handler, auth="oauth", app_key=None, app_secret=None)
    asyncio.run(adapter.list_orders(ListScope("acc")))
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert "x-api-signature" not in seen[0].headers and "x-api-key" not in seen[0].headers


# -- errors -------------------------------------------------------------------------------------

ERROR_CASES = [
    (403, {"code": 403201, "message": "signature invalid"}, BrokerAuthError, "403201"),
    (403, {"code": 403202, "message": "duplicate request"}, BrokerAuthError, "duplicate"),
    (403, {"code": 403203, "message": "apikey illegal"}, BrokerAuthError, "apikey illegal"),
    (403, {"code": 403205, "message": "ip is not allowed"}, BrokerAuthError, "403205"),
    (401, {"code": 401003, "message": "token expired"}, BrokerAuthError, "token expired"),
    (200, {"code": 401003, "message": "token expired"}, BrokerAuthError, "401003"),
    (429, {"code": 429001, "message": "ip request ratelimit"}, BrokerRateLimited, "429001"),
    (429, {"code": 429002, "message": "api request is limited"}, BrokerRateLimited, "429002"),
    (200, {"code": 429002, "message": "api request is limited"}, BrokerRateLimited, "limited"),
    (429, "Too Many Requests", BrokerRateLimited, "Too Many Requests"),
    (500, {"code": 500000, "message": "internal error"}, BrokerUnavailable, "500000"),
    (200, {"code": 500000, "message": "internal error"}, BrokerUnavailable, "internal error"),
    (502, "<html><body>Bad gateway</body></html>", BrokerUnavailable, "HTML"),
    (200, "not json at all", BrokerMalformed, "not JSON"),
    (200, ["code", 0], BrokerMalformed, "envelope"),
    (200, {"message": "success", "data": {"orders": []}}, BrokerMalformed, "no integer code"),
    (200, {"code": 0, "message": "success", "data": {"orders": {}}}, BrokerMalformed,
     "orders list"),
    (200, {"code": 0, "message": "success"}, BrokerMalformed, "orders list"),
    (400, {"code": 400000, "message": "invalid parameter: side"}, BrokerRejected, "side"),
    (200, {"code": 602001, "msg": "old envelope spelling"}, BrokerRejected, "old envelope"),
]


@pytest.mark.parametrize(("status", "body", "error", "text"), ERROR_CASES)
def test_error_answers(status: int, body: Any, error: type[Exception], text: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    adapter = _adapter(handler)
    with pytest.raises(error) as caught:
        asyncio.run(adapter.list_orders(ListScope("acc")))
    message = str(caught.value)
    assert text in message
    assert all(secret not in message for secret in (APP_KEY, APP_SECRET, TOKEN))
    if error is BrokerRateLimited:
        # No Retry-After is documented: the trade group pauses past the 30 s window.
        assert adapter.budget.group("trade").paused_until - adapter.budget.now() > 30
        assert isinstance(caught.value, BrokerRateLimited) and caught.value.retry_after == 35


@pytest.mark.parametrize(("status", "body"), [
    (200, {"code": 602023, "message": "internal server error"}),
    (400, {"code": 602023, "message": "internal server error"}),
    (500, {"code": 602023, "message": "internal server error"}),
    (404, {"code": 404001, "message": "not found"}),
    (400, {"code": 603001, "message": "order not exist"}),
])
def test_unknown_order_is_none(status: int, body: dict[str, Any]) -> None:
    adapter = _adapter(lambda r: httpx.Response(status, json=body))
    assert asyncio.run(adapter.fetch_order("acc", "701276261045858304")) is None


def test_a_bare_404_page_is_not_an_unknown_order() -> None:
    adapter = _adapter(lambda r: httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(BrokerRejected, match="HTTP 404"):
        asyncio.run(adapter.fetch_order("acc", "701276261045858304"))


def test_detail_of_another_order_is_malformed() -> None:
    adapter = _adapter(lambda r: httpx.Response(200, json={
        "code": 0, "message": "success", "data": order(order_id="1")}))
    with pytest.raises(BrokerMalformed, match="asked for order 2"):
        asyncio.run(adapter.fetch_order("acc", "2"))


# -- expiry -----------------------------------------------------------------------------------


def _expired(tif: str, expire_date: str, **fields: Any) -> dict[str, Any]:
    return order("ExpiredStatus", time_in_force=tif, expire_date=expire_date, **fields)


@pytest.mark.parametrize(("tif", "expire_date", "trusted", "provisional"), [
    ("Day", "2023-04-10", True, False),  # a Day order's expiry is final
    ("GTC", "2023-07-09", True, True),  # GTC "Expired" between sessions: not final yet
    ("GTD", "2023-04-20", True, True),
    ("GTC", "2023-04-07", True, False),  # its expire_date has passed: confirmed
    ("Day", "2023-04-10", False, True),  # list answers swap Day/GTC (openapi#247)
    ("GTC", "2023-04-07", False, False),  # ...but a passed expire_date is a passed date
])
def test_expired_is_provisional_unless_confirmed(tif: str, expire_date: str, trusted: bool,
                                                 provisional: bool) -> None:
    snap = parse(_expired(tif, expire_date), trusted=trusted)
    assert snap.status is OrderStatus.EXPIRED and snap.provisional is provisional
    assert snap.final is not provisional


def test_provisional_expiry_is_silent_and_confirmation_announces() -> None:
    working = parse(order("NewStatus", time_in_force="GTC", expire_date="2023-07-09"))
    transient = parse(_expired("GTC", "2023-07-09"))
    assert diff(working, transient, detected_at=NOW).events == []
    back = parse(order("NewStatus", time_in_force="GTC", expire_date="2023-07-09"))
    assert diff(transient, back, detected_at=NOW).snapshot == back  # not terminal
    later = NOW.replace(month=7, day=11)
    confirmed = parse(_expired("GTC", "2023-07-09"), now=later)
    assert [e.scene for e in diff(transient, confirmed, detected_at=later).events] == [
        "EXPIRED"]


@pytest.mark.parametrize(("symbol", "moment", "passed"), [
    ("AAPL.US", "2026-05-21T04:30:00+00:00", False),  # 23:30 in New York (EST): same day
    ("AAPL.US", "2026-05-21T05:30:00+00:00", True),
    ("700.HK", "2026-05-20T15:30:00+00:00", False),  # 23:30 in Hong Kong
    ("700.HK", "2026-05-20T16:30:00+00:00", True),
    ("X.ZZ", "2026-05-21T11:30:00+00:00", False),  # unknown market: the last timezone
    ("X.ZZ", "2026-05-21T12:30:00+00:00", True),
])
def test_expiry_date_ends_with_the_markets_day(symbol: str, moment: str, passed: bool) -> None:
    assert expiry_passed("2026-05-20", symbol, datetime.fromisoformat(moment)) is passed


@pytest.mark.parametrize(("age_days", "provisional"), [(1, True), (5, False)])
def test_expired_without_expire_date_is_confirmed_after_a_grace(age_days: int,
                                                                provisional: bool) -> None:
    updated = str(int((NOW - timedelta(days=age_days)).timestamp()))
    snap = parse(_expired("GTC", "", updated_at=updated))
    assert snap.provisional is provisional


def test_detail_time_in_force_confirms_a_day_expiry_the_list_swapped() -> None:
    previous = parse(order("NewStatus", time_in_force="GTC"), trusted=False)
    listed = parse(_expired("GTC", "2023-04-10"), trusted=False)  # really a Day order
    assert listed.provisional
    detail = {**SEED_DETAIL, "status": "ExpiredStatus", "executed_quantity": "0",
              "history": [], "time_in_force": "Day"}
    adapter = _adapter(lambda r: httpx.Response(200, json={"code": 0, "message": "success",
                                                           "data": detail}))
    refined = asyncio.run(adapter.refine(previous, listed))
    assert refined.time_in_force == "Day" and not refined.provisional
    assert [e.scene for e in diff(previous, refined, detected_at=NOW).events] == ["EXPIRED"]


# -- fills from history[] ---------------------------------------------------------------------

TWO_EXECUTIONS = [  # newest first, as documented
    {"price": "190.0000", "quantity": "6", "status": "FilledStatus", "msg": "Execution of 6",
     "time": "1681113060"},
    {"price": "200.0000", "quantity": "10", "status": "ReplacedStatus", "msg": "",
     "time": "1681113030"},
    {"price": "190.5000", "quantity": "4", "status": "PartialFilledStatus",
     "msg": "Execution of 4", "time": "1681113000"},
    {"price": "200.0000", "quantity": "10", "status": "NewStatus", "msg": "",
     "time": "1681113000"},
]


def _detail_adapter(history: list[dict[str, str]], calls: list[httpx.Request],
                    **fields: Any) -> LongPortAdapter:
    detail = {**SEED_DETAIL, "executed_quantity": "10", "history": history, **fields}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"code": 0, "message": "success", "data": detail})

    return _adapter(handler)


def test_fills_missed_between_polls_come_back_from_history() -> None:
    calls: list[httpx.Request] = []
    adapter = _detail_adapter(TWO_EXECUTIONS, calls)
    previous = parse(order("NewStatus"), trusted=False)
    current = parse(order("FilledStatus", executed_quantity="10", executed_price="190.200"),
                    trusted=False)
    refined = asyncio.run(adapter.refine(previous, current))
    assert len(calls) == 1 and calls[0].url.params["order_id"] == "828940451093708800"
    assert [(f.fill_id, f.qty, f.price) for f in refined.fills] == [
        ("h:1681113000:4", Decimal(4), Decimal("190.5000")),
        ("h:1681113060:10", Decimal(6), Decimal("190.0000")),
    ]
    result = diff(previous, refined, detected_at=NOW)
    assert [e.scene for e in result.events] == ["FILLED", "FINAL_FILLED"]
    assert [(e.payload["filled_qty"], e.payload["last_fill_qty"],
             e.payload["last_fill_price"]) for e in result.events] == [
        ("4", "4", "190.5"), ("10", "6", "190")]
    assert result.snapshot is not None
    assert diff(result.snapshot, refined, detected_at=NOW).events == []  # replay: nothing


def test_fills_already_announced_are_not_repeated() -> None:
    calls: list[httpx.Request] = []
    adapter = _detail_adapter(TWO_EXECUTIONS, calls)
    # The 4 were announced from a list answer (no fill ids): only the 6 is new.
    previous = parse(order("PartialFilledStatus", executed_quantity="4",
                           executed_price="190.500"))
    current = parse(order("FilledStatus", executed_quantity="10", executed_price="190.200"))
    events = diff(previous, asyncio.run(adapter.refine(previous, current)),
                  detected_at=NOW).events
    assert [(e.scene, e.payload["last_fill_qty"]) for e in events] == [("FINAL_FILLED", "6")]


def test_detail_is_read_only_for_unaccounted_executions_or_an_expiry() -> None:
    calls: list[httpx.Request] = []
    adapter = _detail_adapter(TWO_EXECUTIONS, calls)
    working = parse(order("NewStatus"))
    for quiet in (order("PendingCancelStatus"), order("ReplacedStatus", price="199.000"),
                  order("CanceledStatus")):
        assert asyncio.run(adapter.refine(working, parse(quiet))) == parse(quiet)
    assert calls == []
    detail = asyncio.run(adapter.fetch_order("acc", "828940451093708800"))
    assert detail is not None and len(calls) == 1
    assert asyncio.run(adapter.refine(working, detail)) is detail  # a detail knows its fills
    asyncio.run(adapter.refine(working, parse(order("PartialWithdrawal",
                                                    executed_quantity="3"))))
    assert len(calls) == 2


def test_a_list_answer_carries_what_the_last_detail_said() -> None:
    """An unchanged order reads the same from the list as from its detail (no churn)."""
    listed = order("FilledStatus", executed_quantity="10", executed_price="190.200",
                   time_in_force="GTC")  # the list swapped Day for GTC
    detail = {**SEED_DETAIL, "executed_price": "190.200", "history": TWO_EXECUTIONS}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/today"):
            return _orders_answer(listed)
        return httpx.Response(200, json={"code": 0, "message": "success", "data": detail})

    adapter = _adapter(handler, clock=NOW.timestamp())

    async def calls() -> tuple[OrderSnapshot, OrderSnapshot | None, OrderSnapshot]:
        before = (await adapter.list_orders(ListScope("acc"))).orders[0]
        fetched = await adapter.fetch_order("acc", "828940451093708800")
        after = (await adapter.list_orders(ListScope("acc"))).orders[0]
        return before, fetched, after

    before, fetched, after = asyncio.run(calls())
    assert before.fills == () and before.time_in_force == "GTC"
    assert after == fetched and after.time_in_force == "Day" and len(after.fills) == 2


def test_detail_fills_never_run_ahead_of_the_list() -> None:
    detail = parse_detail({**SEED_DETAIL, "history": TWO_EXECUTIONS}, broker="lp",
                          account_id="acc", now=NOW)
    current = parse(order("PartialFilledStatus", executed_quantity="4"))
    merged = merge_detail(current, detail, now=NOW)
    assert [f.fill_id for f in merged.fills] == ["h:1681113000:4"]
    assert merged.status is OrderStatus.PARTIAL_FILLED and merged.filled_qty == 4


def test_history_running_totals_are_read_as_such() -> None:
    history = [
        {"price": "10", "quantity": "10", "status": "FilledStatus", "time": "1681113060"},
        {"price": "10", "quantity": "4", "status": "PartialFilledStatus", "time": "1681113000"},
    ]
    fills = history_fills(history, executed=Decimal(10))
    assert [(f.fill_id, f.qty) for f in fills] == [("h:1681113000:4", Decimal(4)),
                                                  ("h:1681113060:10", Decimal(6))]


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "problem"), [
    ({"app_secret": None}, "app_secret required"),
    ({"app_key": None, "app_secret": None}, "app_key and app_secret required"),
    ({"access_token": " "}, "access_token must not be empty"),
    ({"auth": "basic"}, "apikey"),
])
def test_config_validation(cfg: dict[str, Any], problem: str) -> None:
    base = {"kind": "longport", "app_key": APP_KEY, "app_secret": APP_SECRET,
            "access_token": TOKEN}
    with pytest.raises(ValueError, match=problem) as caught:
        LongPortConfig.model_validate({**base, **cfg})
    assert APP_SECRET not in str(caught.value) and TOKEN not in str(caught.value)


def test_oauth_needs_no_app_secret() -> None:
    config = LongPortConfig.model_validate({"kind": "longport", "access_token": TOKEN,
                                            "auth": "oauth"})
    assert config.base_url == "https://openapi.longportapp.com"
    assert LongPortAdapter.secrets(config) == [TOKEN]


@pytest.mark.parametrize(("url", "problem"), [
    ("https://openapi.longportapp.com", None),
    ("https://openapi.longport.cn", None),
    ("http://127.0.0.1:8080", None),
    ("http://openapi.longportapp.com", "must be https"),
    ("https://openapi-quote.longportapp.com", "not a LongPort REST host"),
])
def test_check(url: str, problem: str | None) -> None:
    config = LongPortConfig.model_validate({"kind": "longport", "base_url": url,
                                            "app_key": APP_KEY, "app_secret": APP_SECRET,
                                            "access_token": TOKEN})
    messages = [message for _, message in LongPortAdapter.check(config)]
    if problem is None:
        assert messages == []
    else:
        assert len(messages) == 1 and problem in messages[0]


# -- the simulator's gateway -----------------------------------------------------------------


def _call(sim: LongPortSim, method: str, path: str, query: str = "", body: bytes = b"", *,
          ts: str, secret: str | None = None) -> httpx.Response:
    headers = sign(method, path, query, body, app_key=sim.app_key,
                   app_secret=secret or sim.app_secret, token=sim.access_token, timestamp=ts)
    url = sim.url + path + ("?" + query if query else "")
    return httpx.request(method, url, headers=headers, content=body)


@pytest.fixture
def sim() -> Iterator[LongPortSim]:
    simulator = LongPortSim(seed=7)
    # Arrival times one second apart: these tests call back to back, faster than 20 ms.
    simulator.server.clock = itertools.count(1000.0, 1.0).__next__
    simulator.start()
    yield simulator
    simulator.stop()


def test_sim_accepts_int_and_float_timestamps_and_refuses_replays(sim: LongPortSim) -> None:
    placed = sim.book.place(sim.account_no, "700.HK", "BUY", 100, "320.2")
    query = f"order_id={placed.order_id}"
    for ts in ("1539095200.123", "1700000000"):
        answer = _call(sim, "GET", "/v1/trade/order", query, ts=ts)
        assert answer.status_code == 200 and answer.json()["data"]["order_id"] == placed.order_id
    replay = _call(sim, "GET", "/v1/trade/order", query, ts="1539095200.123")
    assert (replay.status_code, replay.json()["code"]) == (403, 403202)
    wrong = _call(sim, "GET", "/v1/trade/order", query, ts="1700000001", secret="nope")
    assert wrong.status_code == 403
    assert wrong.json() == {"code": 403201, "message": "signature invalid"}
    bad_key = httpx.get(sim.url + "/v1/trade/order/today", headers={"X-Api-Key": "other"})
    assert (bad_key.status_code, bad_key.json()["code"]) == (403, 403203)


def test_sim_order_actions(sim: LongPortSim) -> None:
    submitted = _call(sim, "POST", "/v1/trade/order", body=POST_BODY, ts="1700000000.5")
    order_id = submitted.json()["data"]["order_id"]
    assert isinstance(order_id, str) and len(order_id) == 18 and int(order_id) > 2**53
    sim.book.accept(order_id)
    replace_body = json.dumps({"order_id": order_id, "quantity": "200",
                               "price": "320.4"}).encode()
    assert _call(sim, "PUT", "/v1/trade/order", body=replace_body,
                 ts="1700000001").json()["code"] == 0
    placed = sim.book.get(order_id)
    assert (placed.qty, placed.price) == (Decimal(200), Decimal("320.4"))
    detail = _call(sim, "GET", "/v1/trade/order", f"order_id={order_id}", ts="1700000002")
    assert detail.json()["data"]["status"] == "ReplacedStatus"
    # Cancel with order_id in the JSON body (the docs) rather than the query (the SDK).
    cancel_body = json.dumps({"order_id": order_id}).encode()
    assert _call(sim, "DELETE", "/v1/trade/order", body=cancel_body,
                 ts="1700000003").json()["code"] == 0
    data = _call(sim, "GET", "/v1/trade/order", f"order_id={order_id}",
                 ts="1700000004").json()["data"]
    assert data["status"] == "CanceledStatus"
    assert [h["status"] for h in data["history"]][:2] == ["CanceledStatus",
                                                          "PendingCancelStatus"]
    unknown = _call(sim, "GET", "/v1/trade/order", "order_id=1", ts="1700000005")
    assert unknown.json()["code"] == 602023


def test_sim_enforces_the_trade_limit_on_arrival(sim: LongPortSim) -> None:
    now = [100.0]
    sim.server.clock = lambda: now[0]
    statuses = []
    for index, at in enumerate([100.0, 100.01, 100.05]):  # 10 ms after the first: too soon
        now[0] = at
        statuses.append(_call(sim, "GET", "/v1/trade/order/today", ts=f"{1700000000 + index}"))
    assert [a.status_code for a in statuses] == [200, 429, 200]
    assert statuses[1].json() == {"code": 429002, "message": "api request is limited"}
    codes = []
    for index in range(31):  # 31 calls within 15 s: the 31st is one too many
        now[0] = 200.0 + index * 0.5
        codes.append(_call(sim, "GET", "/v1/trade/order/today",
                           ts=f"{1700001000 + index}").status_code)
    assert codes == [200] * 30 + [429]
    assert sim.violations() == 2


def test_wrong_app_secret_is_an_auth_error(sim: LongPortSim) -> None:
    table = sim.broker_config("lp") | {"app_secret": "not-the-secret"}
    config = LongPortConfig.model_validate(table)
    budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"])])
    adapter = LongPortAdapter("lp", config, httpx.AsyncClient(base_url=config.base_url), budget)

    async def poll() -> None:
        try:
            await adapter.list_orders(ListScope(sim.account_no))
        finally:
            await adapter.aclose()

    with pytest.raises(BrokerAuthError, match="403201") as caught:
        asyncio.run(poll())
    assert "not-the-secret" not in str(caught.value)
    assert sim.refusals == {403201: 1}


def test_adapter_order_actions_against_the_simulator(sim: LongPortSim) -> None:
    placed = sim.book.place(sim.account_no, "AAPL.US", "BUY", 10, "190.5")
    sim.book.accept(placed.order_id)
    config = LongPortConfig.model_validate(sim.broker_config("lp"))
    budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"])])
    adapter = LongPortAdapter("lp", config, httpx.AsyncClient(base_url=config.base_url), budget)

    async def actions() -> None:
        try:
            known = await adapter.fetch_order(sim.account_no, placed.order_id)
            assert known is not None
            await adapter.replace_order(known, qty=Decimal(12), price=Decimal("190.25"))
            await adapter.cancel_order(known)
            with pytest.raises(BrokerRejected, match="602012"):
                await adapter.cancel_order(known)
        finally:
            await adapter.aclose()

    asyncio.run(actions())
    order_after = sim.book.get(placed.order_id)
    assert (order_after.qty, order_after.price, order_after.status) == (
        Decimal(12), Decimal("190.25"), "CANCELLED")
    withdraws = sim.server.requests("/v1/trade/order")[-2:]
    assert [(r.method, r.query, r.body) for r in withdraws] == [
        ("DELETE", f"order_id={placed.order_id}", b"")] * 2  # the id in the query, as the SDK
    assert sim.refusals == {}


def test_oauth_against_the_simulator() -> None:
    simulator = LongPortSim(auth="oauth")
    simulator.start()
    try:
        simulator.book.place(simulator.account_no, "AAPL.US", "SELL", 5, "190.5")
        config = LongPortConfig.model_validate(simulator.broker_config("lp"))
        budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"])])
        adapter = LongPortAdapter("lp", config, httpx.AsyncClient(base_url=config.base_url),
                                  budget)

        async def poll() -> ListResult:
            try:
                return await adapter.list_orders(ListScope(simulator.account_no))
            finally:
                await adapter.aclose()

        result = asyncio.run(poll())
        assert [o.side for o in result.orders] == ["SELL"] and not simulator.refusals
    finally:
        simulator.stop()


# -- lifecycles through the real daemon --------------------------------------------------------


def _config(tmp_path: Path, receiver: Receiver, sim: LongPortSim) -> dict[str, Any]:
    # The fastest list interval the trade budget allows (30 per 30 s, all of it: the
    # simulator is the only other party); a faster one is refused by the config check.
    table = sim.broker_config("lp") | {"interval": 1.05, "share": 1.0}
    return daemon_config(tmp_path, {"lp": table}, receiver.url, announce_existing=True)


async def _until(receiver: Receiver, count: int) -> None:
    await asyncio.to_thread(receiver.wait_for, lambda events: len(events) >= count)


def test_lifecycle_against_simulator(tmp_path: Path, receiver: Receiver) -> None:
    """Every transition reaches the webhook exactly once, in order, fills from history[]."""
    sim = LongPortSim(seed=3)
    sim.start()
    try:
        account, book = sim.account_no, sim.book
        a = book.place(account, "AAPL.US", "BUY", 10, "190.5")
        b = book.place(account, "700.HK", "SELL", 400, "320.2")
        d = book.place(account, "AAPL.US", "BUY", 5, "189")

        async def scenario() -> str:
            async with running_app(_config(tmp_path, receiver, sim),
                                   extra_plugins=("poller.brokers.longport",)):
                await _until(receiver, 3)  # PLACED x3
                with book.lock:  # one poll sees all of a step
                    book.accept(a.order_id)
                    book.fill(a.order_id, 4, "190.5")
                    book.accept(b.order_id)
                    book.fill(b.order_id, 100, "320.2")
                    c = book.place(account, "TSLA.US", "BUY", 1, "250.3")
                    book.reject(c.order_id, "insufficient buying power")
                    book.accept(d.order_id)
                await _until(receiver, 6)
                with book.lock:
                    book.modify(a.order_id, price="190.0")
                    book.request_cancel(b.order_id)
                    book.cancel(b.order_id)
                    book.expire(d.order_id)
                await _until(receiver, 9)
                with book.lock:
                    book.fill(a.order_id, 3, "190.0")
                    book.fill(a.order_id, 3, "190.0")  # two executions between polls
                await _until(receiver, 11)
                return c.order_id

        c_id = asyncio.run(scenario())
        assert receiver.scenes(a.order_id) == ["PLACED", "FILLED", "MODIFY_SUCCESS", "FILLED",
                                               "FINAL_FILLED"]
        assert receiver.scenes(b.order_id) == ["PLACED", "FILLED", "CANCEL_SUCCESS"]
        assert receiver.scenes(c_id) == ["PLACE_FAILED"]
        assert receiver.scenes(d.order_id) == ["PLACED", "EXPIRED"]
        payloads = {(e["payload"]["order_id"], e["payload"]["scene_type"]): e["payload"]
                    for e in receiver.events}
        fills = [(e["payload"]["filled_qty"], e["payload"]["last_fill_qty"],
                  e["payload"]["last_fill_price"]) for e in receiver.events
                 if e["payload"]["order_id"] == a.order_id
                 and e["payload"]["scene_type"] == "FILLED"]
        assert fills == [("4", "4", "190.5"), ("7", "3", "190")]  # each execution, its price
        final = payloads[(a.order_id, "FINAL_FILLED")]
        assert (final["filled_qty"], final["last_fill_qty"], final["order_status"]) == (
            "10", "3", "FILLED")
        modified = payloads[(a.order_id, "MODIFY_SUCCESS")]
        assert modified["changes"] == {"price": {"old": "190.5", "new": "190"}}
        cancelled = payloads[(b.order_id, "CANCEL_SUCCESS")]
        assert (cancelled["filled_qty"], cancelled["broker_status"]) == ("100",
                                                                         "PartialWithdrawal")
        assert payloads[(d.order_id, "EXPIRED")]["broker_status"] == "ExpiredStatus"
        assert all(e["payload"]["broker_kind"] == "longport" for e in receiver.events)
        ids = [e["id"] for e in receiver.events]
        assert len(ids) == len(set(ids)) == 11
        # Inside the documented limit, every request signed right, ids exact.
        assert sim.violations() == 0 and sim.refusals == {}
        assert all(len(e["payload"]["order_id"]) == 18 for e in receiver.events)
    finally:
        sim.stop()


def test_gtc_expiry_between_sessions_is_not_final(tmp_path: Path, receiver: Receiver) -> None:
    """A GTC order that shows Expired and comes back loses no fill and no event is wrong;
    a Day order whose list answer says GTC (openapi#247) still expires."""
    sim = LongPortSim(seed=5, swap_time_in_force=True)
    sim.start()
    try:
        account, book = sim.account_no, sim.book
        g = book.place(account, "AAPL.US", "BUY", 10, "190.5", time_in_force="GTC")
        d = book.place(account, "700.HK", "BUY", 100, "320.2")
        book.accept(g.order_id)
        book.accept(d.order_id)

        async def scenario() -> OrderSnapshot:
            async with running_app(_config(tmp_path, receiver, sim),
                                   extra_plugins=("poller.brokers.longport",)) as app:
                await _until(receiver, 2)  # PLACED x2
                with book.lock:
                    book.expire(g.order_id)
                    book.expire(d.order_id)
                await _until(receiver, 3)  # EXPIRED of the Day order
                seen = app.trackers["lp"].known[("lp", account, g.order_id)]
                sim.revive(g.order_id)
                book.fill(g.order_id, 10, "190.4")
                await _until(receiver, 4)
                return seen

        seen = asyncio.run(scenario())
        assert seen.status is OrderStatus.EXPIRED and seen.provisional
        assert seen.time_in_force == "GTC"  # from the detail; the list said Day
        assert receiver.scenes(d.order_id) == ["PLACED", "EXPIRED"]
        assert receiver.scenes(g.order_id) == ["PLACED", "FINAL_FILLED"]
        assert sim.violations() == 0 and sim.refusals == {}
    finally:
        sim.stop()


# -- US data centre (x-dc-region, GET /v1/us/orders/{id}) -------------------------------------


@pytest.mark.parametrize(("credentials", "setting", "region"), [
    ({}, "auto", "ap"),
    ({"app_key": "us_key"}, "auto", "us"),
    ({"access_token": "us_token"}, "auto", "us"),
    ({"access_token": "Bearer us_token", "auth": "oauth"}, "auto", "us"),
    ({"app_key": "ap_key"}, "auto", "ap"),
    ({"app_key": "us_key"}, "ap", "ap"),  # an explicit setting wins
    ({}, "us", "us"),
])
def test_the_data_centre_follows_the_credentials_as_the_sdk_does(
        credentials: dict[str, str], setting: str, region: str) -> None:
    config = LongPortConfig.model_validate({
        "app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": TOKEN,
        "dc_region": setting, **credentials})
    assert config.region == region


def _us_adapter(sim: LongPortSim, **overrides: Any) -> LongPortAdapter:
    config = LongPortConfig.model_validate(sim.broker_config("lp") | overrides)
    budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"])])
    return LongPortAdapter("lp", config, httpx.AsyncClient(base_url=config.base_url), budget)


def test_a_us_account_reads_details_at_the_us_endpoint() -> None:
    sim = LongPortSim(seed=9, dc_region="us").start()
    try:
        placed = sim.book.place(sim.account_no, "TSLA.US", "SELL", 10, "250.3")
        sim.book.accept(placed.order_id)
        sim.book.fill(placed.order_id, 3, "250.4")
        sim.book.fill(placed.order_id, 2, "250.5")
        adapter = _us_adapter(sim)

        async def read() -> tuple[Any, Any, Any]:
            try:
                listed = await adapter.list_orders(ListScope(sim.account_no))
                detail = await adapter.fetch_order(sim.account_no, placed.order_id)
                missing = await adapter.fetch_order(sim.account_no, "701276261045858303")
                return listed, detail, missing
            finally:
                await adapter.aclose()

        listed, detail, missing = asyncio.run(read())
        assert [o.filled_qty for o in listed.orders] == [Decimal(5)]
        assert detail is not None and missing is None
        assert (detail.symbol, detail.side, detail.qty, detail.filled_qty) == (
            "TSLA.US", "SELL", Decimal(10), Decimal(5))
        assert detail.status is OrderStatus.PARTIAL_FILLED
        assert [(f.qty, f.price) for f in detail.fills] == [
            (Decimal(3), Decimal("250.4")), (Decimal(2), Decimal("250.5"))]
        # Every request was routed to the US data centre; the detail by the US path.
        requests = sim.server.requests()
        assert {r.headers.get("x-dc-region") for r in requests} == {"us"}
        assert [r.path for r in requests if r.path != "/v1/trade/order/today"] == [
            f"/v1/us/orders/{placed.order_id}", "/v1/us/orders/701276261045858303"]
        assert sim.violations() == 0
    finally:
        sim.stop()


def test_a_us_account_routed_to_ap_is_one_clear_auth_error() -> None:
    sim = LongPortSim(seed=9, dc_region="us").start()
    try:
        adapter = _us_adapter(sim, dc_region="ap")

        async def poll() -> None:
            try:
                await adapter.list_orders(ListScope(sim.account_no))
            finally:
                await adapter.aclose()

        with pytest.raises(BrokerAuthError, match="x-dc-region"):
            asyncio.run(poll())
    finally:
        sim.stop()


def test_us_detail_shapes() -> None:
    now = datetime(2026, 1, 5, tzinfo=UTC)
    base = {"id": "9", "status": "FilledStatus", "quantity": "10", "executed_qty": "10",
            "executed_price": "1.5", "price": "1.5", "action": 2, "submitted_at": "1700000000",
            "done_at": "1700000100", "order_histories": [
                {"status": "FilledStatus", "qty": "10", "price": "1.5", "time": "1700000100",
                 "exec_id": "E1"}]}
    counter = parse_us_detail(base | {"counter_id": "ST/US/TSLA"}, broker="lp",
                              account_id="a", now=now)
    named = parse_us_detail(base | {"symbol": "AAPL.US", "counter_id": "ST/US/X"},
                            broker="lp", account_id="a", now=now)
    assert (counter.symbol, named.symbol) == ("TSLA.US", "AAPL.US")
    assert counter.side == "SELL" and counter.status is OrderStatus.FILLED
    assert counter.updated_at == datetime.fromtimestamp(1700000100, UTC)
    assert [f.qty for f in counter.fills] == [Decimal(10)]
    assert us_counter_symbol("IX/US/.DJI") == ".DJI.US" and us_counter_symbol("odd") == "odd"
    with pytest.raises(TypeError):
        parse_us_detail(base | {"order_histories": "x"}, broker="lp", account_id="a", now=now)
    with pytest.raises(TypeError):
        parse_us_detail(base | {"id": None}, broker="lp", account_id="a", now=now)
