"""Webull adapter: status table, signing vectors, errors, paging, shapes, and the simulator."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest

from poller.adapter import ListScope, RequestKind
from poller.brokers.webull import (
    STATUS_TABLE,
    WebullAdapter,
    WebullConfig,
    compact_json,
    parse_order,
    replace_body,
    sign,
)
from poller.compose import validate
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ConfigError,
)
from poller.models import OrderSnapshot, OrderStatus
from poller.plugins import DEFAULT_PLUGINS, get_plugin_manager
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.settings import load_settings
from poller.simulator import engine
from poller.simulator.webull import WebullSim
from tests.conftest import Receiver, daemon_config, running_app

T = TypeVar("T")

ACCOUNT = "4MHSOMIJ88O7E80VBG0O4G6E9A"
KEY, SECRET = "wbAppKey123", "wbSecret456"
NONCE = "3f2a9c1e8b7d4e6fa1b2c3d4e5f60718"
STAMP = "2026-05-20T03:24:31Z"

#: HK/JP flat order, every field of brokers.md 3.4.
HK_ORDER: dict[str, Any] = {
    "account_id": ACCOUNT, "category": "HK_STOCK", "currency": "HKD",
    "client_order_id": "db74f19918054a7e9bb72067731c9ae4",
    "order_id": "036LVV5P4I8BV0KHKN60000000", "extended_hours_trading": False,
    "filled_price": "0", "filled_qty": "0", "instrument_id": "913247275",
    "last_filled_time": None, "limit_price": "385.20", "order_status": "SUBMITTED",
    "order_type": "LIMIT", "place_time": "2026-05-20T03:24:31.120Z", "qty": "100",
    "side": "BUY", "stop_price": None, "symbol": "00700", "short_name": "TENCENT",
    "tif": "DAY", "trailing_stop_step": None, "trailing_type": None,
}

#: US variant: the legs nest in items[].
US_ORDER: dict[str, Any] = {
    "account_id": "PHIUK08VAKH7EOVG85ULCAG3JB", "combo_type": "NORMAL",
    "combo_ticker_type": "STOCK", "client_order_id": "04cda8db7ed940f6afeb26be6201ee53",
    "order_id": "036LVV5P4I8BV0KHKN60000001", "tif": "DAY", "extended_hours_trading": False,
    "items": [{
        "category": "US_STOCK", "currency": "USD", "filled_price": "180.00",
        "filled_qty": "1.00", "instrument_id": "913256135",
        "last_filled_time": "2025-11-21T06:27:43.312+0000", "limit_price": "180.00",
        "order_status": "PARTIAL_FILLED", "order_type": "LIMIT",
        "place_time": "2025-11-21T06:20:00.000Z", "qty": "10.00", "side": "BUY",
        "stop_price": None, "symbol": "AAPL", "trailing_type": None,
        "trailing_stop_step": None,
    }],
}


def order(**fields: Any) -> dict[str, Any]:
    return {**HK_ORDER, **fields}


def legacy(data: Any) -> dict[str, Any]:
    return {"code": 200, "msg": "ok", "data": data}


class FakeClock:
    """A budget clock that jumps instead of sleeping, so budget waits cost no time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_adapter(handler: Callable[[httpx.Request], httpx.Response] | None = None, *,
                 pinned: bool = True, **cfg: Any) -> WebullAdapter:
    """An adapter on a MockTransport (or a real client when ``handler`` is None).

    Its budget runs on a fake clock; the documented limits still shape it, only the waits
    are instant. ``pinned`` fixes the nonce and timestamp for exact signature checks.
    """
    # list = "open" unless a test says otherwise: most tests here are about one call.
    table = {"kind": "webull", "base_url": "https://api.webull.hk", "app_key": KEY,
             "app_secret": SECRET, "account_ids": [ACCOUNT], "list": "open", **cfg}
    config = WebullConfig.model_validate(table)
    transport = httpx.MockTransport(handler) if handler else None
    client = httpx.AsyncClient(base_url=config.base_url, transport=transport)
    clock = FakeClock()
    budget = RateBudget([LimitGroup(name, spec, share=config.share)
                         for name, spec in WebullAdapter.limits.items()],
                        clock=clock, sleep=clock.sleep)
    adapter = WebullAdapter("wb", config, client, budget)
    if pinned:
        adapter.nonce_factory = lambda: NONCE
        adapter.clock = lambda: datetime(2026, 5, 20, 3, 24, 31, 987000, tzinfo=UTC)
    return adapter


def run(adapter: WebullAdapter, work: Callable[[WebullAdapter], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work(adapter)
        finally:
            await adapter.aclose()
    return asyncio.run(main())


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None
           ) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


# -- status table ------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "canonical"), [
    ("SUBMITTED", OrderStatus.SUBMITTED),
    ("PARTIAL_FILLED", OrderStatus.PARTIAL_FILLED),
    ("FILLED", OrderStatus.FILLED),
    ("CANCELLED", OrderStatus.CANCELLED),
    ("FAILED", OrderStatus.FAILED),
    ("PENDING", None),  # not documented for Webull: flagged, never guessed
    ("EXPIRED", None),
    ("Mystery", None),
])
def test_status_table(raw: str, canonical: OrderStatus | None) -> None:
    snap = parse_order(order(order_status=raw), broker="wb", account_id=ACCOUNT)
    assert snap.broker_status == raw
    if canonical is None:
        assert raw not in STATUS_TABLE and snap.unknown_status
    else:
        assert STATUS_TABLE[raw] is canonical
        assert snap.status is canonical and not snap.unknown_status


def test_table_holds_exactly_the_documented_statuses() -> None:
    assert set(STATUS_TABLE) == {"SUBMITTED", "PARTIAL_FILLED", "FILLED", "CANCELLED",
                                 "FAILED"}


# -- signing -------------------------------------------------------------------------------

def by_hand(s3: str, algorithm: str) -> str:
    """brokers.md §3.2 steps 5-7, written out with the standard library."""
    encoded = quote(s3, safe="")
    digest = hashlib.sha1 if algorithm == "HMAC-SHA1" else hashlib.sha256
    return base64.b64encode(
        hmac.new((SECRET + "&").encode(), encoded.encode(), digest).digest()).decode()


REPLACE_BODY = (b'{"account_id":"20150320010101001","stock_order":{"client_order_id":'
                b'"2022021819071234","side":"BUY","tif":"DAY","extended_hours_trading":false,'
                b'"instrument_id":"12064446","order_type":"LIMIT","limit_price":"100.49",'
                b'"qty":"100"}}')
