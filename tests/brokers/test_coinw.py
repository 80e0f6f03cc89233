"""CoinW spot adapter: status table, signing, error answers, ids, and lifecycles against the
simulator through the real daemon."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.adapter import ListScope
from poller.brokers.coinw import (
    BEIJING,
    PRIVATE_PATH,
    STATUS_TABLE,
    CoinWAdapter,
    CoinWConfig,
    _moment,
    carry_over,
    order_number,
    parse_open_order,
    parse_order_detail,
    parse_order_status,
    sign,
    signed_query,
    signing_payload,
)
from poller.compose import build_budget, validate
from poller.diff import diff
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ConfigError,
)
from poller.httpclient import build_client
from poller.models import OrderSnapshot, OrderStatus
from poller.plugins import DEFAULT_PLUGINS, get_plugin_manager
from poller.settings import load_settings
from poller.simulator.coinw import FIRST_ORDER_NUMBER, CoinWSim, render_status
from tests.conftest import Receiver, daemon_config, running_app

KEY, SECRET = "KEY123", "SECRET456"
BIG = "4624544807079846405"  # the seed's order number: above 2**53, a float cannot hold it
SCOPE = ListScope("spot", symbol="BTC_USDT", open_only=True)
PLUGINS = ("poller.brokers.coinw",)
NOW = datetime(2025, 4, 3, 10, 40, tzinfo=UTC)

# Seed 004's response example, as the adapter's JSON parser reads it.
SEED_STATUS = {"status": 4, "currencyPair": "BTC_USDT", "date": "2025-04-03 18:39:58",
               "total": "0.0001", "type": "buy", "startingAmount": "8.20"}


def open_item(**fields: Any) -> dict[str, Any]:
    """One returnOpenOrders item (brokers.md 5.5); 18:39:58.123 Beijing time."""
    item: dict[str, Any] = {
        "orderNumber": int(BIG), "date": 1743676798123, "startingAmount": "33.5",
        "total": "0.0005", "type": "buy", "prize": "67000", "success_count": "0",
        "success_amount": "0", "status": 1,
    }
    item.update(fields)
    return item


def envelope(data: Any) -> dict[str, Any]:
    return {"code": "200", "data": data, "msg": "SUCCESS", "success": True, "failed": False}


def respond(status: int, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.Response(status, content=body)
    if isinstance(body, str):
        return httpx.Response(status, text=body)
    return httpx.Response(status, json=body)


def adapter_for(handler: Callable[[httpx.Request], httpx.Response]
                | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
                **cfg: Any) -> CoinWAdapter:
    config = CoinWConfig.model_validate({
        "kind": "coinw", "base_url": "https://api.coinw.test", "api_key": KEY,
        "secret_key": SECRET, "pairs": ["BTC_USDT"], **cfg})
    client = httpx.AsyncClient(base_url=config.base_url, transport=httpx.MockTransport(handler))
    return CoinWAdapter("cw", config, client, build_budget(CoinWAdapter, config))


class Router:
    """A MockTransport handler answering per ``command``, recording the commands called."""

    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        command = request.url.params["command"]
        self.calls.append(command)
        status, body = self.answers[command]
        return respond(status, body)


def run(adapter: CoinWAdapter, work: Callable[[CoinWAdapter], Any]) -> Any:
    async def go() -> Any:
        try:
            return await work(adapter)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


# -- status table -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "canonical"), [
    (1, OrderStatus.SUBMITTED), ("1", OrderStatus.SUBMITTED),
    (2, OrderStatus.PARTIAL_FILLED), ("2", OrderStatus.PARTIAL_FILLED),
    (3, OrderStatus.FILLED), ("3", OrderStatus.FILLED),
    (4, OrderStatus.CANCELLED), (" 4 ", OrderStatus.CANCELLED), (Decimal(4), OrderStatus.CANCELLED),
])
def test_status_table(raw: Any, canonical: OrderStatus) -> None:
    listed = parse_open_order(open_item(status=raw), broker="cw", account_id="spot",
                              pair="BTC_USDT")
    probed = parse_order_status(SEED_STATUS | {"status": raw}, broker="cw", account_id="spot",
                                order_id=BIG)
    for snap in (listed, probed):
        assert snap.status is canonical and not snap.unknown_status
        assert snap.broker_status == str(int(str(raw).strip()))


def test_only_documented_statuses_are_in_the_table() -> None:
    assert set(STATUS_TABLE) == {1, 2, 3, 4}


@pytest.mark.parametrize("raw", [5, 6, "5", "6", 99, 0, -1, "open", None, True, Decimal("2.5")])
def test_unverified_and_unknown_statuses_are_flagged_not_guessed(raw: Any) -> None:
    snap = parse_open_order(open_item(status=raw), broker="cw", account_id="spot",
                            pair="BTC_USDT")
    assert snap.unknown_status and snap.broker_status == str(raw)
    # The diff keeps the last known status instead.
    known = parse_open_order(open_item(status=2, success_count="0.0001",
                                       success_amount="6.7"),
                             broker="cw", account_id="spot", pair="BTC_USDT")
    result = diff(known, replace(snap, filled_qty=known.filled_qty), detected_at=NOW)
    assert result.events == [] and result.snapshot is not None
    assert result.snapshot.status is OrderStatus.PARTIAL_FILLED


# -- signing ------------------------------------------------------------------------------

# Worked out by hand from brokers.md §5.2: every parameter but sign/command, plus api_key,
# sorted by name, k=v joined with &, values not URL-encoded, then &secret_key=...
SIGNING_VECTORS = [
    ({"orderNumber": BIG},
     "api_key=KEY123&orderNumber=4624544807079846405&secret_key=SECRET456",
     "61730ADC602CEA6C296D35C83CF6882B"),
    ({"ids": "1,2", "currencyPair": "BTC_USDT", "command": "cancelAllOrder", "sign": "stale"},
     "api_key=KEY123&currencyPair=BTC_USDT&ids=1,2&secret_key=SECRET456",
     "4918E43A31792453A3622A426D7AB17B"),
    ({"symbol": "BTC_USDT", "type": "0", "amount": "0.01", "rate": "67000.5",
      "isMarket": "false", "out_trade_no": "a b"},
     "amount=0.01&api_key=KEY123&isMarket=false&out_trade_no=a b&rate=67000.5"
     "&symbol=BTC_USDT&type=0&secret_key=SECRET456",
     "F2AEB1C5FA1C63863C7F407E72B37C6F"),
]


@pytest.mark.parametrize(("params", "text", "expected"), SIGNING_VECTORS)
def test_signing_vectors(params: dict[str, str], text: str, expected: str) -> None:
    assert hashlib.md5(text.encode()).hexdigest().upper() == expected
    assert signing_payload(params, KEY, SECRET) == text
    assert sign(params, KEY, SECRET) == expected


def test_values_are_signed_without_url_encoding() -> None:
    encoded = "api_key=KEY123&currencyPair=BTC_USDT&ids=1%2C2&secret_key=SECRET456"
    assert hashlib.md5(encoded.encode()).hexdigest().upper() == "8082F20F23A57D09307B766000484874"
    assert sign({"currencyPair": "BTC_USDT", "ids": "1,2"}, KEY, SECRET) != (
        "8082F20F23A57D09307B766000484874")


def test_request_shape_matches_the_official_sample() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return respond(200, envelope([]))

    result = run(adapter_for(handler), lambda a: a.list_orders(SCOPE))
    assert result.orders == [] and result.problems == []
    request = seen[0]
    assert request.method == "POST" and request.url.path == PRIVATE_PATH
    assert request.content == b"" and request.headers["content-type"] == "application/json"
    expected_sign = hashlib.md5(
        b"api_key=KEY123&currencyPair=BTC_USDT&secret_key=SECRET456").hexdigest().upper()
    assert list(request.url.params.multi_items()) == [
        ("command", "returnOpenOrders"), ("currencyPair", "BTC_USDT"), ("api_key", KEY),
        ("sign", expected_sign)]
    assert SECRET not in str(request.url)


# -- error answers ------------------------------------------------------------------------

ERROR_CASES = [
    (200, {"code": 29001, "msg": "API access frequently"}, BrokerRateLimited,
     "API access frequently"),
    (429, {"code": "29001", "msg": "API access frequently"}, BrokerRateLimited,
     "rate limited (HTTP 429, code 29001)"),
    (200, {"code": 1003, "msg": "Authentication error"}, BrokerAuthError, "code 1003"),
    (200, {"code": 1003, "msg": f"api_key {KEY} is invalid"}, BrokerAuthError, "api_key ***"),
    (200, {"code": "6000", "msg": "Authentication error"}, BrokerAuthError, "code 6000"),
    (200, {"code": -103, "msg": "Invalid parameter"}, BrokerRejected, "invalid parameter"),
    (200, {"code": "-3", "msg": "param error"}, BrokerRejected, "code -3"),
    (200, {"code": 200005, "msg": "Insufficient balance"}, BrokerRejected, "code 200005"),
    (200, {"code": -103}, BrokerRejected, "no message"),
    (200, {"code": -200, "msg": "System error"}, BrokerUnavailable, "System error"),
    (502, "<html><body>Bad gateway</body></html>", BrokerUnavailable, "HTML"),
    (503, "Service Unavailable", BrokerUnavailable, "HTTP 503"),
    (404, "<html><body>Not found</body></html>", BrokerRejected, "HTTP 404"),
    (200, "<html>maintenance</html>", BrokerMalformed, "not JSON"),
    (200, {"data": []}, BrokerMalformed, "not a CoinW envelope"),
    (200, ["not", "an", "envelope"], BrokerMalformed, "not a CoinW envelope"),
    (200, {"code": "200", "msg": "SUCCESS"}, BrokerMalformed, "without data"),
    (200, envelope({"orderNumber": 1}), BrokerMalformed, "expected a list"),
]


@pytest.mark.parametrize(("status", "body", "error", "text"), ERROR_CASES)
def test_error_answers(status: int, body: Any, error: type[BrokerError], text: str) -> None:
    adapter = adapter_for(lambda request: respond(status, body))
    budget = adapter.budget
    with pytest.raises(error) as caught:
        run(adapter, lambda a: a.list_orders(SCOPE))
    message = str(caught.value)
    assert text in message and caught.value.connection == "cw"
    expected_sign = sign({"currencyPair": "BTC_USDT"}, KEY, SECRET)
    assert KEY not in message and SECRET not in message and expected_sign not in message
    if error is BrokerRateLimited:
        # Every group pauses (uid is shared), past CoinW's 30 s ban with a margin.
        assert isinstance(caught.value, BrokerRateLimited) and caught.value.code == "29001"
        assert caught.value.retry_after is not None and caught.value.retry_after >= 65
        for group in ("returnOpenOrders", "uid"):
            assert budget.group(group).paused_until - budget.now() > 60


# -- parsing ------------------------------------------------------------------------------


def test_open_order_fields() -> None:
    snap = parse_open_order(open_item(status=2, success_count="0.0002", success_amount="13.4"),
                            broker="cw", account_id="spot", pair="BTC_USDT")
    assert (snap.order_id, snap.symbol, snap.side, snap.order_type) == (
        BIG, "BTC_USDT", "BUY", "LIMIT")
    assert snap.qty == Decimal("0.0005") and snap.price == Decimal("67000")
    assert snap.filled_qty == Decimal("0.0002") and snap.avg_fill_price == Decimal("67000")
    assert snap.placed_at == datetime(2025, 4, 3, 10, 39, 58, 123000, tzinfo=UTC)
    assert snap.broker_kind == "coinw" and snap.account_id == "spot"
    nothing = parse_open_order(open_item(prize="0"), broker="cw", account_id="spot",
                               pair="BTC_USDT")
    assert nothing.price is None and nothing.avg_fill_price is None and nothing.order_type == ""


def test_seed_status_example() -> None:
    snap = parse_order_status(SEED_STATUS, broker="cw", account_id="spot", order_id=BIG)
    assert snap.status is OrderStatus.CANCELLED and snap.broker_status == "4"
    assert (snap.symbol, snap.side, snap.qty) == ("BTC_USDT", "BUY", Decimal("0.0001"))
    # "2025-04-03 18:39:58" is Beijing time (UTC+8).
    assert snap.placed_at == datetime(2025, 4, 3, 10, 39, 58, tzinfo=UTC)
    assert snap.price is None and snap.filled_qty == 0  # returnOrderStatus has neither


def test_big_order_numbers_stay_exact() -> None:
    assert str(int(float(BIG))) != BIG  # what a float parser would have done
    raw = (b'{"code":"200","msg":"SUCCESS","data":['
           b'{"orderNumber":4624544807079846405,"date":1743676798123,"total":"1",'
           b'"type":"sell","prize":"3500","success_count":"0","success_amount":"0","status":1},'
           b'{"orderNumber":"4624544807079846406","date":"1743676798124","total":"1",'
           b'"type":"sell","prize":"3500","success_count":"0","success_amount":"0",'
           b'"status":"1"}]}')
    result = run(adapter_for(lambda request: respond(200, raw)), lambda a: a.list_orders(SCOPE))
    assert [o.order_id for o in result.orders] == [BIG, "4624544807079846406"]
    assert order_number(Decimal(BIG)) == BIG and order_number(f" {BIG} ") == BIG
    with pytest.raises(TypeError):
        order_number(4.624544807079846e18)
    with pytest.raises(ValueError):
        order_number("")


def test_one_bad_order_does_not_hide_the_others() -> None:
    items = [open_item(), {"orderNumber": 17}, "junk", open_item(orderNumber=2.5),
             open_item(orderNumber=BIG[:-1] + "9", date="yesterday"),
             open_item(orderNumber=int(BIG) + 1, status=6)]
    result = run(adapter_for(lambda request: respond(200, envelope(items))),
                 lambda a: a.list_orders(SCOPE))
    assert [o.order_id for o in result.orders] == [BIG, str(int(BIG) + 1)]
    assert result.orders[1].unknown_status  # flagged, not a problem
    assert len(result.problems) == 4
    assert "order 17" in result.problems[0] and "order #2" in result.problems[1]


def test_no_open_orders_may_be_null() -> None:
    result = run(adapter_for(lambda request: respond(200, envelope(None))),
                 lambda a: a.list_orders(SCOPE))
    assert result.orders == [] and result.problems == []


@pytest.mark.parametrize("code", [b'"200"', b"200", b"200.0", b'" 200 "'])
def test_success_code_as_string_or_number(code: bytes) -> None:
    raw = b'{"code":' + code + b',"data":[],"msg":"SUCCESS","success":true,"failed":false}'
    result = run(adapter_for(lambda request: respond(200, raw)), lambda a: a.list_orders(SCOPE))
    assert result.orders == [] and result.problems == []


def test_parsing_edge_cases() -> None:
    with pytest.raises(TypeError):
        order_number(True)
    with pytest.raises(TypeError):
        parse_order_status(["not", "an", "object"], broker="cw", account_id="spot",
                           order_id=BIG)
    for date in (None, "", 0, "0"):
        snap = parse_open_order(open_item(date=date), broker="cw", account_id="spot",
                                pair="BTC_USDT")
        assert snap.placed_at is None  # no date is not 1970 (that would retire the order)
    seconds = parse_open_order(open_item(date=1743676798), broker="cw", account_id="spot",
                               pair="BTC_USDT")
    assert seconds.placed_at == datetime(2025, 4, 3, 10, 39, 58, tzinfo=UTC)
    # A probe does not fail over an unreadable date: placed_at only feeds retirement.
    probed = parse_order_status(SEED_STATUS | {"date": "3 Apr 2025"}, broker="cw",
                                account_id="spot", order_id=BIG)
    assert probed.placed_at is None and probed.status is OrderStatus.CANCELLED
    other = parse_open_order(open_item(orderNumber=7), broker="cw", account_id="spot",
                             pair="BTC_USDT")
    assert carry_over(other, probed) is probed  # never mixes two orders


# -- configuration ------------------------------------------------------------------------


def config_problems(**table: Any) -> list[str]:
    base = {"kind": "coinw", "api_key": KEY, "secret_key": SECRET, "pairs": ["BTC_USDT"]}
    settings = load_settings(data={"brokers": {"cw": base | table}}, environ={})
    registry = get_plugin_manager(builtins=DEFAULT_PLUGINS + PLUGINS).registry()
    assert registry.brokers["coinw"] is CoinWAdapter
    try:
        validate(settings, registry, "cfg.toml")
    except ConfigError as err:
        text = [str(p) for p in err.problems]
        assert all(KEY not in t and SECRET not in t for t in text)
        return text
    return []


@pytest.mark.parametrize(("table", "problem"), [
    ({"pairs": ["BTC_USDT", "btc_usdt"]},
     "cfg.toml: brokers.cw.pairs.1: pair 'btc_usdt' is not like BTC_USDT (upper-case "
     "BASE_QUOTE); did you mean 'BTC_USDT'?"),
    ({"pairs": ["ETH-USDT"]}, "brokers.cw.pairs.0: pair 'ETH-USDT' is not like BTC_USDT "
                              "(upper-case BASE_QUOTE); did you mean 'ETH_USDT'?"),
    ({"pairs": ["BTCUSDT"]}, "brokers.cw.pairs.0: pair 'BTCUSDT' is not like BTC_USDT "
                             "(upper-case BASE_QUOTE)"),
    ({"pairs": []}, "brokers.cw.pairs: List should have at least 1 item"),
    ({"pairs": ["BTC_USDT", "ETH_USDT", "BTC_USDT"]},
     "brokers.cw.pairs: BTC_USDT is listed more than once"),
    ({"api_key": " "}, "brokers.cw.api_key: must not be empty"),
    ({"secret_key": None}, "brokers.cw.secret_key: "),
    # One returnOpenOrders call per pair: 30 pairs every second break its budget (the
    # daemon's generic check refuses it).
    ({"pairs": [f"C{n}_USDT" for n in range(30)], "interval": 1.0}, "brokers.cw.interval: "),
    ({"limits": {"returnOpenOrders": "60/2s"}}, "brokers.cw.limits.returnOpenOrders: 60/2s "
                                                "is above the documented limit 30/2s"),
])
def test_config_problems(table: dict[str, Any], problem: str) -> None:
    problems = config_problems(**table)
    assert len(problems) == 1 and problems[0].startswith(
        problem if problem.startswith("cfg.toml") else "cfg.toml: " + problem), problems


def test_defaults_are_valid() -> None:
    assert config_problems() == []
    config = CoinWConfig.model_validate(
        {"kind": "coinw", "api_key": KEY, "secret_key": SECRET, "pairs": ["BTC_USDT"]})
    assert config.base_url == "https://api.coinw.com" and config.account_id == "spot"
    assert sorted(CoinWAdapter.secrets(config)) == sorted([KEY, SECRET])


# -- per-order probes ---------------------------------------------------------------------


def status_answer(status: Any, **fields: Any) -> tuple[int, Any]:
    return 200, envelope(SEED_STATUS | {"status": status, "total": "0.0005"} | fields)


def detail_answer(status: Any, filled: str, quote: str, **fields: Any) -> tuple[int, Any]:
    """A returnOrderTrades answer with every field JKorf's CoinWOrderDetails reads."""
    return 200, envelope({
        "tradeID": int(BIG), "currencyPair": "BTC_USDT", "type": "buy", "amount": "33.5",
        "success_amount": quote, "total": "0.0005", "success_total": filled, "fee": "0",
        "date": "2025-04-03 18:39:58", "status": status} | fields)


