"""Webull trade events over gRPC: the official signer as oracle, both event shapes, errors,
the stream's lifecycle, and the simulator pushing its book's changes (real gRPC, loopback)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import webull.core.utils.common as sdk_common
from webull.core.auth.algorithm import sha_hmac1, sha_hmac256_new
from webull.core.retry.retry_condition import RetryCondition
from webull.trade.events import events_pb2, signature_composer
from webull.trade.events import types as sdk_types
from webull.trade.events.default_retry_policy import (
    DefaultSubscribeRetryPolicy,
    SubscribeRetryPolicyContext,
)

import poller.brokers
from poller.brokers import webullpush
from poller.brokers.webull import STATUS_TABLE, WebullAdapter, WebullConfig, parse_order
from poller.brokers.webullpush import (
    EventsSettings,
    WebullEventStream,
    event_metadata,
    events_target,
    parse_event,
)
from poller.errors import BrokerAuthError, BrokerError, BrokerUnavailable
from poller.health import health
from poller.models import OrderStatus
from poller.pushfeed import CONNECTED, PushedOrder
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.simulator.httpserver import SlidingWindow
from poller.simulator.webull import WebullSim
from poller.simulator.webullevents import WebullEventsServer
from tests.brokers.consumer import Consumer
from tests.conftest import Receiver, daemon_config, running_app, until

T = TypeVar("T")

ACCOUNT = "4MHSOMIJ88O7E80VBG0O4G6E9A"
KEY, SECRET = "wbAppKey123", "wbSecret456"
#: Planted where a leak would show: config, server, error paths.
CANARY = "canarySecret0x5EED5EED"
NONCE, STAMP = "3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718", "2026-05-20T03:24:31Z"
WAIT = 10.0

#: Seed 001's first example: a partial fill that names the order by client_order_id only.
SEED_FILLED = """{
"id": "event_c4b2c210-ce32-41d4-a9a1-cfad4fdf191c",
"event_type": "TRADE",
"timestamp": "2025-03-29T07:02:33.200962333Z",
"payload": {
"request_id": "1045474398137483264",
"account_id": "4MHSOMIJ88O7E80VBG0O4G6E9A",
"client_order_id": "db74f19918054a7e9bb72067731c9ae4",
"instrument_id": "913256135",
"order_status": "PARTIAL_FILLED",
"symbol": "AAPL",
"qty": "10.00",
"filled_price": "180.00",
"filled_qty": "1.00",
"filled_time": "2025-11-21T06:27:43.312+0000",
"side": "BUY",
"category": "US_STOCK",
"order_type": "LIMIT",
"scene_type": "FILLED",
"biz_type":"TRADE"
}
}"""
#: Seed 001's MODIFY_SUCCESS: "0E-10" quantities before any fill.
SEED_MODIFIED = """{"id": "event_c4b2c210-ce32-41d4-a9a1-cfad4fdf191c", "event_type": "TRADE",
"timestamp": "2025-03-29T07:02:33.200962333Z", "payload": {
"account_id": "PHIUK08VAKH7EOVG85ULCAG3JB", "request_id": "036LVV5P4I8BV0KHKN60000000",
"order_id": "036LVV5P4I8BV0KHKN60000000",
"client_order_id": "04cda8db7ed940f6afeb26be6201ee53", "instrument_id": "913256135",
"order_status": "SUBMITTED", "symbol": "AAPL", "qty": "4.0000000000",
"filled_price": "0E-10", "filled_qty": "0E-10", "side": "BUY", "category": "US_STOCK",
"order_type": "LIMIT", "scene_type": "MODIFY_SUCCESS", "biz_type":"TRADE"}}"""
#: The SDK sample's shape: the order fields at the top level of the payload.
FLAT_FINAL = json.dumps({
    "request_id": "1045474398137483265", "account_id": ACCOUNT,
    "order_id": "036LVV5P4I8BV0KHKN60000000",
    "client_order_id": "db74f19918054a7e9bb72067731c9ae4", "order_status": "FILLED",
    "symbol": "AAPL", "qty": "10.00", "filled_price": "180.00", "filled_qty": "10.00",
    "filled_time": "2025-11-21T06:27:43.312Z", "side": "buy", "scene_type": "FINAL_FILLED",
    "biz_type": "TRADE"})


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(30):
            return await work()
    return asyncio.run(main())


def settings(target: str, *, secret: str = SECRET, key: str = KEY, tls: bool = False,
             accounts: tuple[str, ...] = (ACCOUNT,)) -> EventsSettings:
    from pydantic import SecretStr
    return EventsSettings(
        connection="wb", target=target, tls=tls, app_key=SecretStr(key),
        app_secret=SecretStr(secret), accounts=accounts, algorithm="HMAC-SHA256",
        signature_version="1.0", status_table=STATUS_TABLE,
        timestamp=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        nonce=lambda: "n" + datetime.now(UTC).strftime("%f"))


@pytest.fixture
def server() -> Iterator[WebullEventsServer]:
    events = WebullEventsServer(app_key=KEY, app_secret=SECRET).start()
    yield events
    events.stop()


async def subscribed(events: WebullEventsServer) -> None:
    """Wait until the service has accepted a subscription."""
    assert await asyncio.to_thread(events.connected.wait, WAIT)


# -- the official SDK as oracle ----------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "spec"), [
    ("HMAC-SHA256", sha_hmac256_new), ("HMAC-SHA1", sha_hmac1)])
@pytest.mark.parametrize("accounts", [[ACCOUNT], [ACCOUNT, "PHIUK08VAKH7EOVG85ULCAG3JB"]])
def test_signature_equals_the_official_calc_signature(
        monkeypatch: pytest.MonkeyPatch, algorithm: str, spec: Any, accounts: list[str]) -> None:
    monkeypatch.setattr(sdk_common, "get_uuid", lambda: NONCE)
    monkeypatch.setattr(sdk_common, "get_iso_8601_date", lambda dt_as_utc=None: STAMP)
    request = events_pb2.SubscribeRequest(subscribeType=1, timestamp=1779247471987,
                                          accounts=accounts)
    signature, official = signature_composer.calc_signature(KEY, SECRET, request, spec)
    ours = event_metadata(request.SerializeToString(), app_key=KEY, app_secret=SECRET,
                          algorithm=algorithm, version=spec.get_signer_version(),
                          nonce=NONCE, timestamp=STAMP)
    assert ours == official
    assert dict(ours)["x-signature"] == signature


def test_retry_constants_are_the_sdks() -> None:
    policy = DefaultSubscribeRetryPolicy()
    retried = set()
    for code in grpc.StatusCode:
        # Asked as the SDK's client asks it, late in a long outage.
        context = SubscribeRetryPolicyContext(None, 10_000, code)
        if not policy.should_retry(context) & RetryCondition.NO_RETRY:
            retried.add(code.name)
            assert policy.compute_delay_before_next_retry(context) == (
                webullpush.RECONNECT_DELAY * 1000)
    assert retried == webullpush.RETRYABLE_STATUS == {"UNAVAILABLE", "INTERNAL", "UNKNOWN"}
    assert webullpush.MAX_RETRIES is None  # max_retry_times=-1: for ever
    assert webullpush.SUBSCRIBE_ORDERS == sdk_types.ORDER_STATUS_CHANGED == 1
    assert webullpush.EVENT_TYPE_ORDER == sdk_types.EVENT_TYPE_ORDER == 1024


@pytest.mark.parametrize(("push_url", "region", "target"), [
    ("", "hk", "events-api.webull.hk:443"),
    ("", "us", "events-api.webull.com:443"),
    ("", "jp", "events-api.webull.co.jp:443"),
    ("127.0.0.1:50051", "hk", "127.0.0.1:50051"),
    ("grpcs://us-openapi-events.uat.webullbroker.com", "us",
     "us-openapi-events.uat.webullbroker.com:443"),
    ("[::1]:50051", "hk", "[::1]:50051"),
    ("::1", "hk", "[::1]:443"),
])
def test_events_target(push_url: str, region: str, target: str) -> None:
    assert events_target(push_url, region) == target


def test_default_hosts_are_the_sdks_endpoints() -> None:
    from webull.core.common import api_type
    from webull.core.endpoint.default_endpoint_resolver import DefaultEndpointResolver
    from webull.core.endpoint.resolver_endpoint_request import ResolveEndpointRequest
    resolver = DefaultEndpointResolver(None)
    for region, host in webullpush.EVENTS_HOSTS.items():
        assert resolver.resolve(ResolveEndpointRequest(region, api_type=api_type.EVENTS)) == host


# -- parsing -----------------------------------------------------------------------------


def test_seed_envelope_with_client_order_id_only() -> None:
    update = parse_event(SEED_FILLED, status_table=STATUS_TABLE)
    assert update.order_id == "" and update.client_order_id == "db74f19918054a7e9bb72067731c9ae4"
    assert update.account_id == ACCOUNT
    assert update.status is OrderStatus.PARTIAL_FILLED and update.broker_status == "PARTIAL_FILLED"
    assert update.kind == "FILLED"
    assert update.qty == Decimal(10) and isinstance(update.qty, Decimal)
    assert update.filled_qty == Decimal(1) and update.avg_fill_price == Decimal(180)
    assert update.event_time == datetime(2025, 11, 21, 6, 27, 43, 312000, tzinfo=UTC)
    assert update.extra["event_id"] == "event_c4b2c210-ce32-41d4-a9a1-cfad4fdf191c"
    assert update.extra["event_timestamp"] == "2025-03-29T07:02:33.200962333Z"
    assert update.extra["request_id"] == "1045474398137483264"


def test_seed_zero_quantities_compare_as_decimal() -> None:
    update = parse_event(SEED_MODIFIED, status_table=STATUS_TABLE)
    assert update.filled_qty == 0 and update.filled_qty == Decimal(0)
    assert update.qty == Decimal(4)
    assert update.avg_fill_price is None  # "0E-10" before a fill is no price
    assert update.event_time is None  # not said: the known update time stays
    assert update.status is OrderStatus.SUBMITTED and update.kind == "MODIFY_SUCCESS"
    assert update.order_id == "036LVV5P4I8BV0KHKN60000000"


def test_flat_shape_and_the_single_account_default() -> None:
    update = parse_event(FLAT_FINAL, status_table=STATUS_TABLE)
    assert update.status is OrderStatus.FILLED and update.kind == "FINAL_FILLED"
    assert update.side == "BUY" and update.filled_qty == Decimal("10")
    no_account = FLAT_FINAL.replace(f'"account_id": "{ACCOUNT}", ', "")
    assert parse_event(no_account, status_table=STATUS_TABLE,
                       default_account="A1").account_id == "A1"
    with pytest.raises(KeyError):
        parse_event(no_account, status_table=STATUS_TABLE)


def test_every_status_maps_through_the_adapters_table() -> None:
    for raw, status in STATUS_TABLE.items():
        text = FLAT_FINAL.replace('"order_status": "FILLED"', f'"order_status": "{raw}"')
        assert parse_event(text, status_table=STATUS_TABLE).status is status
    odd = parse_event(FLAT_FINAL.replace('"FILLED", "symbol"', '"HALTED", "symbol"'),
                      status_table=STATUS_TABLE)
    assert odd.status is None and odd.broker_status == "HALTED"


@pytest.mark.parametrize("payload", [
    "not json", "[1, 2]", '{"payload": {"account_id": "A"}}', '{"order_id": "1", "qty": "x"}',
    '{"order_id": "1", "filled_time": "yesterday"}',
])
def test_unreadable_events_raise_for_the_stream_to_skip(payload: str) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        parse_event(payload, status_table=STATUS_TABLE, default_account=ACCOUNT)


# -- the stream over real gRPC -----------------------------------------------------------


def test_events_arrive_control_messages_are_ignored_and_bad_ones_skipped(
        server: WebullEventsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="poller")

    async def work() -> list[PushedOrder]:
        stream = WebullEventStream(settings(server.target))
        consumer = Consumer(stream)
        await subscribed(server)
        server.ping()
        server.push('{"position": 1}', event_type=sdk_types.EVENT_TYPE_POSITION)
        server.push("{not json")
        server.push(SEED_FILLED)
        server.push(SEED_MODIFIED)  # another account: not for this subscriber
        server.push(FLAT_FINAL)
        got = [await consumer.next(), await consumer.next()]
        await stream.aclose()
        assert await consumer.finished() is None
        assert stream.seen == {"subscribed": 1, "ping": 1, "other": 1, "unreadable": 1,
                               "order": 2}
        assert consumer.markers == [CONNECTED]  # the subscription, not the ping
        return got

    first, second = run(work)
    assert (first.kind, first.client_order_id, first.order_id) == (
        "FILLED", "db74f19918054a7e9bb72067731c9ae4", "")
    assert (second.kind, second.status, second.filled_qty) == (
        "FINAL_FILLED", OrderStatus.FILLED, Decimal(10))
    skipped = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING
    request, problem = server.subscriptions[0]
    assert request == [ACCOUNT] and problem is None


def test_wrong_secret_is_one_auth_error_without_the_secret(
        server: WebullEventsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def work() -> BrokerError | None:
        consumer = Consumer(WebullEventStream(settings(server.target, secret=CANARY)))
        return await consumer.finished()

    error = run(work)
    assert isinstance(error, BrokerAuthError) and error.code == "UNAUTHENTICATED"
    assert "signature is incorrect" in str(error)
    assert server.subscriptions == [([ACCOUNT], "signature is incorrect")]
    assert CANARY not in str(error) and CANARY not in repr(error)
    assert CANARY not in caplog.text


class EchoingServer(WebullEventsServer):
    """A service that quotes the credentials back in its refusal (some gateways do)."""

    def check(self, request: Any, metadata: dict[str, str]) -> str | None:
        return f"bad key {metadata['x-app-key']} for secret {CANARY}"


@pytest.mark.parametrize("refuse_with", ["status", "event"])
def test_refusal_text_is_scrubbed_of_credentials(
        refuse_with: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = EchoingServer(app_key=CANARY, app_secret=CANARY, refuse_with=refuse_with).start()
    try:
        async def work() -> BrokerError | None:
            stream = WebullEventStream(settings(echo.target, key=CANARY, secret=CANARY))
            return await Consumer(stream).finished()
        error = run(work)
    finally:
        echo.stop()
    assert isinstance(error, BrokerAuthError)
    assert error.code == ("UNAUTHENTICATED" if refuse_with == "status" else "AuthError")
    assert "bad key *** for secret ***" in str(error)
    assert CANARY not in str(error) and CANARY not in caplog.text


def test_drop_ends_updates_with_unavailable_and_the_next_call_reconnects(
        server: WebullEventsServer) -> None:
    async def work() -> None:
        stream = WebullEventStream(settings(server.target))
        consumer = Consumer(stream)
        await subscribed(server)
        server.push(SEED_FILLED)
        assert (await consumer.next()).kind == "FILLED"
        server.drop()  # mid-order: the fill that follows is for the reconciliation poll
        error = await consumer.finished()
        assert isinstance(error, BrokerUnavailable) and error.code == "UNAVAILABLE"
        assert error.code in webullpush.RETRYABLE_STATUS
        assert len(server.subscriptions) == 1  # it did not reconnect by itself
        again = Consumer(stream)  # the runner's next connection
        await subscribed(server)
        server.push(FLAT_FINAL)
        assert (await again.next()).kind == "FINAL_FILLED"
        assert len(server.subscriptions) == 2
        await stream.aclose()
        assert await again.finished() is None

    run(work)


def test_aclose_ends_a_waiting_stream(server: WebullEventsServer) -> None:
    async def work() -> None:
        stream = WebullEventStream(settings(server.target))
        consumer = Consumer(stream)
        await subscribed(server)
        await stream.aclose()
        assert await consumer.finished() is None
        assert consumer.items.empty()
        # A closed stream stays closed.
        assert await Consumer(stream).finished() is None
        assert len(server.subscriptions) == 1

    run(work)


def test_nothing_listening_is_unavailable() -> None:
    events = WebullEventsServer(app_key=KEY, app_secret=SECRET).start()
    target = events.target
    events.stop()

    async def work() -> BrokerError | None:
        return await Consumer(WebullEventStream(settings(target))).finished()

    error = run(work)
    assert isinstance(error, BrokerUnavailable) and error.code == "UNAVAILABLE"


def test_tls_to_a_plaintext_server_is_unavailable_not_a_hang(
        server: WebullEventsServer) -> None:
    async def work() -> BrokerError | None:
        return await Consumer(WebullEventStream(settings(server.target, tls=True))).finished()

    assert isinstance(run(work), BrokerUnavailable)


@pytest.mark.parametrize(("answer", "error", "code"), [
    (events_pb2.NumOfConnExceed, BrokerUnavailable, "NumOfConnExceed"),
    (events_pb2.SubscribeExpired, BrokerUnavailable, "SubscribeExpired"),
    (events_pb2.AuthError, BrokerAuthError, "AuthError"),
])
def test_in_stream_control_answers_end_the_stream(
        server: WebullEventsServer, answer: int, error: type[BrokerError], code: str) -> None:
    async def work() -> BrokerError | None:
        consumer = Consumer(WebullEventStream(settings(server.target)))
        await subscribed(server)
        server.push("subscription ended", event_type=answer, content_type="text/plain")
        return await consumer.finished()

    got = run(work)
    assert type(got) is error and got.code == code


# -- the adapter -------------------------------------------------------------------------


def adapter_for(config: dict[str, Any], *, fast: bool = False) -> WebullAdapter:
    """An adapter on a real client; ``fast``: order queries unthrottled (the simulator's
    window is widened to match), so reading back six orders takes no 2 s windows."""
    cfg = WebullConfig.model_validate(config)
    limits = WebullAdapter.limits_for(cfg)
    if fast:
        limits["order_query"] = LimitSpec(1000, 1.0)
    budget = RateBudget([LimitGroup(name, spec, share=cfg.share)
                         for name, spec in limits.items()])
    return WebullAdapter("wb", cfg, httpx.AsyncClient(base_url=cfg.base_url), budget)


BASE = {"kind": "webull", "app_key": KEY, "app_secret": SECRET, "account_ids": [ACCOUNT]}


def test_push_available() -> None:
    assert WebullAdapter.supports_push
    assert WebullAdapter.push_problem(WebullConfig.model_validate(BASE)) is None
    assert adapter_for(BASE).push_available() is None
    assert adapter_for({**BASE, "push": False}).push_available() == "push = false"
    refused = adapter_for({**BASE, "push_tls": False}).push_available()
    assert refused is not None and "events-api.webull.hk:443" in refused
    assert adapter_for({**BASE, "push_tls": False, "push_url": "127.0.0.1:5"}
                       ).push_available() is None


def test_push_available_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As without the extra: the SDK's events package and the stream module cannot load.
    monkeypatch.setitem(sys.modules, "webull.trade.events", None)
    monkeypatch.delitem(sys.modules, "poller.brokers.webullpush")
    monkeypatch.delattr(poller.brokers, "webullpush")
    reason = adapter_for(BASE).push_available()
    assert reason == ("the push extra is missing (webull.trade.events cannot be imported): "
                      "pip install '.[push]'")


def test_open_push_signs_with_the_adapters_clock_and_nonce() -> None:
    adapter = adapter_for(BASE)
    adapter.nonce_factory = lambda: NONCE
    adapter.clock = lambda: datetime(2026, 5, 20, 3, 24, 31, 987000, tzinfo=UTC)
    stream = adapter.open_push()
    cfg = stream.settings
    assert cfg.target == "events-api.webull.hk:443" and cfg.tls
    assert cfg.accounts == (ACCOUNT,) and cfg.status_table is STATUS_TABLE
    assert (cfg.timestamp(), cfg.nonce()) == (STAMP, NONCE)
    assert SECRET not in repr(cfg) and KEY not in repr(cfg)


# -- the simulator pushes its book's changes ---------------------------------------------


@pytest.mark.parametrize("shape", ["envelope", "flat"])
def test_simulator_pushes_book_changes_that_agree_with_polls(shape: Any) -> None:
    sim = WebullSim(seed=1, push_events=True, event_shape=shape).start()
    try:
        config = sim.broker_config("wb")
        assert config["push_tls"] is False and config["push_url"] == sim.events.target  # type: ignore[union-attr]
        sim.windows["order_query"] = SlidingWindow(1000, 1.0)
        adapter = adapter_for(config, fast=True)
        assert adapter.push_available() is None

        async def work() -> list[tuple[PushedOrder, Any]]:
            stream = adapter.open_push()
            consumer = Consumer(stream)
            assert sim.events is not None
            await subscribed(sim.events)
            book = sim.book
            one = book.place(ACCOUNT, "00700", "BUY", 300, "385.2")
            book.accept(one.order_id)  # Webull has no event for these two
            book.fill(one.order_id, 100)
            book.fill(one.order_id)
            two = book.place(ACCOUNT, "09988", "SELL", 100, "82.35")
            book.accept(two.order_id)
            book.modify(two.order_id, price="82.30")
            book.request_cancel(two.order_id)
            book.refuse_cancel(two.order_id)
            book.cancel(two.order_id)
            three = book.place(ACCOUNT, "00005", "BUY", 400, "64.1")
            book.reject(three.order_id)
            got = []
            for _ in range(6):
                update = await consumer.next()
                got.append((update, await adapter.fetch_order(ACCOUNT, update.order_id)))
            await stream.aclose()
            assert await consumer.finished() is None
            assert consumer.items.empty()
            await adapter.aclose()
            return got

        got = run(work)
    finally:
        sim.stop()
    assert [u.kind for u, _ in got] == ["FILLED", "FINAL_FILLED", "MODIFY_SUCCESS",
                                        "CANCEL_FAILED", "CANCEL_SUCCESS", "PLACE_FAILED"]
    first, polled_first = got[0]
    assert first.status is OrderStatus.PARTIAL_FILLED and first.filled_qty == Decimal(100)
    assert polled_first is not None and first.event_time is not None
    # Push and poll name the same moment, so a fact seen by both is one event.
    final, polled = got[1]
    assert polled is not None and final.event_time == polled.updated_at
    assert (final.status, final.filled_qty, final.qty) == (
        polled.status, polled.filled_qty, polled.qty)
    assert final.avg_fill_price == polled.avg_fill_price == Decimal("385.2")
    assert got[4][0].status is OrderStatus.CANCELLED
    assert got[5][0].status is OrderStatus.FAILED
    for update, snapshot in got:
        assert snapshot is not None
        assert update.client_order_id == snapshot.client_order_id
        assert update.account_id == ACCOUNT and update.order_id == snapshot.order_id
        if shape == "envelope":
            assert update.extra["event_type"] == "TRADE"


def test_the_simulator_without_push_events_has_no_events_server() -> None:
    sim = WebullSim(seed=1)
    assert sim.events is None and "push_url" not in sim.broker_config("wb")
    sim.stop()


def test_parse_order_and_parse_event_read_one_order_alike() -> None:
    # The same fields read by the polling parser and by the event parser.
    polled = parse_order({"account_id": ACCOUNT, "client_order_id": "c1", "order_id": "o1",
                          "order_status": "PARTIAL_FILLED", "qty": "10.00",
                          "filled_qty": "1.00", "filled_price": "180.00",
                          "last_filled_time": "2025-11-21T06:27:43.312+0000"},
                         broker="wb", account_id=ACCOUNT)
    pushed = parse_event(json.dumps({
        "account_id": ACCOUNT, "client_order_id": "c1", "order_id": "o1",
        "order_status": "PARTIAL_FILLED", "qty": "10.00", "filled_qty": "1.00",
        "filled_price": "180.00", "filled_time": "2025-11-21T06:27:43.312+0000"}),
        status_table=STATUS_TABLE)
    assert (pushed.status, pushed.qty, pushed.filled_qty, pushed.avg_fill_price,
            pushed.event_time) == (polled.status, polled.qty, polled.filled_qty,
                                   polled.avg_fill_price, polled.updated_at)



# -- a wrong signature through the daemon ---------------------------------------------------


def test_a_wrong_signature_through_the_daemon_stops_the_stream_once_and_polling_goes_on(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """The events server verifies with a secret other than the connection's (REST accepts
    it): one subscription attempt, one error line, one PUSH_REFUSED, the stream stopped, the
    secret nowhere, and the list polled at the connection's interval."""
    caplog.set_level(logging.DEBUG)
    sim = WebullSim(seed=8, push_events=True)
    sim.start()
    try:
        assert sim.events is not None
        sim.events.app_secret = "not-the-connection-secret"
        # A reconcile interval longer than the test: list calls after the refusal can only
        # be the full cadence (the stream never came up).
        table = sim.broker_config("wb") | {"interval": 2.5, "share": 1.0,
                                           "reconcile_interval": 600.0}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)

        def list_calls() -> int:
            return sum(1 for r in sim.server.requests() if sim.is_list_request(r))

        async def scenario() -> dict[str, Any]:
            async with running_app(config) as app:
                tracker = app.trackers["wb"]
                push = tracker.push
                assert push is not None
                await until(lambda: push.status.state == "stopped", timeout=WAIT)
                lists, polls = list_calls(), tracker.poller.polls
                # Three list calls after the refusal: the cadence goes on; any reconnect
                # loop (backoff from 1 s) would have subscribed again meanwhile.
                await until(lambda: list_calls() >= lists + 3, timeout=6 * 2.5)
                assert sim.events is not None
                with sim.events.lock:
                    attempts = list(sim.events.subscriptions)
                await asyncio.to_thread(receiver.wait_for, lambda e: any(
                    x["payload"]["scene_type"] == "PUSH_REFUSED" for x in e), WAIT)
                _, body = health(app, stale_after=3600)
                stored = [e.payload.get("scene_type")
                          for e, _ in app.store.recent_events(broker="wb")]
                return {"attempts": attempts, "state": push.status.state,
                        "health": body["connections"]["wb"]["push"],
                        "polls": tracker.poller.polls - polls, "push_up": push.up,
                        "slowed": tracker.poller.push_up, "stored": stored}

        found = asyncio.run(scenario())
    finally:
        sim.stop()
    secret = str(table["app_secret"])
    assert found["attempts"] == [([ACCOUNT], "signature is incorrect")]  # never retried
    assert found["state"] == "stopped" and found["health"]["state"] == "stopped"
    assert found["push_up"] is False and found["slowed"] is False
    assert found["polls"] >= 3
    refused = [e for e in receiver.events if e["payload"]["scene_type"] == "PUSH_REFUSED"]
    assert len(refused) == 1 and found["stored"].count("PUSH_REFUSED") == 1
    assert "refused the credentials" in refused[0]["payload"]["message"]
    errors = [r for r in caplog.records if r.name.startswith("poller")
              and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "push stream refused" in errors[0].getMessage(), errors
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert all(secret not in json.dumps(e) for e in receiver.events)
    assert all(secret.encode() not in f.read_bytes() for f in tmp_path.glob("poller.db*"))