CANCEL_BODY = ('{"account_id":"4MHSOMIJ88O7E80VBG0O4G6E9A","client_order_id":"c00000001",'
               '"note":"測試"}').encode()

SIGNING_VECTORS = [
    pytest.param(  # GET with query params, no body, HMAC-SHA1
        "GET", "api.webull.hk", "/trade/orders/list-open",
        [("account_id", ACCOUNT), ("page_size", "100"), ("last_client_order_id", "c00000002")],
        None, "HMAC-SHA1",
        "/trade/orders/list-open&account_id=4MHSOMIJ88O7E80VBG0O4G6E9A&host=api.webull.hk"
        "&last_client_order_id=c00000002&page_size=100&x-app-key=wbAppKey123"
        "&x-signature-algorithm=HMAC-SHA1&x-signature-nonce=3f2a9c1e8b7d4e6fa1b2c3d4e5f60718"
        "&x-signature-version=1.0&x-timestamp=2026-05-20T03:24:31Z",
        "iruF0BvcPRSOdRxcrcw8t8bQilU=", id="get-sha1"),
    pytest.param(  # POST with a JSON body, HMAC-SHA256: s2 = upper hex SHA-256 of the body
        "POST", "api.webull.com", "/trade/order/replace", [], REPLACE_BODY, "HMAC-SHA256",
        "/trade/order/replace&host=api.webull.com&x-app-key=wbAppKey123"
        "&x-signature-algorithm=HMAC-SHA256&x-signature-nonce=3f2a9c1e8b7d4e6fa1b2c3d4e5f60718"
        "&x-signature-version=1.0&x-timestamp=2026-05-20T03:24:31Z&"
        + hashlib.sha256(REPLACE_BODY).hexdigest().upper(),
        "jpXdbvxcRVtYhO2hkc8IMzUEkijL/j5Wer95QzZmyy4=", id="post-sha256"),
    pytest.param(  # host with a port; raw values with space and slash; a colliding key
        "GET", "127.0.0.1:8443", "/trade/order/detail",
        [("account_id", "A 1/b"), ("client_order_id", "c~1.x_y-z"), ("x-app-key", "dup")],
        None, "HMAC-SHA256",
        "/trade/order/detail&account_id=A 1/b&client_order_id=c~1.x_y-z&host=127.0.0.1:8443"
        "&x-app-key=wbAppKey123&dup&x-signature-algorithm=HMAC-SHA256"
        "&x-signature-nonce=3f2a9c1e8b7d4e6fa1b2c3d4e5f60718&x-signature-version=1.0"
        "&x-timestamp=2026-05-20T03:24:31Z",
        "vIdb9QWgTgixergQ07bx8QPo8de4P3a+N9/tOjOYopw=", id="port-collision"),
    pytest.param(  # POST with HMAC-SHA1: s2 = upper hex MD5 of the UTF-8 body
        "POST", "localhost:8080", "/trade/order/cancel", [], CANCEL_BODY, "HMAC-SHA1",
        "/trade/order/cancel&host=localhost:8080&x-app-key=wbAppKey123"
        "&x-signature-algorithm=HMAC-SHA1&x-signature-nonce=3f2a9c1e8b7d4e6fa1b2c3d4e5f60718"
        "&x-signature-version=1.0&x-timestamp=2026-05-20T03:24:31Z&"
        + hashlib.md5(CANCEL_BODY).hexdigest().upper(),
        "3FNpm10e3OodrLgvwA5GhO04LXg=", id="post-sha1-md5"),
]


@pytest.mark.parametrize(
    ("method", "host", "path", "params", "body", "algorithm", "s3", "pinned"), SIGNING_VECTORS)
def test_signing_vectors(method: str, host: str, path: str, params: list[tuple[str, str]],
                         body: bytes | None, algorithm: str, s3: str, pinned: str) -> None:
    headers = sign(method, host, path, params, body, app_key=KEY, app_secret=SECRET,
                   algorithm=algorithm, timestamp=STAMP, nonce=NONCE)
    assert headers["x-signature"] == by_hand(s3, algorithm) == pinned
    assert headers == {
        "x-app-key": KEY, "x-timestamp": STAMP, "x-signature-algorithm": algorithm,
        "x-signature-version": "1.0", "x-signature-nonce": NONCE, "x-signature": pinned}


def test_encoding_keeps_only_unreserved_characters() -> None:
    assert quote("/a b~c.d_e-f:g&h=", safe="") == "%2Fa%20b~c.d_e-f%3Ag%26h%3D"


def test_compact_json_is_what_gets_hashed() -> None:
    body = json.loads(CANCEL_BODY)
    assert compact_json(body) == CANCEL_BODY  # compact, UTF-8, not ASCII-escaped


def test_requests_carry_the_signature_of_what_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json=legacy({"client_order_id": "c1"}))
        return httpx.Response(200, json=legacy({"has_next": False,
                                                "orders": [order(client_order_id="c1")]}))

    adapter = make_adapter(handler, signature_algorithm="HMAC-SHA1", page_size=50)

    async def work(a: WebullAdapter) -> None:
        listed = await a.list_orders(ListScope(ACCOUNT, open_only=True))
        # Cancel names the order by the client_order_id the list paired with its order_id.
        await a.cancel_order(listed.orders[0])

    run(adapter, work)
    get, post = seen
    assert get.url.path == "/trade/orders/list-open"
    assert list(get.url.params.multi_items()) == [("account_id", ACCOUNT), ("page_size", "50")]
    assert post.content == b'{"account_id":"4MHSOMIJ88O7E80VBG0O4G6E9A","client_order_id":"c1"}'
    assert post.headers["content-type"] == "application/json"
    for request, params, body in ((get, list(get.url.params.multi_items()), None),
                                  (post, [], post.content)):
        assert request.headers["x-timestamp"] == STAMP
        assert request.headers["x-signature-nonce"] == NONCE
        expected = sign(request.method, "api.webull.hk", request.url.path, params, body,
                        app_key=KEY, app_secret=SECRET, algorithm="HMAC-SHA1",
                        timestamp=STAMP, nonce=NONCE)
        assert request.headers["x-signature"] == expected["x-signature"]
        assert request.headers["host"] == "api.webull.hk"