MISSING = (200, {"code": -103, "msg": "Order does not exist"})
DOWN = (200, {"code": -200, "msg": "System error"})
DETAIL, STATUS = "returnOrderTrades", "returnOrderStatus"

FETCH_CASES: list[tuple[str, dict[str, tuple[int, Any]], Any, list[str]]] = [
    ("open", {DETAIL: detail_answer(1, "0", "0")}, (OrderStatus.SUBMITTED, "0", None),
     [DETAIL]),
    ("partial", {DETAIL: detail_answer(2, "0.0002", "13.4")},
     (OrderStatus.PARTIAL_FILLED, "0.0002", "67000"), [DETAIL]),
    ("filled", {DETAIL: detail_answer("3", "0.0005", "33.47")},
     (OrderStatus.FILLED, "0.0005", "66940"), [DETAIL]),
    ("cancelled after fills", {DETAIL: detail_answer(4, "0.0002", "13.4")},
     (OrderStatus.CANCELLED, "0.0002", "67000"), [DETAIL]),
    ("cancelled, nothing filled", {DETAIL: detail_answer(4, "0", "0")},
     (OrderStatus.CANCELLED, "0", None), [DETAIL]),
    ("unverified status 5", {DETAIL: detail_answer(5, "0", "0")}, "unknown", [DETAIL]),
    # returnOrderTrades says nothing of the order: returnOrderStatus decides.
    ("no detail, open", {DETAIL: MISSING, STATUS: status_answer(1)},
     (OrderStatus.SUBMITTED, "0", None), [DETAIL, STATUS]),
    ("null detail, cancelled", {DETAIL: (200, envelope(None)), STATUS: status_answer(4)},
     (OrderStatus.CANCELLED, "0", None), [DETAIL, STATUS]),
    ("no detail, filled", {DETAIL: MISSING, STATUS: status_answer("3")},
     (OrderStatus.FILLED, "0.0005", None), [DETAIL, STATUS]),
    ("unknown order", {DETAIL: MISSING, STATUS: MISSING}, None, [DETAIL, STATUS]),
    ("null data twice", {DETAIL: (200, envelope(None)), STATUS: (200, envelope(None))}, None,
     [DETAIL, STATUS]),
    ("no detail, status unreadable", {DETAIL: MISSING, STATUS: (200, envelope({"status": 1}))},
     BrokerMalformed, [DETAIL, STATUS]),
    ("no detail, status down", {DETAIL: MISSING, STATUS: DOWN}, BrokerUnavailable,
     [DETAIL, STATUS]),
    # A detail without a status still gives the fills; returnOrderStatus the status.
    ("detail without a status", {DETAIL: (200, envelope({"success_total": "0.0002",
                                                          "success_amount": "13.4"})),
                                 STATUS: status_answer(2)},
     (OrderStatus.PARTIAL_FILLED, "0.0002", "67000"), [DETAIL, STATUS]),
    ("detail with a null status", {DETAIL: detail_answer(None, "0.0002", "13.4"),
                                   STATUS: status_answer(2)},
     (OrderStatus.PARTIAL_FILLED, "0.0002", "67000"), [DETAIL, STATUS]),
    ("detail down", {DETAIL: DOWN}, BrokerUnavailable, [DETAIL]),
    ("rate-limited", {DETAIL: (200, {"code": 29001, "msg": "API access frequently"})},
     BrokerRateLimited, [DETAIL]),
    ("bad parameter", {DETAIL: (200, {"code": -103, "msg": "Invalid parameter"})},
     BrokerRejected, [DETAIL]),
    ("unreadable detail", {DETAIL: (200, envelope(["x"]))}, BrokerMalformed, [DETAIL]),
    ("detail without a size", {DETAIL: (200, envelope({"status": 2, "success_total": "1"}))},
     BrokerMalformed, [DETAIL]),
]


@pytest.mark.parametrize(("answers", "expected", "calls"),
                         [case[1:] for case in FETCH_CASES], ids=[c[0] for c in FETCH_CASES])
def test_fetch_order(answers: dict[str, tuple[int, Any]], expected: Any,
                     calls: list[str]) -> None:
    router = Router(answers)
    adapter = adapter_for(router)
    if isinstance(expected, type):
        with pytest.raises(expected):
            run(adapter, lambda a: a.fetch_order("spot", BIG))
    else:
        snap = run(adapter, lambda a: a.fetch_order("spot", BIG))
        if expected is None:
            assert snap is None
        elif expected == "unknown":
            assert snap.unknown_status and snap.broker_status == "5"
        else:
            status, filled, average = expected
            assert (snap.status, snap.filled_qty) == (status, Decimal(filled))
            assert snap.avg_fill_price == (Decimal(average) if average else None)
            assert snap.order_id == BIG and snap.symbol == "BTC_USDT"
    assert router.calls == calls


def test_cancel_after_partial_fills_reports_the_fills() -> None:
    """Listed partly filled, then gone from the list: the probe says 4 with fills."""
    router = Router({
        "returnOpenOrders": (200, envelope([open_item(status=2, success_count="0.0002",
                                                      success_amount="13.4")])),
        "returnOrderTrades": detail_answer(4, "0.0003", "20.1"),
    })

    async def work(adapter: CoinWAdapter) -> tuple[OrderSnapshot, OrderSnapshot | None]:
        listed = (await adapter.list_orders(SCOPE)).orders[0]
        return listed, await adapter.fetch_order("spot", BIG)

    listed, probed = run(adapter_for(router), work)
    assert probed is not None and probed.price == Decimal("67000")  # kept from the list
    result = diff(listed, probed, detected_at=NOW)
    assert [e.scene for e in result.events] == ["FILLED", "CANCEL_SUCCESS"]
    cancel = result.events[-1].payload
    assert cancel["order_status"] == "CANCELLED" and cancel["filled_qty"] == "0.0003"
    assert cancel["broker_status"] == "4" and cancel["price"] == "67000"
    assert result.events[0].payload["last_fill_qty"] == "0.0001"