def test_requests_are_signed_after_the_budget_wait() -> None:
    """A request that waited for its slot must not leave with an old x-timestamp."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=legacy({"has_next": False, "orders": []}))

    adapter = make_adapter(handler)
    budget_clock = adapter.budget.now
    start = datetime(2026, 5, 20, 3, 0, 0, tzinfo=UTC)
    adapter.clock = lambda: start + timedelta(seconds=budget_clock())
    adapter.budget.pause(["order_query"], 1800.0)  # e.g. after REQUEST_TOTAL_COUNT_EXCEEDED
    run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert seen[0].headers["x-timestamp"] == "2026-05-20T03:30:00Z"


# -- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize(("region", "url"), [
    ("us", "https://api.webull.com"), ("hk", "https://api.webull.hk"),
    ("jp", "https://api.webull.co.jp"), (None, "https://api.webull.hk"),
])
def test_base_url_follows_the_region(region: str | None, url: str) -> None:
    table: dict[str, Any] = {"kind": "webull", "app_key": KEY, "app_secret": SECRET,
                             "account_ids": [ACCOUNT]}
    if region:
        table["region"] = region
    config = WebullConfig.model_validate(table)
    assert config.base_url == url and config.listing == "both" and config.page_size == 100
    explicit = WebullConfig.model_validate({**table, "base_url": "http://127.0.0.1:9/"})
    assert explicit.base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(("extra", "problem"), [
    ({"account_ids": []}, "at least 1"),
    ({"account_ids": ["A", "A"]}, "twice"),
    ({"page_size": 101}, "less than or equal to 100"),
    ({"page_size": 0}, "greater than or equal to 1"),
    ({"list": "all"}, "'open' or 'today'"),
    ({"region": "sg"}, "'us', 'hk' or 'jp'"),
    ({"app_secret": ""}, "at least 1"),
    ({"signature_algorithm": "MD5"}, "HMAC-SHA1"),
    ({"token": "x"}, "Extra inputs"),
])
def test_config_problems(extra: dict[str, Any], problem: str) -> None:
    base = {"kind": "webull", "app_key": KEY, "app_secret": SECRET, "account_ids": [ACCOUNT]}
    with pytest.raises(ValueError, match=problem) as caught:
        WebullConfig.model_validate({**base, **extra})
    assert SECRET not in str(caught.value)


def _validate(table: dict[str, Any]) -> None:
    settings = load_settings(data={"daemon": {"database": "/tmp/unused.db"},
                                   "brokers": {"wb": table}, "notifiers": {}})
    registry = get_plugin_manager(builtins=DEFAULT_PLUGINS + ("poller.brokers.webull",))
    validate(settings, registry.registry(), "<test>")


def test_region_limits() -> None:
    us = make_adapter(region="us", base_url="https://api.webull.com")
    hk = make_adapter()
    assert us.budget.group("order_query").spec == LimitSpec(10, 30.0)
    assert us.budget.group("order_query").allowed == 8
    assert hk.budget.group("order_query").spec == LimitSpec(2, 2.0)
    assert hk.budget.group("order_query").allowed == 1
    lowered = make_adapter(region="us", limits={"order_query": "5/30s"})
    assert lowered.budget.group("order_query").spec == LimitSpec(5, 30.0)
    table = {"kind": "webull", "region": "us", "app_key": KEY, "app_secret": SECRET,
             "account_ids": [ACCOUNT], "interval": 4.0}
    _validate({**table, "limits": {"order_query": "10/30s"}})
    _validate({**table, "region": "hk", "interval": 2.2})
    # 8 US queries per 30.25 s cannot carry a list call every 2 s (HK's 1 per 2.1 s could).
    with pytest.raises(ConfigError, match="0.26/s"):
        _validate({**table, "interval": 2.2})
    with pytest.raises(ConfigError, match="above the documented limit 10/30s for region us"):
        _validate({**table, "limits": {"order_query": "2/2s"}})
    with pytest.raises(ConfigError, match="above the documented limit"):
        _validate({**table, "region": "hk", "limits": {"replace": "2/1s"}})


# -- errors ---------------------------------------------------------------------------------

def err(code: str, message: str = "boom") -> dict[str, str]:
    return {"error_code": code, "message": message}


ERROR_CASES = [
    pytest.param(401, err("INCORRECT_SIGN", "signature is incorrect"), None, BrokerAuthError,
                 "INCORRECT_SIGN", id="401-incorrect-sign"),
    pytest.param(401, err("MISSING_NONCE"), None, BrokerAuthError, "MISSING_NONCE",
                 id="401-missing"),
    pytest.param(401, "", None, BrokerAuthError, "HTTP 401", id="401-empty"),
    pytest.param(400, err("CLOCK_SKEW_EXCEEDED"), None, BrokerAuthError, "CLOCK_SKEW",
                 id="skew-any-status"),
    pytest.param(403, err("ILLEAGAL_TIMESTAMP"), None, BrokerAuthError, "ILLEAGAL",
                 id="illegal-timestamp"),
    pytest.param(429, err("TOO_MANY_REQUESTS", "current limiting"), None, BrokerRateLimited,
                 "current limiting", id="429-throttled"),
    pytest.param(429, err("TOO_MANY_REQUESTS", "current limiting"), {"Retry-After": "7"},
                 BrokerRateLimited, "TOO_MANY_REQUESTS", id="429-retry-after"),
    pytest.param(400, err("TOO_MANY_REQUESTS"), None, BrokerRateLimited, "TOO_MANY",
                 id="throttled-any-status"),
    pytest.param(429, "", None, BrokerRateLimited, "HTTP 429", id="429-empty"),
    pytest.param(403, err("REQUEST_TOTAL_COUNT_EXCEEDED"), None, BrokerRateLimited,
                 "quota", id="quota"),
    pytest.param(500, err("INTERNAL_ERROR"), None, BrokerUnavailable, "INTERNAL_ERROR",
                 id="500"),
    pytest.param(503, "<html><body>Service Unavailable</body></html>", None,
                 BrokerUnavailable, "HTML", id="503-html"),
    pytest.param(400, err("SERVICE_NOT_AVAILABLE"), None, BrokerUnavailable, "SERVICE_NOT",
                 id="service-not-available"),
    pytest.param(400, err("GATEWAY_TIMEOUT"), None, BrokerUnavailable, "GATEWAY", id="gw"),
    pytest.param(417, err("TRADE_WEBULL_REQUEST_PROCESSING",
                          "The order is processing, please try later"), None,
                 BrokerUnavailable, "processing", id="processing"),
    pytest.param(200, "not json at all", None, BrokerMalformed, "not JSON", id="not-json"),
    pytest.param(200, legacy("oops"), None, BrokerMalformed, "expected an object",
                 id="wrong-shape"),
    pytest.param(200, legacy({"orders": "x"}), None, BrokerMalformed, "expected a list",
                 id="orders-not-list"),
    pytest.param(200, {"code": 500, "msg": "server busy", "data": None}, None,
                 BrokerUnavailable, "server busy", id="envelope-500"),
    pytest.param(200, err("INVALID_PARAMETER", "account_id is invalid"), None,
                 BrokerRejected, "account_id is invalid", id="200-error-code"),
    pytest.param(400, err("INVALID_PARAMETER", "page_size"), None, BrokerRejected,
                 "INVALID_PARAMETER", id="400"),
    pytest.param(404, err("NOT_FOUND"), None, BrokerRejected, "NOT_FOUND", id="404"),
    pytest.param(401, err("UNAUTHORIZED", f"key {KEY} secret {SECRET} refused"), None,
                 BrokerAuthError, "key *** secret *** refused", id="scrubbed"),
]


@pytest.mark.parametrize(("status", "body", "headers", "error", "text"), ERROR_CASES)
def test_error_answers(status: int, body: Any, headers: dict[str, str] | None,
                       error: type[BrokerError], text: str) -> None:
    adapter = make_adapter(answer(body, status, headers))
    with pytest.raises(BrokerError) as caught:
        run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert type(caught.value) is error
    assert text in str(caught.value)
    assert SECRET not in str(caught.value) and KEY not in str(caught.value)
    assert caught.value.connection == "wb"
    if isinstance(caught.value, BrokerRateLimited):
        pause = adapter.budget.group("order_query").paused_until - adapter.budget.now()
        expected = 1800.0 if "quota" in text else 7.0 if headers else 10.0
        assert caught.value.retry_after == expected and pause == pytest.approx(expected)
        assert adapter.budget.group("replace").paused_until == 0  # only the query group


# -- listing --------------------------------------------------------------------------------

def test_pagination_across_three_pages_with_duplicates() -> None:
    o = [order(client_order_id=f"c{i}", order_id=f"036LVV5P4I8BV0KHKN6000000{i}")
         for i in range(1, 6)]
    moved = {**o[1], "order_status": "PARTIAL_FILLED", "filled_qty": "10",
             "filled_price": "385.2"}
    pages = {
        None: legacy({"has_next": True, "orders": [o[0], o[1]]}),
        "c2": {"has_next": True, "orders": [moved, o[2]]},  # raw style; o[1] seen again
        "c3": legacy({"has_next": False, "orders": [o[2], o[3], o[4]]}),
    }
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("last_client_order_id")
        seen.append(cursor)
        assert request.url.params["page_size"] == "2"
        return httpx.Response(200, json=pages[cursor])

    adapter = make_adapter(handler, page_size=2)
    result = run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert seen == [None, "c2", "c3"]
    assert [s.client_order_id for s in result.orders] == ["c1", "c2", "c3", "c4", "c5"]
    assert result.orders[1].status is OrderStatus.PARTIAL_FILLED  # the later reading
    assert result.problems == []


@pytest.mark.parametrize("flag", ["has_next", "hasNext"])
def test_either_spelling_of_the_paging_flag_fetches_the_next_page(flag: str) -> None:
    first, second = (order(client_order_id=f"c{i}", order_id=f"036LVV5P4I8BV0KHKN6000000{i}")
                     for i in (1, 2))
    pages = {None: legacy({flag: True, "orders": [first]}),
             "c1": legacy({flag: False, "orders": [second]})}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("last_client_order_id")])

    adapter = make_adapter(handler, page_size=1)
    result = run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=False)))
    assert [s.client_order_id for s in result.orders] == ["c1", "c2"]


def test_has_next_without_a_cursor_stops_paging() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=legacy({"has_next": True, "orders": [order()]}))

    result = run(make_adapter(handler),
                 lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert len(calls) == 2 and len(result.orders) == 1
    assert "no new last_client_order_id" in result.problems[0]


def test_both_lists_today_first_then_in_place_of_an_open_call_every_today_every() -> None:
    """The default: every order of the day is seen (a placed-and-rejected order never shows
    in an open list), at the cost of one list call per today_every, not more."""
    seen: list[str] = []
    rejected = order(client_order_id="c7", order_id="036LVV5P4I8BV0KHKN60000007",
                     order_status="FAILED")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path.rsplit("/", 1)[-1])
        orders = [rejected] if request.url.path.endswith("list-today") else []
        return httpx.Response(200, json=legacy({"has_next": False, "orders": orders}))

    adapter = make_adapter(handler, list="both", today_every=30.0)
    assert adapter.scopes() == [ListScope(ACCOUNT, open_only=True)]
    passes: list[list[OrderStatus]] = []

    async def polls(a: WebullAdapter) -> None:
        for _ in range(4):  # 10 s apart on the budget's fake clock
            result = await a.list_orders(a.scopes()[0])
            passes.append([s.status for s in result.orders])
            await a.budget._sleep(10.0)  # the fake clock jumps

    run(adapter, polls)
    assert seen == ["list-today", "list-open", "list-open", "list-today"]
    assert passes[0] == [OrderStatus.FAILED] and passes[1] == []
    note = WebullAdapter.discovery_note(adapter.config)
    assert note is not None and "within 30 s, at no extra cost" in note
    open_note = WebullAdapter.discovery_note(adapter.config.model_copy(update={"listing": "open"}))
    assert open_note is not None and "never sent" in open_note


@pytest.mark.parametrize("listing", ["open", "today"])
def test_scopes_and_list_paths(listing: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=legacy({"has_next": False, "orders": []}))

    adapter = make_adapter(handler, account_ids=[ACCOUNT, "B2"], list=listing)
    assert adapter.scopes() == [ListScope(ACCOUNT, open_only=listing == "open"),
                                ListScope("B2", open_only=listing == "open")]
    run(adapter, lambda a: a.list_orders(a.scopes()[0]))
    assert seen == [f"/trade/orders/list-{listing}"]


def test_us_items_shape_and_exact_values() -> None:
    snap = parse_order(US_ORDER, broker="wb", account_id="fallback")
    assert snap.account_id == "PHIUK08VAKH7EOVG85ULCAG3JB"
    assert snap.order_id == "036LVV5P4I8BV0KHKN60000001"
    assert snap.client_order_id == "04cda8db7ed940f6afeb26be6201ee53"
    assert snap.status is OrderStatus.PARTIAL_FILLED and snap.symbol == "AAPL"
    assert (snap.qty, snap.filled_qty, snap.price, snap.avg_fill_price) == (
        Decimal("10.00"), Decimal("1.00"), Decimal("180.00"), Decimal("180.00"))
    assert snap.time_in_force == "DAY" and snap.extra["category"] == "US_STOCK"
    assert snap.updated_at == datetime(2025, 11, 21, 6, 27, 43, 312000, tzinfo=UTC)
    assert snap.placed_at == datetime(2025, 11, 21, 6, 20, tzinfo=UTC)


def test_big_ids_and_prices_stay_exact() -> None:
    text = json.dumps(legacy({"has_next": False, "orders": [
        order(order_id="PLACEHOLDER", limit_price="0.000123456789012345678",
              filled_qty="0E-10", filled_price="0E-10", qty="12345678901234567890.5"),
        {k: v for k, v in order(client_order_id="c9").items() if k != "order_id"},
    ]}))
    text = text.replace('"PLACEHOLDER"', "123456789012345678901234567")  # a bare JSON integer

    adapter = make_adapter(lambda r: httpx.Response(200, text=text))
    result = run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    big, no_broker_id = result.orders
    assert big.order_id == "123456789012345678901234567"
    assert big.price == Decimal("0.000123456789012345678")
    assert big.qty == Decimal("12345678901234567890.5")
    assert big.filled_qty == 0 and big.avg_fill_price is None
    # Without the broker's order_id the client_order_id identifies the order.
    assert no_broker_id.order_id == no_broker_id.client_order_id == "c9"
    assert parse_order(order(), broker="wb", account_id=ACCOUNT).order_id == (
        "036LVV5P4I8BV0KHKN60000000")


@pytest.mark.parametrize(("data", "count"), [
    (None, 0),  # "data": null
    ([HK_ORDER], 1),  # a bare list
    ({"has_next": "false", "orders": [HK_ORDER]}, 1),
    ({"has_next": False, "orders": None}, 0),
])
def test_page_variants(data: Any, count: int) -> None:
    result = run(make_adapter(answer(legacy(data))),
                 lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert len(result.orders) == count and result.problems == []


@pytest.mark.parametrize(("value", "expected"), [
    ("2025-11-21T06:27:43.312Z", datetime(2025, 11, 21, 6, 27, 43, 312000, tzinfo=UTC)),
    ("2025-11-21T06:27:43.312+0000", datetime(2025, 11, 21, 6, 27, 43, 312000, tzinfo=UTC)),
    ("2025-11-21T06:27:43", datetime(2025, 11, 21, 6, 27, 43, tzinfo=UTC)),  # naive: UTC
    (1763706463312, datetime(2025, 11, 21, 6, 27, 43, 312000, tzinfo=UTC)),  # epoch ms
    (Decimal("1763706463.5"), datetime(2025, 11, 21, 6, 27, 43, 500000, tzinfo=UTC)),
])
def test_time_spellings(value: Any, expected: datetime) -> None:
    snap = parse_order(order(place_time=value), broker="wb", account_id=ACCOUNT)
    assert snap.placed_at == expected == snap.updated_at


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, legacy({**HK_ORDER, "order_status": None}), BrokerMalformed),
    (200, legacy([HK_ORDER]), BrokerMalformed),
    (200, legacy({"order": "x"}), BrokerMalformed),
    (400, err("INVALID_PARAMETER", "client_order_id"), BrokerRejected),
    (200, legacy({"order": HK_ORDER}), None),  # wrapped in an "order" key: read through
])
def test_detail_answers(status: int, body: Any, error: type[BrokerError] | None) -> None:
    adapter = make_adapter(answer(body, status), list="today")
    if error is None:
        snap = run(adapter, lambda a: a.fetch_order(ACCOUNT, HK_ORDER["order_id"]))
        assert snap is not None and snap.order_id == HK_ORDER["order_id"]
        return
    with pytest.raises(error):
        run(adapter, lambda a: a.fetch_order(ACCOUNT, HK_ORDER["order_id"]))


@pytest.mark.parametrize(("call", "body", "error"), [
    ("cancel", legacy({}), BrokerMalformed),  # no client_order_id acknowledged
    ("replace", err("ORDER_NOT_FOUND"), BrokerRejected),  # detail says no such order
])
def test_action_answers(call: str, body: Any, error: type[BrokerError]) -> None:
    adapter = make_adapter(answer(body, 200 if call == "cancel" else 404))
    known = parse_order(order(), broker="wb", account_id=ACCOUNT)

    async def work(a: WebullAdapter) -> None:
        if call == "cancel":
            await a.cancel_order(known)
        else:
            await a.replace_order(known, qty=Decimal(500), price=None)

    with pytest.raises(error):
        run(adapter, work)


@pytest.mark.parametrize(("fields", "qty", "price", "problem"), [
    ({}, Decimal(200), Decimal("385"), None),
    ({}, Decimal("150.5"), None, "whole numbers"),
    ({}, Decimal(1_000_001), None, "whole numbers"),
    ({"filled_qty": "60"}, Decimal(50), None, "must exceed the filled quantity"),
    ({"order_type": "MARKET", "limit_price": None}, None, Decimal(1), "no limit price"),
    ({"order_type": "MARKET", "limit_price": None}, Decimal(200), None, None),
    ({"order_type": "STOP_LOSS_LIMIT", "stop_price": "380"}, None, Decimal("381"), None),
])
def test_check_action(fields: dict[str, Any], qty: Decimal | None, price: Decimal | None,
                      problem: str | None) -> None:
    adapter = make_adapter(answer({}))
    known = parse_order(order(**fields), broker="wb", account_id=ACCOUNT)
    found = adapter.check_action(known, "replace", qty, price)
    assert (found is None) if problem is None else (problem in (found or ""))
    assert adapter.check_action(known, "cancel", None, None) is None
    assert adapter.supports_replace and adapter.supports_cancel
    asyncio.run(adapter.aclose())


def test_one_bad_order_does_not_hide_the_others() -> None:
    body = legacy({"has_next": False, "orders": [
        {"order_status": 5, "client_order_id": "x1"}, order(), "junk",
        {"client_order_id": "x2"}, {**US_ORDER, "items": []},
        order(client_order_id="x3", qty="lots")]})
    result = run(make_adapter(answer(body)),
                 lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert [s.order_id for s in result.orders] == ["036LVV5P4I8BV0KHKN60000000"]
    assert len(result.problems) == 5
    assert all(p.startswith("page 1 order #") for p in result.problems)


# -- one order ------------------------------------------------------------------------------

def test_fetch_uses_the_client_order_id_learnt_from_the_list() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("detail"):
            return httpx.Response(200, json=legacy(order(order_status="FILLED",
                                                         filled_qty="100",
                                                         filled_price="385.1")))
        return httpx.Response(200, json=legacy({"has_next": False, "orders": [order()]}))

    async def work(a: WebullAdapter) -> Any:
        listed = await a.list_orders(ListScope(ACCOUNT, open_only=True))
        return await a.fetch_order(ACCOUNT, listed.orders[0].order_id)

    snap = run(make_adapter(handler), work)
    assert snap is not None and snap.status is OrderStatus.FILLED
    assert snap.order_id == "036LVV5P4I8BV0KHKN60000000"
    assert seen[1].url.path == "/trade/order/detail"
    assert dict(seen[1].url.params) == {"account_id": ACCOUNT,
                                        "client_order_id": HK_ORDER["client_order_id"]}


def test_fetch_after_a_restart_finds_the_order_in_todays_list() -> None:
    seen: list[str] = []
    finished = order(order_status="CANCELLED")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=legacy({"has_next": False, "orders": [finished]}))

    snap = run(make_adapter(handler),
               lambda a: a.fetch_order(ACCOUNT, "036LVV5P4I8BV0KHKN60000000"))
    assert snap is not None and snap.status is OrderStatus.CANCELLED
    assert seen == ["/trade/orders/list-today"]  # the whole order was in it: no detail call


@pytest.mark.parametrize(("status", "body"), [
    (404, err("ORDER_NOT_FOUND", "order not found")),
    (400, err("TRADE_ORDER_NOT_EXIST", "order does not exist")),
    (200, legacy(None)),
    (200, legacy({})),
])
def test_fetch_not_found_is_none(status: int, body: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("list-today"):
            return httpx.Response(200, json=legacy({"has_next": False, "orders": []}))
        assert request.url.params["client_order_id"] == "c404"  # tried as a client id
        return httpx.Response(status, json=body)

    seen: list[str] = []

    def counting(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return handler(request)

    async def twice(a: WebullAdapter) -> tuple[Any, Any]:
        return await a.fetch_order(ACCOUNT, "c404"), await a.fetch_order(ACCOUNT, "c404")

    assert run(make_adapter(counting), twice) == (None, None)
    # Today's list is scanned once for an unknown id, not at every probe.
    assert seen == ["/trade/orders/list-today", "/trade/order/detail", "/trade/order/detail"]


def test_fetch_keeps_the_id_the_tracker_knows() -> None:
    # Known by client_order_id (an answer without order_id); detail now names order_id.
    handler = answer(legacy(order(client_order_id="c7", order_status="FILLED")))
    snap = run(make_adapter(handler, list="today"), lambda a: a.fetch_order(ACCOUNT, "c7"))
    assert snap is not None and snap.order_id == "c7" and snap.status is OrderStatus.FILLED


def test_replace_body_echoes_every_original_field() -> None:
    original = order(stop_price="380.5", trailing_type="AMOUNT", trailing_stop_step="0.5")
    body = replace_body(original, limit_price=Decimal("384.80"))
    assert body == {
        "client_order_id": "db74f19918054a7e9bb72067731c9ae4", "side": "BUY", "tif": "DAY",
        "extended_hours_trading": False, "instrument_id": "913247275", "order_type": "LIMIT",
        "stop_price": "380.5", "trailing_type": "AMOUNT", "trailing_stop_step": "0.5",
        "qty": "100", "limit_price": "384.8"}
    us = replace_body(US_ORDER, qty=Decimal(20))
    assert us["qty"] == "20" and us["limit_price"] == "180.00" and us["tif"] == "DAY"


# -- against the simulator -----------------------------------------------------------------

def snapshot(sim: WebullSim, sim_order: engine.SimOrder) -> OrderSnapshot:
    """What the daemon would know of a simulated order."""
    return parse_order(sim.render(sim_order), broker="wb", account_id=sim_order.account_id)


def sim_adapter(sim: WebullSim, **cfg: Any) -> WebullAdapter:
    table = {**sim.broker_config("wb"), **cfg}
    table.pop("kind")
    table.pop("interval")
    adapter = make_adapter(None, pinned=False, **table)
    return adapter


def test_sim_signatures_both_algorithms_and_auth_failures() -> None:
    with_sim = WebullSim(seed=1).start()
    try:
        account = with_sim.accounts()[0]
        placed = with_sim.book.place(account, "00700", "BUY", 100, "385.2")

        async def work(a: WebullAdapter) -> None:
            result = await a.list_orders(a.scopes()[0])
            assert [s.order_id for s in result.orders] == [placed.order_id]
            await a.cancel_order(result.orders[0])  # POST: MD5 body digest

        run(sim_adapter(with_sim, signature_algorithm="HMAC-SHA1"), work)
        assert with_sim.book.get(placed.order_id).status == engine.CANCELLED

        failures = [
            ({"app_secret": "not-the-secret"}, None, "INCORRECT_SIGN"),
            ({"app_key": "someone-else"}, None, "UNAUTHORIZED"),
            ({}, 3600.0, "CLOCK_SKEW_EXCEEDED"),
        ]
        for cfg, skew, code in failures:
            adapter = sim_adapter(with_sim, **cfg)
            if skew:
                adapter.clock = lambda: datetime.fromtimestamp(with_sim.wall() - 3600, UTC)
            with pytest.raises(BrokerAuthError) as caught:
                run(adapter, lambda a: a.fetch_order(account, placed.order_id))
            assert caught.value.code == code and "not-the-secret" not in str(caught.value)
        raw = httpx.get(with_sim.url + "/trade/order/detail", headers={"x-app-key": "k"})
        assert raw.status_code == 401 and raw.json()["error_code"] == "MISSING_SIGNATURE"
        assert with_sim.violations() == 0
    finally:
        with_sim.stop()


def test_sim_replace_echo_rules_and_its_one_per_second_limit() -> None:
    sim = WebullSim(seed=2).start()
    try:
        account = sim.accounts()[0]
        o = sim.book.place(account, "09988", "SELL", 200, "82.35")
        sim.book.accept(o.order_id)

        async def work(a: WebullAdapter) -> None:
            # Changing a field seed 003 forbids to change is refused, order untouched.
            stock = replace_body(sim.render(o), limit_price=Decimal("82.3")) | {"side": "BUY"}
            with pytest.raises(BrokerRejected) as refused:
                await a._post("replace", "/trade/order/replace",
                              {"account_id": account, "stock_order": stock})
            assert refused.value.code == "INVALID_PARAMETER"
            assert "side cannot be modified" in str(refused.value)
            assert sim.book.get(o.order_id).price == Decimal("82.35")
            # Our budget runs on a fake clock here, so a second replace goes out at once:
            # the simulator enforces 1 per second on arrival and answers like Webull.
            with pytest.raises(BrokerRateLimited) as limited:
                await a.replace_order(snapshot(sim, o), qty=None, price=Decimal("82.3"))
            assert limited.value.code == "TOO_MANY_REQUESTS"

        run(sim_adapter(sim), work)
        assert sim.windows["replace"].violations == 1
        assert sim.book.get(o.order_id).price == Decimal("82.35")
    finally:
        sim.stop()


def test_sim_replace_applies_and_processing_blocks_a_cancel() -> None:
    sim = WebullSim(seed=3, hold_replaces=True, envelope="raw").start()
    try:
        account = sim.accounts()[0]
        o = sim.book.place(account, "00005", "BUY", 400, "64.1")
        sim.book.accept(o.order_id)

        async def work(a: WebullAdapter) -> None:
            (known,) = (await a.list_orders(a.scopes()[0])).orders
            await a.replace_order(known, qty=Decimal(300), price=Decimal("64.05"))
            with pytest.raises(BrokerUnavailable) as busy:
                await a.cancel_order(known)
            assert busy.value.code == "TRADE_WEBULL_REQUEST_PROCESSING"
            # Webull shows no pending status while the change is processed.
            assert sim.render(o)["order_status"] == "SUBMITTED"

        run(sim_adapter(sim), work)
        sim.finish_replace(o.order_id)
        assert (o.qty, o.price, o.status) == (Decimal(300), Decimal("64.05"), engine.SUBMITTED)
        assert sim.violations() == 0
    finally:
        sim.stop()


def test_sim_place_replace_and_parameter_checks() -> None:
    sim = WebullSim(seed=8).start()
    try:
        account = sim.accounts()[0]
        stock = {"client_order_id": "wb0001", "side": "BUY", "tif": "DAY",
                 "extended_hours_trading": False, "instrument_id": "913303964",
                 "order_type": "LIMIT", "limit_price": "64.1", "qty": "400"}

        async def work(a: WebullAdapter) -> None:
            # Placing is no request kind of poller's; the replace group paces it here.
            place = {"account_id": account, "stock_order": stock}
            assert await a._post(RequestKind.REPLACE, "/trade/order/place", place) == {
                "client_order_id": "wb0001"}
            for change, text in (({}, "duplicated"),
                                 ({"client_order_id": "wb0002", "instrument_id": "1"},
                                  "instrument_id is unknown"),
                                 ({"client_order_id": "wb-3"}, "letters/digits")):
                with pytest.raises(BrokerRejected, match=text):
                    await a._post(RequestKind.REPLACE, "/trade/order/place",
                                  {"account_id": account, "stock_order": stock | change})
            placed = sim.find(account, "wb0001")
            assert placed is not None
            await a.replace_order(snapshot(sim, placed), qty=Decimal(300),
                                  price=Decimal("64.05"))
            with pytest.raises(BrokerRejected, match="page_size"):
                await a._get(RequestKind.LIST, "/trade/orders/list-open",
                             [("account_id", account), ("page_size", "500")])
            with pytest.raises(BrokerRejected, match="NOT_FOUND"):
                await a._get(RequestKind.LIST, "/trade/nowhere", [])

        run(sim_adapter(sim), work)
        placed = sim.find(account, "wb0001")
        assert placed is not None and placed.status == engine.SUBMITTED
        assert (placed.symbol, placed.qty, placed.price) == ("00005", 300, Decimal("64.05"))
        bad_algorithm = {"x-app-key": sim.app_key, "x-signature": "x", "x-signature-nonce": "n",
                         "x-signature-algorithm": "HMAC-MD5", "x-timestamp": STAMP,
                         "x-signature-version": "1.0", "x-version": "v1"}
        raw = httpx.get(sim.url + "/trade/order/detail", headers=bad_algorithm)
        assert raw.json()["error_code"] == "SIGNATURE_ALGORITHM_NOT_SUPPORTED"
        assert sim.violations() == 0
    finally:
        sim.stop()


def test_sim_order_query_limit_answers_too_many_requests() -> None:
    sim = WebullSim(seed=4).start()
    try:
        async def work(a: WebullAdapter) -> None:
            scope = a.scopes()[0]
            await a.list_orders(scope)
            await a.list_orders(scope)
            with pytest.raises(BrokerRateLimited) as caught:  # third inside 2 s
                await a.list_orders(scope)
            assert caught.value.code == "TOO_MANY_REQUESTS" and "current limiting" in str(
                caught.value)

        # The fake-clock budget lets all three out at once: the simulator must catch it.
        run(sim_adapter(sim), work)
        assert sim.windows["order_query"].violations == 1
    finally:
        sim.stop()


def test_sim_us_shape_and_paging() -> None:
    sim = WebullSim(seed=5, region="us").start()
    try:
        account = sim.accounts()[0]
        ids = [sim.book.place(account, "AAPL", "BUY", n, "180.5").order_id for n in range(1, 6)]
        sim.book.fill(ids[0], 1)  # finished: not on the open list
        result = run(sim_adapter(sim, page_size=2), lambda a: a.list_orders(a.scopes()[0]))
        assert sorted(s.order_id for s in result.orders) == ids[1:]
        assert all(s.extra["category"] == "US_STOCK" for s in result.orders)
        assert [r.param("last_client_order_id") for r in
                sim.server.requests("/trade/orders/list-open")] == [None, "c00000004"]
        assert sim.render(sim.book.get(ids[1]))["items"][0]["qty"] == "2"
        assert sim.violations() == 0
    finally:
        sim.stop()


def test_lifecycle_through_the_daemon(tmp_path: Path, receiver: Receiver) -> None:
    """Each transition arrives once, in order; finished orders are confirmed by detail.

    Order queries are limited to 2 per 2 s (one per 2.1 s with the default share), so the
    scenario is kept to three rounds: two list calls and three detail calls at least.
    """
    sim = WebullSim(seed=6).start()
    try:
        account = sim.accounts()[0]
        # The simulator's default interval (4.5 s) leaves every other query slot to the
        # per-order confirmations; at the least legal interval (2.2 s) list calls would race
        # them for every slot and make the run's length a matter of luck.
        table = sim.broker_config("wb")
        config = daemon_config(tmp_path, {"wb": table}, receiver.url, announce_existing=True)
        book = sim.book

        async def scenario() -> tuple[str, str, str, dict[str, int]]:
            a = book.place(account, "00700", "BUY", 10, "385.2")
            b = book.place(account, "09988", "SELL", 200, "82.35")
            c = book.place(account, "00005", "BUY", 400, "64.1")
            for x in (a, b, c):
                book.accept(x.order_id)
            async with running_app(config, extra_plugins=("poller.brokers.webull",)) as app:
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 3)
                with book.lock:  # one step as a whole, whatever the simulator is serving
                    book.fill(a.order_id, 4, "385.2")
                    book.modify(b.order_id, price="82.3")  # changed by another client
                    book.reject(c.order_id, "insufficient buying power")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 6)
                with book.lock:
                    book.fill(a.order_id, 6, "385.0")
                    book.cancel(b.order_id)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 8)
                errors = dict(app.trackers["wb"].errors)
            return a.order_id, b.order_id, c.order_id, errors

        a_id, b_id, c_id, errors = asyncio.run(scenario())
        assert receiver.scenes(a_id) == ["PLACED", "FILLED", "FINAL_FILLED"]
        assert receiver.scenes(b_id) == ["PLACED", "MODIFY_SUCCESS", "CANCEL_SUCCESS"]
        assert receiver.scenes(c_id) == ["PLACED", "PLACE_FAILED"]
        ids = [e["id"] for e in receiver.events]
        assert len(ids) == len(set(ids)) == 8
        payload = {e["payload"]["scene_type"] + e["payload"]["order_id"]: e["payload"]
                   for e in receiver.events}
        fill, final = payload["FILLED" + a_id], payload["FINAL_FILLED" + a_id]
        assert (fill["filled_qty"], fill["last_fill_qty"]) == ("4", "4")
        assert (final["filled_qty"], final["last_fill_qty"]) == ("10", "6")
        assert final["client_order_id"] == "c00000001" and final["broker_kind"] == "webull"
        assert payload["MODIFY_SUCCESS" + b_id]["changes"] == {
            "price": {"old": "82.35", "new": "82.3"}}
        # The finished orders left list-open and were confirmed one by one.
        asked = [r.param("client_order_id") for r in sim.server.requests("/trade/order/detail")]
        assert set(asked) == {"c00000001", "c00000002", "c00000003"}
        assert errors == {} and sim.violations() == 0
    finally:
        sim.stop()


def test_wrong_secret_stops_the_connection_with_one_auth_error(tmp_path: Path,
                                                              receiver: Receiver) -> None:
    sim = WebullSim(seed=7).start()
    try:
        table = sim.broker_config("wb") | {"app_secret": "wrong-secret-123"}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)

        async def scenario() -> tuple[dict[str, int], str | None]:
            async with running_app(config, extra_plugins=("poller.brokers.webull",)) as app:
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                tracker = app.trackers["wb"]
                return dict(tracker.errors), tracker.stopped_reason

        errors, stopped = asyncio.run(scenario())
        (event,) = receiver.events
        assert event["event_type"] == "SYSTEM"
        assert event["payload"]["scene_type"] == "BROKER_AUTH_FAILED"
        assert "INCORRECT_SIGN" in event["payload"]["message"]
        assert "wrong-secret-123" not in json.dumps(event) and sim.app_key not in json.dumps(
            event)
        assert errors == {"auth": 1} and stopped is not None
        assert len(sim.server.requests()) == 1  # polling stopped after the refusal
    finally:
        sim.stop()


def test_a_replace_echoes_the_last_answer_without_reading_the_detail() -> None:
    """Replaces run at the replace limit, not the query limit: an order a list answer showed
    is echoed from that answer (qty and price from the current snapshot); only an order no
    answer showed yet is read first."""
    seen: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.path, body))
        if request.url.path == "/trade/order/replace":
            return httpx.Response(200, json=legacy({"client_order_id": HK_ORDER[
                "client_order_id"]}))
        if request.url.path.endswith("detail"):
            return httpx.Response(200, json=legacy(order()))
        return httpx.Response(200, json=legacy({"has_next": False, "orders": [order()]}))

    async def work(a: WebullAdapter) -> None:
        listed = (await a.list_orders(ListScope(ACCOUNT, open_only=True))).orders[0]
        changed = replace(listed, price=Decimal("380"))  # an earlier replace took effect
        await a.replace_order(changed, qty=Decimal(50), price=None)
        a._raw.clear()  # as after a restart: nothing shown yet
        await a.replace_order(listed, qty=None, price=Decimal("381.5"))

    run(make_adapter(handler), work)
    paths = [path for path, _ in seen]
    assert paths == ["/trade/orders/list-open", "/trade/order/replace",
                     "/trade/order/detail", "/trade/order/replace"]
    first = seen[1][1]["stock_order"]
    assert (first["qty"], first["limit_price"]) == ("50", "380")
    assert first["client_order_id"] == HK_ORDER["client_order_id"]
    assert first == {**replace_body(order(), qty=Decimal(50)), "limit_price": "380"}
    assert seen[3][1]["stock_order"]["limit_price"] == "381.5"


def test_every_request_carries_x_version_and_the_sim_refuses_one_without() -> None:
    """Both official SDKs send x-version (legacy v1, 3.x v3); it is not signed."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=legacy({"has_next": False, "orders": []}))

    adapter = make_adapter(handler)
    run(adapter, lambda a: a.list_orders(ListScope(ACCOUNT, open_only=True)))
    assert seen[0].headers["x-version"] == "v1"
    sim = WebullSim(seed=1).start()
    try:
        headers = {"x-app-key": sim.app_key, "x-signature": "x", "x-signature-nonce": "n",
                   "x-signature-algorithm": "HMAC-SHA256", "x-timestamp": STAMP,
                   "x-signature-version": "1.0"}
        raw = httpx.get(sim.url + "/trade/order/detail", headers=headers)
        assert raw.status_code == 400 and "x-version is required" in raw.text
    finally:
        sim.stop()


def test_an_order_rejected_between_two_polls_is_announced_with_the_default_listing(
        tmp_path: Path, receiver: Receiver) -> None:
    """Through the daemon: an order placed and rejected between two polls never appears in
    an open list; the default list = "both" still sends its PLACE_FAILED."""
    sim = WebullSim(seed=4).start()
    try:
        table = {**sim.broker_config("wb"), "interval": 2.5, "today_every": 5.0}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)
        account = sim.accounts()[0]

        async def run() -> None:
            async with running_app(config) as app:
                tracker = app.trackers["wb"]
                while not tracker.known_accounts:  # the baseline pass, committed
                    await asyncio.sleep(0.05)
                order = sim.book.place(account, "00700", "BUY", 100, "385.2")
                sim.book.reject(order.order_id, "insufficient buying power")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1, 30)

        asyncio.run(run())
    finally:
        sim.stop()
    assert receiver.scenes() == ["PLACE_FAILED"]