def test_refine_keeps_list_facts_after_a_restart() -> None:
    """A fresh adapter probes an order it never listed: refine restores price/quantity."""
    router = Router({"returnOrderTrades": detail_answer(3, "0.0004", "26.8", total="0.0004")})
    previous = parse_open_order(open_item(), broker="cw", account_id="spot", pair="BTC_USDT")

    async def work(adapter: CoinWAdapter) -> OrderSnapshot:
        probed = await adapter.fetch_order("spot", BIG)
        assert probed is not None and probed.price is None
        return await adapter.refine(previous, probed)

    refined = run(adapter_for(router), work)
    assert refined.price == Decimal("67000") and refined.qty == Decimal("0.0005")
    assert refined.placed_at == previous.placed_at
    events = diff(previous, refined, detected_at=NOW).events
    assert [e.scene for e in events] == ["FINAL_FILLED"]  # no false MODIFY_SUCCESS
    assert router.calls == ["returnOrderTrades"]


# -- the simulator ------------------------------------------------------------------------


def sim_adapter(sim: CoinWSim, **cfg: Any) -> CoinWAdapter:
    config = CoinWConfig.model_validate(sim.broker_config("cw") | cfg)
    return CoinWAdapter("cw", config, build_client(config.base_url, timeout=5.0),
                        build_budget(CoinWAdapter, config))


@pytest.fixture
def sim() -> Iterator[CoinWSim]:
    simulator = CoinWSim(seed=7)
    simulator.start()
    yield simulator
    simulator.stop()


STEPS: dict[str, Callable[[CoinWSim, str], Any]] = {
    "placed": lambda s, o: None,
    "accepted": lambda s, o: s.book.accept(o),
    "partly filled": lambda s, o: s.book.fill(o, "0.1"),
    "filled": lambda s, o: s.book.fill(o),
    "cancelling": lambda s, o: s.book.request_cancel(o),
    "cancelling after a fill": lambda s, o: (s.book.fill(o, "0.1"), s.book.request_cancel(o)),
    "cancelled": lambda s, o: s.book.cancel(o),
    "expired": lambda s, o: s.book.expire(o),
    "failed": lambda s, o: s.book.reject(o),
    "replacing": lambda s, o: s.book.modify(o, price="66000"),
}


@pytest.mark.parametrize(("step", "status"), [
    ("placed", 1), ("accepted", 1), ("partly filled", 2), ("filled", 3), ("cancelling", 1),
    ("cancelling after a fill", 2), ("cancelled", 4), ("expired", 4), ("failed", 4),
    ("replacing", 1),
])
def test_sim_renders_coinw_statuses(sim: CoinWSim, step: str, status: int) -> None:
    order = sim.book.place("spot", "BTC_USDT", "BUY", "0.5", "67000")
    STEPS[step](sim, order.order_id)
    assert render_status(order) == status
    listed = sim.render_open(order)
    assert listed["prize"] == "67000"  # CoinW spot cannot amend: the placed price stays


def post(client: httpx.Client, command: str, params: dict[str, str], *,
         key: str, secret: str) -> dict[str, Any]:
    response = client.post(PRIVATE_PATH, params=tuple(signed_query(command, params, key,
                                                                   secret)))
    body: dict[str, Any] = response.json()
    return body


def test_sim_checks_signatures_and_reads_form_bodies(sim: CoinWSim) -> None:
    key, secret = sim.api_key, sim.secret_key
    with httpx.Client(base_url=sim.url) as client:
        placed = post(client, "doTrade", {"symbol": "BTC_USDT", "type": "0", "amount": "0.01",
                                          "rate": "67000", "isMarket": "false",
                                          "out_trade_no": "my,id 1"}, key=key, secret=secret)
        assert placed["code"] == "200" and placed["data"] == {"orderNumber": int(BIG)}
        assert post(client, "returnOrderStatus", {"orderNumber": BIG}, key=key,
                    secret="wrong")["code"] == 1003
        tampered = dict(signed_query("returnOrderStatus", {"orderNumber": BIG}, key, secret))
        tampered["orderNumber"] = str(int(BIG) + 1)
        assert client.post(PRIVATE_PATH, params=tampered).json()["code"] == 1003
        unsigned = client.post(PRIVATE_PATH, params={"command": "returnOrderStatus",
                                                     "orderNumber": BIG, "api_key": key})
        assert unsigned.json()["code"] == 1003
        form = client.post(PRIVATE_PATH, params={"command": "returnOrderStatus"},
                           data=dict(signed_query("returnOrderStatus", {"orderNumber": BIG},
                                                  key, secret)[1:]))
        assert form.json()["code"] == "200" and form.json()["data"]["status"] == 1
        unknown = post(client, "nope", {}, key=key, secret=secret)
        assert unknown["code"] == -103
        raw = client.post(PRIVATE_PATH, params=tuple(signed_query(
            "returnOpenOrders", {"currencyPair": "BTC_USDT"}, key, secret))).text
        assert f'"orderNumber":{BIG},' in raw and '"code":"200"' in raw
    assert sim.book.get(BIG).client_order_id == "my,id 1"


SIM_REFUSALS: list[tuple[str, dict[str, str], Any, str]] = [
    ("returnOpenOrders", {}, -103, "currencyPair is required"),
    ("returnOpenOrders", {"currencyPair": "BTC_USDT", "startAt": "today"}, -103, "startAt"),
    ("returnOrderTrades", {"orderNumber": "1"}, -103, "does not exist"),
    ("cancelOrder", {"orderNumber": "1"}, -103, "does not exist"),
    ("doTrade", {"symbol": "BTC_USDT", "type": "0", "amount": "lots"}, -103, "numbers"),
    ("doTrade", {"symbol": "BTC_USDT", "type": "2", "amount": "1", "rate": "1"}, -103,
     "type (0/1)"),
    ("doTrade", {"symbol": "BTC_USDT", "type": "0", "amount": "1"}, -103, "rate"),
]


@pytest.mark.parametrize(("command", "params", "code", "text"), SIM_REFUSALS)
def test_sim_refuses_bad_requests(sim: CoinWSim, command: str, params: dict[str, str],
                                  code: Any, text: str) -> None:
    with httpx.Client(base_url=sim.url) as client:
        answer = post(client, command, params, key=sim.api_key, secret=sim.secret_key)
    assert answer["code"] == code and text in answer["msg"]


def test_sim_filters_market_orders_and_keys(sim: CoinWSim) -> None:
    key, secret = sim.api_key, sim.secret_key
    early = sim.book.place("spot", "BTC_USDT", "BUY", "1", "66000")
    early.created -= 60
    with httpx.Client(base_url=sim.url) as client:
        market = post(client, "doTrade", {"symbol": "ETH_USDT", "type": "1", "amount": "2",
                                          "isMarket": "true"}, key=key, secret=secret)
        assert sim.book.get(str(market["data"]["orderNumber"])).price == Decimal("3500")
        since = int((early.created + 30) * 1000)
        later = post(client, "returnOpenOrders", {"currencyPair": "BTC_USDT",
                                                  "startAt": str(since)}, key=key, secret=secret)
        assert later["data"] == []
        until = post(client, "returnOpenOrders", {"currencyPair": "BTC_USDT",
                                                  "endAt": str(since)}, key=key, secret=secret)
        assert [o["orderNumber"] for o in until["data"]] == [int(early.order_id)]
        assert post(client, "returnOpenOrders", {"currencyPair": "BTC_USDT"}, key="other-key",
                    secret=secret)["code"] == 1003
        assert client.post("/api/v1/public").json() == {"code": 404, "msg": "Not Found"}
    assert not [r for r in sim.server.requests() if sim.polled_order(r)]


def test_sim_enforces_limits_and_escalates(sim: CoinWSim) -> None:
    clock = [1000.0]
    sim.server.clock = lambda: clock[0]

    def arrivals(count: int) -> list[Any]:
        """``count`` arrivals at the current instant, counted without HTTP round trips."""
        answers = [sim.check_limits("returnOpenOrders", clock[0]) for _ in range(count)]
        return ["200" if a is None else a.body["code"] for a in answers]

    with httpx.Client(base_url=sim.url) as client:
        def call() -> Any:
            return post(client, "returnOpenOrders", {"currencyPair": "BTC_USDT"},
                        key=sim.api_key, secret=sim.secret_key)

        assert arrivals(30) == ["200"] * 30
        assert call() == {"code": 29001, "msg": "API access frequently"}  # the 31st in 2 s
        clock[0] += 29.0
        assert call()["code"] == 29001  # the 30 s ban answers everything
        clock[0] += 2.0
        assert call()["code"] == "200"
        # Warning phase: limits halved to 15 / 2 s; breaking them bans again.
        assert arrivals(15) == ["200"] * 14 + [29001]
        for _ in range(8):
            clock[0] += 31.0
            assert arrivals(16)[-1] == 29001
        assert len(sim.bans) == 10
        clock[0] += 31.0 + 300.0 + 1.0
        assert call()["code"] == 29001  # ten bans within 8 hours: blacklisted
    assert len(sim.server.requests(PRIVATE_PATH)) == 4  # refused requests are recorded too
    assert sim.violations() == 10


def test_sim_seven_day_window(sim: CoinWSim) -> None:
    old = sim.book.place("spot", "BTC_USDT", "BUY", "0.1", "60000")
    old.created -= 8 * 24 * 3600
    fresh = sim.book.place("spot", "BTC_USDT", "BUY", "0.1", "60000")

    async def work(adapter: CoinWAdapter) -> tuple[Any, Any, list[str]]:
        listed = [o.order_id for o in (await adapter.list_orders(SCOPE)).orders]
        return (await adapter.fetch_order("spot", old.order_id),
                await adapter.fetch_order("spot", fresh.order_id), listed)

    gone, found, listed = run(sim_adapter(sim), work)
    assert gone is None and found is not None and found.status is OrderStatus.SUBMITTED
    assert listed == [old.order_id, fresh.order_id]  # open orders have no 7-day window


def test_cancel_order_through_the_sim(sim: CoinWSim) -> None:
    order = sim.book.place("spot", "ETH_USDT", "SELL", "2", "3500")

    known = OrderSnapshot(broker="cw", broker_kind="coinw", account_id="spot",
                          order_id=order.order_id, status=OrderStatus.SUBMITTED,
                          broker_status="1")

    async def work(adapter: CoinWAdapter) -> None:
        await adapter.cancel_order(known)
        with pytest.raises(BrokerRejected, match="already completed"):
            await adapter.cancel_order(known)

    run(sim_adapter(sim), work)
    assert sim.book.get(order.order_id).status == "CANCELLED"
    assert sim.windows["cancelOrder"].max_seen == 2


def test_wrong_secret_is_one_auth_error(sim: CoinWSim) -> None:
    with pytest.raises(BrokerAuthError) as caught:
        run(sim_adapter(sim, secret_key="not-the-secret"), lambda a: a.list_orders(SCOPE))
    assert "code 1003" in str(caught.value) and "not-the-secret" not in str(caught.value)
    assert len(sim.server.requests(PRIVATE_PATH)) == 1


# -- through the real daemon --------------------------------------------------------------


async def wait_for(receiver: Receiver, count: int) -> None:
    await asyncio.to_thread(receiver.wait_for, lambda events: len(events) >= count)


def test_lifecycle_against_simulator(tmp_path: Path, receiver: Receiver, sim: CoinWSim) -> None:
    """Two pairs; every transition reaches the webhook exactly once, in order; finished
    orders leave returnOpenOrders and are confirmed with returnOrderStatus."""
    table = sim.broker_config("cw") | {"interval": 0.2}
    config = daemon_config(tmp_path, {"cw": table}, receiver.url, announce_existing=True)
    book, account = sim.book, sim.accounts()[0]

    async def scenario() -> tuple[str, str, str]:
        async with running_app(config, extra_plugins=PLUGINS):
            a = book.place(account, "BTC_USDT", "BUY", "0.5", "67000").order_id
            b = book.place(account, "ETH_USDT", "SELL", "2", "3500").order_id
            c = book.place(account, "ETH_USDT", "BUY", "1", "3400").order_id
            await wait_for(receiver, 3)
            book.accept(a)
            book.fill(a, "0.2", "67000")
            book.fill(b, "0.5", "3500")
            await wait_for(receiver, 5)
            book.fill(a, "0.3", "66900")  # a completes and leaves the open list
            book.cancel(b)  # cancelled after a partial fill
            book.request_cancel(c)  # still open while the cancel is in flight
            await wait_for(receiver, 7)
            book.cancel(c)
            await wait_for(receiver, 8)
            return a, b, c

    a, b, c = asyncio.run(scenario())
    assert a == str(FIRST_ORDER_NUMBER)
    assert receiver.scenes(a) == ["PLACED", "FILLED", "FINAL_FILLED"]
    assert receiver.scenes(b) == ["PLACED", "FILLED", "CANCEL_SUCCESS"]
    assert receiver.scenes(c) == ["PLACED", "CANCEL_SUCCESS"]
    payloads = {(e["payload"]["order_id"], e["payload"]["scene_type"]): e["payload"]
                for e in receiver.events}
    final = payloads[(a, "FINAL_FILLED")]
    assert (final["filled_qty"], final["last_fill_qty"], final["last_fill_price"]) == (
        "0.5", "0.3", "66900")
    assert (final["filled_price"], final["price"], final["qty"]) == ("66940", "67000", "0.5")
    assert payloads[(a, "FILLED")]["last_fill_price"] == "67000"
    cancelled = payloads[(b, "CANCEL_SUCCESS")]
    assert (cancelled["filled_qty"], cancelled["qty"], cancelled["broker_status"]) == (
        "0.5", "2", "4")
    assert payloads[(c, "CANCEL_SUCCESS")]["filled_qty"] == "0"
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 8
    requests = sim.server.requests(PRIVATE_PATH)
    probed = [sim.polled_order(r) for r in requests
              if r.param("command") == "returnOrderTrades"]
    assert {a, b, c} <= set(probed)  # finished orders are confirmed with a per-order read
    # ... and that read describes each order whole: returnOrderStatus is never needed.
    assert not [r for r in requests if r.param("command") == "returnOrderStatus"]
    assert sim.is_list_request(requests[0]) and sim.polled_order(requests[0]) is None
    assert {r.param("currencyPair") for r in requests
            if r.param("command") == "returnOpenOrders"} == {"BTC_USDT", "ETH_USDT"}
    assert sim.violations() == 0


def test_order_older_than_seven_days_is_retired(tmp_path: Path, receiver: Receiver,
                                               sim: CoinWSim) -> None:
    old = sim.book.place(sim.accounts()[0], "BTC_USDT", "BUY", "0.1", "60000")
    old.created -= 8 * 24 * 3600
    table = sim.broker_config("cw") | {"interval": 0.2, "pairs": ["BTC_USDT"]}
    config = daemon_config(tmp_path, {"cw": table}, receiver.url, announce_existing=True)

    async def scenario() -> None:
        async with running_app(config, extra_plugins=PLUGINS):
            await wait_for(receiver, 1)
            sim.book.cancel(old.order_id)  # leaves the list; CoinW no longer answers for it
            await wait_for(receiver, 2)

    asyncio.run(scenario())
    assert receiver.scenes(old.order_id) == ["PLACED", "ORDER_RETIRED"]
    assert receiver.events[1]["event_type"] == "SYSTEM"
    assert not [r for r in sim.server.requests(PRIVATE_PATH)
                if r.param("command") == "returnOrderStatus"]


def test_wrong_secret_stops_the_connection_once(tmp_path: Path, receiver: Receiver,
                                               sim: CoinWSim) -> None:
    table = sim.broker_config("cw") | {"interval": 0.2, "secret_key": "not-the-secret"}
    config = daemon_config(tmp_path, {"cw": table}, receiver.url)

    async def scenario() -> str | None:
        async with running_app(config, extra_plugins=PLUGINS) as app:
            await wait_for(receiver, 1)
            return app.trackers["cw"].stopped_reason

    reason = asyncio.run(scenario())
    assert reason is not None and "code 1003" in reason
    assert receiver.scenes() == ["BROKER_AUTH_FAILED"]
    assert len(sim.server.requests(PRIVATE_PATH)) == 1  # one refused call, then silence
    assert "not-the-secret" not in json.dumps(receiver.events)
    assert sim.api_key not in json.dumps(receiver.events)


def test_a_list_answer_and_a_detail_answer_of_an_unchanged_order_are_the_same_snapshot(
        ) -> None:
    """No false change: which call read the order (origin) is not a fact the broker stated,
    and a detail answer completed from the list (carry_over) equals the list's, though the
    detail writes the starting amount and the date its own way (quote ``amount`` "33.50",
    Beijing seconds instead of epoch milliseconds) and has no price."""
    listed_item = open_item(status=2, success_count="0.0002", success_amount="13.4")
    router = Router({
        "returnOpenOrders": (200, envelope([listed_item])),
        "returnOrderTrades": detail_answer(2, "0.0002", "13.4", amount="33.50"),
    })

    async def work(a: CoinWAdapter) -> tuple[OrderSnapshot, OrderSnapshot | None]:
        listed = (await a.list_orders(a.scopes()[0])).orders[0]
        return listed, await a.fetch_order("spot", listed.order_id)

    listed, probed = run(adapter_for(router), work)
    assert probed is not None and probed == listed
    assert (listed.origin, probed.origin) == ("returnOpenOrders", "returnOrderTrades")


def test_a_detail_answer_is_read_as_jkorf_s_coinw_net_reads_it() -> None:
    """Oracle: JKorf's CoinW.Net (code nobody here wrote) reads ``returnOrderTrades`` as the
    order (``GetOrderAsync`` → ``CoinWOrderDetails``): tradeID the order id, total the
    quantity, success_total / success_amount the filled base / quote, status 1–4 the order
    status (its ``OrderStatus`` enum), date the creation time in UTC+8."""
    _, body = detail_answer(2, "0.0002", "13.4")
    snap = parse_order_detail(body["data"], broker="cw", account_id="spot", order_id=BIG)
    assert (snap.status, snap.broker_status) == (OrderStatus.PARTIAL_FILLED, "2")
    assert (snap.qty, snap.filled_qty) == (Decimal("0.0005"), Decimal("0.0002"))
    assert snap.avg_fill_price == Decimal("67000") and snap.side == "BUY"
    assert snap.placed_at == datetime(2025, 4, 3, 10, 39, 58, tzinfo=UTC)
    assert snap.symbol == "BTC_USDT" and snap.origin == "returnOrderTrades"


def test_one_request_a_poll_through_a_whole_lifecycle(sim: CoinWSim) -> None:
    """Against the simulator: open, partly filled, filled more, filled: each poll is one
    returnOrderTrades request, and each sees the quantity the order had."""
    order = sim.book.place("spot", "BTC_USDT", "BUY", "0.5", "67000")
    sim.book.accept(order.order_id)
    moves: list[Callable[[], Any]] = [
        lambda: None, lambda: sim.book.fill(order.order_id, "0.1"),
        lambda: sim.book.fill(order.order_id, "0.15"), lambda: sim.book.fill(order.order_id)]

    async def work(a: CoinWAdapter) -> list[tuple[OrderStatus, Decimal]]:
        seen = []
        for move in moves:
            move()
            snap = await a.fetch_order("spot", order.order_id)
            assert snap is not None
            seen.append((snap.status, snap.filled_qty))
        return seen

    seen = run(sim_adapter(sim), work)
    assert seen == [(OrderStatus.SUBMITTED, Decimal(0)),
                    (OrderStatus.PARTIAL_FILLED, Decimal("0.1")),
                    (OrderStatus.PARTIAL_FILLED, Decimal("0.25")),
                    (OrderStatus.FILLED, Decimal("0.5"))]
    commands = [dict(r.params)["command"] for r in sim.server.requests(PRIVATE_PATH)]
    assert commands == ["returnOrderTrades"] * 4


def test_the_documentation_s_own_request_example_as_a_vector() -> None:
    """Seed 004, CoinW's returnOrderStatus "Request Example": api_url
    ``/api/v1/private?command=returnOrderStatus``, params ``{"orderNumber":
    "4624544807079846405"}``, signed by the docs' SpotRestfulPrivate helper with the docs'
    placeholder credentials; the digest below was computed apart from poller (hashlib on the
    text written out by hand) following §5.2's steps (params
    but command, plus api_key, sorted, unencoded, then &secret_key=…, MD5, upper case)."""
    params = {"command": "returnOrderStatus", "orderNumber": "4624544807079846405"}
    text = "api_key=your_api_key&orderNumber=4624544807079846405&secret_key=your_secret_key"
    assert signing_payload(params, "your_api_key", "your_secret_key") == text
    assert sign(params, "your_api_key", "your_secret_key") == "D7F728C8FCDD693A0680A82CA790E53D"
    query = signed_query("returnOrderStatus", {"orderNumber": "4624544807079846405"},
                         "your_api_key", "your_secret_key")
    assert query == [("command", "returnOrderStatus"), ("orderNumber", "4624544807079846405"),
                     ("api_key", "your_api_key"), ("sign", "D7F728C8FCDD693A0680A82CA790E53D")]


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
       st.booleans())
def test_status_dates_read_as_strptime_reads_them(moment: datetime, short: bool) -> None:
    """The regex reader of ``YYYY-MM-DD HH:MM:SS`` agrees with strptime, one-digit fields
    included, and an impossible date is refused as strptime refuses it."""
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if short:
        text = (f"{moment.year:04d}-{moment.month}-{moment.day} {moment.hour}:"
                f"{moment.minute}:{moment.second}")
    expected = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    assert _moment(f" {text} ") == expected


@pytest.mark.parametrize("text", ["2025-13-03 18:39:58", "2025-02-30 10:00:00",
                                  "2025-04-03T18:39:58", "2025-04-03 18:39", "yesterday"])
def test_an_unreadable_status_date_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    with pytest.raises(ValueError):
        _moment(text)


@pytest.mark.parametrize("base", ["https://api.coinw.test", "https://gw.test/prefix/"])
def test_a_signed_call_goes_to_the_url_httpx_would_build(base: str) -> None:
    """The query set on the prepared URL is byte for byte what build_request(params=…)
    makes, under a base URL with a path prefix too."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return respond(*detail_answer(1, "0", "0"))

    config = CoinWConfig.model_validate({"kind": "coinw", "base_url": base, "api_key": KEY,
                                         "secret_key": SECRET, "pairs": ["BTC_USDT"]})
    client = httpx.AsyncClient(base_url=base, transport=httpx.MockTransport(handler))
    adapter = CoinWAdapter("cw", config, client, build_budget(CoinWAdapter, config))
    order_id = "46 2/4+5=&é"
    run(adapter, lambda a: a.fetch_order("spot", order_id))
    query = signed_query("returnOrderTrades", {"orderNumber": order_id}, KEY, SECRET)
    expected = client.build_request("POST", PRIVATE_PATH, params=tuple(query)).url
    assert [r.url.raw_path for r in seen] == [expected.raw_path]
    assert seen[0].url == expected and seen[0].headers["content-type"] == "application/json"


def test_a_call_is_signed_once_and_forgotten_when_its_order_is_final(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CoinW signs no nonce, so an order's signed URL is made once and reused poll after
    poll (byte for byte the same request), and dropped once the order is final; past
    URL_CACHE_SIZE the cache starts again."""
    from poller.brokers import coinw

    signed: list[str] = []
    original = coinw.signed_query

    def counting(command: str, params: Any, key: str, secret: str) -> list[tuple[str, str]]:
        signed.append(f"{command} {params.get('orderNumber', '')}")
        return original(command, params, key, secret)

    monkeypatch.setattr(coinw, "signed_query", counting)
    answers = {DETAIL: detail_answer(2, "0.0002", "13.4")}
    router = Router(answers)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return router(request)

    async def work(a: CoinWAdapter) -> tuple[int, int]:
        for _ in range(3):
            await a.fetch_order("spot", BIG)
        kept = len(a._urls)
        answers[DETAIL] = detail_answer(3, "0.0005", "33.5")
        await a.fetch_order("spot", BIG)
        return kept, len(a._urls)

    kept, after = run(adapter_for(handler), work)
    assert signed == [f"returnOrderTrades {BIG}"]
    assert len({str(r.url) for r in seen}) == 1 and len(seen) == 4
    assert (kept, after) == (1, 0)

    # An order CoinW no longer knows (retired, or never there) is forgotten too.
    answers[DETAIL], answers[STATUS] = MISSING, MISSING

    async def unknown(a: CoinWAdapter) -> tuple[Any, int]:
        return await a.fetch_order("spot", BIG), len(a._urls)

    assert run(adapter_for(handler), unknown) == (None, 0)

    monkeypatch.setattr(coinw, "URL_CACHE_SIZE", 2)
    signed.clear()

    async def many(a: CoinWAdapter) -> int:
        for order_id in ("1", "2", "3", "1"):
            await a.fetch_order("spot", order_id)
        return len(a._urls)

    answers[DETAIL] = detail_answer(2, "0.0002", "13.4")
    assert run(adapter_for(handler), many) == 2  # cleared at the third, then 3 and 1 again
    assert signed == [f"returnOrderTrades {n}" for n in ("1", "2", "3", "1")]
