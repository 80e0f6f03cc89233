"""LongPort trade push over its binary WebSocket protocol: the official SDK (``longbridge``)
against the simulator's push server, poller's stream against the same server, the stream's
errors and lifecycle, and no secret in any log line or error (real WebSockets, loopback)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import queue
import sys
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest

import poller.brokers
from poller.brokers import longportpush
from poller.brokers.longport import LongPortAdapter, LongPortConfig, parse_order
from poller.brokers.longportproto import control_pb2
from poller.brokers.longportpush import (
    LongPortTradePush,
    TradePushSettings,
    parse_order_changed,
    trade_ws_url,
)
from poller.errors import BrokerAuthError, BrokerError, BrokerUnavailable
from poller.models import OrderStatus
from poller.pushfeed import CONNECTED, PushedOrder
from poller.ratelimit import LimitGroup, RateBudget
from poller.simulator.longport import LongPortSim
from poller.simulator.longportpush import LongPortPushServer, pack_push
from tests.brokers.consumer import Consumer

T = TypeVar("T")
WAIT = 10.0
CANARY_SECRET = "lp-CANARY-secret-5e1f"
CANARY_TOKEN = "lp-CANARY-token-77aa"


def run(work: Callable[[], Awaitable[T]], *adapters: LongPortAdapter) -> T:
    """Run ``work`` in a new loop, then close the adapters' HTTP clients in it."""
    async def main() -> T:
        try:
            async with asyncio.timeout(30):
                return await work()
        finally:
            for adapter in adapters:
                await adapter.client.aclose()
    return asyncio.run(main())


@pytest.fixture
def sim() -> Iterator[LongPortSim]:
    simulator = LongPortSim(seed=5, push_events=True, app_secret=CANARY_SECRET,
                            access_token=CANARY_TOKEN).start()
    yield simulator
    simulator.stop()


def adapter_for(config: dict[str, Any]) -> LongPortAdapter:
    cfg = LongPortConfig.model_validate(config)
    budget = RateBudget([LimitGroup("trade", LongPortAdapter.limits["trade"], share=1.0)])
    return LongPortAdapter("lp", cfg, httpx.AsyncClient(base_url=cfg.base_url), budget)


async def subscribed(server: LongPortPushServer, total: int = 1) -> None:
    """Wait until the server has accepted ``total`` subscriptions since it started."""
    assert await asyncio.to_thread(server.wait_subscriptions, total, WAIT)


# -- the official SDK as oracle ------------------------------------------------------------


def _simulator_process(out: Any, commands: Any) -> None:
    """A push-enabled simulator in its own process (the SDK holds the GIL while it waits)."""
    simulator = LongPortSim(seed=11, push_events=True).start()
    try:
        config = simulator.broker_config("lp")
        order = simulator.book.place(config["account_id"], "AAPL.US", "BUY", 10, "190.5")
        simulator.book.accept(order.order_id)
        out.put((config, order.order_id))
        while (command := commands.get(timeout=60)) != "stop":
            if command == "fill":
                simulator.book.fill(order.order_id, 4, "190.4")
            elif command == "report":
                push = simulator.push
                assert push is not None
                out.put((push.handshakes, push.requests))
    finally:
        simulator.stop()


def test_the_official_sdk_subscribes_and_receives_a_fill_from_the_simulator() -> None:
    from longbridge.openapi import Config, TopicType, TradeContext
    from longbridge.openapi import OrderStatus as SdkStatus

    context = multiprocessing.get_context("spawn")
    out, commands = context.Queue(), context.Queue()
    process = context.Process(target=_simulator_process, args=(out, commands), daemon=True)
    process.start()
    try:
        config, order_id = out.get(timeout=60)
        sdk = TradeContext(Config.from_apikey(
            config["app_key"], config["app_secret"], config["access_token"],
            http_url=config["base_url"], trade_ws_url=config["push_url"],
            quote_ws_url="ws://127.0.0.1:9"))
        got: queue.Queue[Any] = queue.Queue()
        sdk.set_on_order_changed(got.put)
        sdk.subscribe([TopicType.Private])  # returns once the SubResponse came
        commands.put("fill")
        change = got.get(timeout=WAIT)
        assert (change.order_id, change.symbol, change.account_no) == (
            order_id, "AAPL.US", config["account_id"])
        assert change.status == SdkStatus.PartialFilled
        assert (change.executed_quantity, change.executed_price) == (
            Decimal(4), Decimal("190.400"))
        assert (change.submitted_quantity, change.last_share) == (Decimal(10), Decimal(4))
        commands.put("report")
        handshakes, requests = out.get(timeout=WAIT)
    finally:
        commands.put("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
    path, headers = handshakes[0]
    # What poller sends, the SDK sent: the protocol query, the region header, auth then sub.
    assert path.startswith("/v2?") and "version=1" in path and "codec=1" in path \
        and "platform=9" in path
    assert headers["x-dc-region"] == "ap" and headers["accept-language"] == "en"
    assert [command for command, *_ in requests] == [2, 16]


# -- poller's stream against the simulator ---------------------------------------------------


def test_poller_receives_the_same_push_and_it_agrees_with_a_poll(sim: LongPortSim) -> None:
    config = sim.broker_config("lp")
    adapter = adapter_for(config)
    assert adapter.push_available() is None
    order = sim.book.place(config["account_id"], "AAPL.US", "BUY", 10, "190.5")

    async def work() -> tuple[list[PushedOrder], list[PushedOrder]]:
        consumer = Consumer(adapter.open_push())
        assert sim.push is not None
        await subscribed(sim.push)
        sim.book.accept(order.order_id)
        sim.book.fill(order.order_id, 4, "190.4")
        got = [await consumer.next(), await consumer.next()]
        await consumer.stream.aclose()
        assert await consumer.finished() is None
        return consumer.markers, got

    markers, (accepted, filled) = run(work, adapter)
    assert markers == [CONNECTED]
    assert (accepted.status, accepted.broker_status) == (OrderStatus.SUBMITTED, "NewStatus")
    assert filled.order_id == order.order_id and filled.account_id == config["account_id"]
    assert (filled.status, filled.filled_qty, filled.avg_fill_price, filled.qty) == (
        OrderStatus.PARTIAL_FILLED, Decimal(4), Decimal("190.400"), Decimal(10))
    assert filled.client_order_id == order.client_order_id and filled.side == "BUY"
    assert filled.extra["last_share"] == "4" and filled.fill is None
    polled = parse_order(sim.render(order), broker="lp", account_id=config["account_id"],
                         now=adapter.now())
    assert (polled.status, polled.filled_qty, polled.avg_fill_price, polled.updated_at) == (
        filled.status, filled.filled_qty, filled.avg_fill_price, filled.event_time)
    # The one-time password came from the signed REST call, through the trade budget.
    assert [r.path for r in sim.server.requests()] == ["/v1/socket/token"]
    assert sim.refusals == {}


def test_parse_order_changed_leaves_unsettled_statuses_to_a_poll() -> None:
    base = {"order_id": "7012", "status": "ExpiredStatus", "submitted_quantity": "5",
            "executed_quantity": "0", "submitted_price": "10", "symbol": "AAPL.US",
            "side": "Sell", "updated_at": "1700000000", "expire_date": "2099-01-01"}
    from datetime import UTC, datetime
    now = datetime(2024, 1, 1, tzinfo=UTC)
    expired = parse_order_changed(base, account_id="a", now=now)
    assert expired.status is None and expired.broker_status == "ExpiredStatus"
    unknown = parse_order_changed({**base, "status": "BrandNewStatus"}, account_id="a", now=now)
    assert unknown.status is None and unknown.broker_status == "BrandNewStatus"
    with pytest.raises(KeyError):
        parse_order_changed({"status": "NewStatus"}, account_id="a", now=now)


def test_unreadable_notifications_are_skipped_once_each(
        sim: LongPortSim, caplog: pytest.LogCaptureFixture) -> None:
    adapter = adapter_for(sim.broker_config("lp"))
    order = sim.book.place(sim.account_no, "700.HK", "SELL", 100, "320.2")
    push = sim.push
    assert push is not None

    async def work() -> tuple[PushedOrder, dict[str, int]]:
        stream = adapter.open_push()
        consumer = Consumer(stream)
        await subscribed(push)
        push.push_raw(pack_push(18, b"\xff\xff not protobuf"))
        push.push_raw(b"\x09 not a packet")
        push.push("order_changed_lb", {"status": "NewStatus"})  # no order_id
        push.push("gridtrading_order", {"order_id": "1"})  # another event: ignored
        sim.book.accept(order.order_id)
        update = await consumer.next()
        await stream.aclose()
        await consumer.finished()
        return update, dict(stream.seen)

    with caplog.at_level(logging.WARNING, logger="poller.brokers.longportpush"):
        update, seen = run(work, adapter)
    assert update.order_id == order.order_id
    assert seen["unreadable"] == 3 and seen["order"] == 1
    skipped = [r for r in caplog.records if "skipped an unreadable" in r.getMessage()]
    assert len(skipped) == 3 and all(r.exc_info is None for r in skipped)


# -- errors and lifecycle --------------------------------------------------------------------


def test_a_wrong_token_is_one_auth_error_and_no_secret_shows(
        sim: LongPortSim, caplog: pytest.LogCaptureFixture) -> None:
    adapter = adapter_for(sim.broker_config("lp"))
    stream = adapter.open_push()
    wrong = "otp-CANARY-not-issued"
    settings = TradePushSettings(**{**stream.settings.__dict__,
                                    "token": lambda: _value(wrong)})

    async def work() -> BrokerError | None:
        return await Consumer(LongPortTradePush(settings)).finished()

    with caplog.at_level(logging.DEBUG):
        error = run(work, adapter)
    assert isinstance(error, BrokerAuthError) and "auth refused" in str(error)
    assert sim.push is not None and sim.push.refused_auth == 1
    text = str(error) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (wrong, CANARY_SECRET, CANARY_TOKEN):
        assert secret not in text


async def _value(text: str) -> str:
    return text


def test_refused_rest_credentials_are_an_auth_error(sim: LongPortSim) -> None:
    adapter = adapter_for({**sim.broker_config("lp"), "access_token": "lp-CANARY-wrong-token"})

    async def work() -> BrokerError | None:
        return await Consumer(adapter.open_push()).finished()

    error = run(work, adapter)
    assert isinstance(error, BrokerAuthError)
    assert "CANARY" not in str(error)


def test_drop_is_unavailable_and_the_next_call_reconnects_without_leaking_tokens(
        sim: LongPortSim, caplog: pytest.LogCaptureFixture) -> None:
    adapter = adapter_for(sim.broker_config("lp"))
    issued: list[str] = []
    fetch = adapter.socket_token

    async def recording() -> str:
        issued.append(await fetch())
        return issued[-1]

    push = sim.push
    assert push is not None

    async def work() -> tuple[BrokerError | None, PushedOrder]:
        stream = adapter.open_push()
        stream = LongPortTradePush(TradePushSettings(**{**stream.settings.__dict__,
                                                        "token": recording}))
        first = Consumer(stream)
        await subscribed(push)
        push.drop()
        error = await first.finished()
        second = Consumer(stream)
        await subscribed(push, 2)
        order = sim.book.place(sim.account_no, "TSLA.US", "BUY", 1, "250")
        update = await second.next()
        assert update.order_id == order.order_id
        await stream.aclose()
        assert await second.finished() is None
        return error, update

    with caplog.at_level(logging.DEBUG):
        error, update = run(work, adapter)
    assert isinstance(error, BrokerUnavailable) and error.code == "1011"
    assert update.status is OrderStatus.PENDING
    assert len(issued) == 2 and issued[0] != issued[1]
    text = "\n".join(r.getMessage() for r in caplog.records) + str(error)
    for secret in (*issued, CANARY_SECRET, CANARY_TOKEN):
        assert secret not in text


def test_aclose_ends_a_waiting_stream(sim: LongPortSim) -> None:
    adapter = adapter_for(sim.broker_config("lp"))

    async def work() -> tuple[BrokerError | None, list[PushedOrder]]:
        stream = adapter.open_push()
        consumer = Consumer(stream)
        assert sim.push is not None
        await subscribed(sim.push)
        await stream.aclose()
        error = await consumer.finished()
        after = [u async for u in stream.updates()]  # closed: no new connection
        return error, after

    error, after = run(work, adapter)
    assert error is None and after == []


def test_a_close_push_for_auth_is_an_auth_error(sim: LongPortSim) -> None:
    adapter = adapter_for(sim.broker_config("lp"))
    push = sim.push
    assert push is not None
    close = control_pb2.Close(code=control_pb2.Close.AuthError, reason="kicked")

    async def work() -> BrokerError | None:
        consumer = Consumer(adapter.open_push())
        await subscribed(push)
        push.push_raw(pack_push(0, close.SerializeToString()))
        return await consumer.finished()

    error = run(work, adapter)
    assert isinstance(error, BrokerAuthError) and error.code == "AuthError"


def test_nothing_listening_is_unavailable(sim: LongPortSim) -> None:
    adapter = adapter_for({**sim.broker_config("lp"), "push_url": "ws://127.0.0.1:9/v2"})

    async def work() -> BrokerError | None:
        return await Consumer(adapter.open_push()).finished()

    error = run(work, adapter)
    assert isinstance(error, BrokerUnavailable) and error.code == "connect"


def test_a_server_without_heartbeats_is_given_up(sim: LongPortSim) -> None:
    silent = LongPortPushServer(accept_token=sim.take_socket_token, ping_interval=None).start()
    try:
        adapter = adapter_for({**sim.broker_config("lp"), "push_url": silent.url})
        stream = adapter.open_push()
        quick = LongPortTradePush(TradePushSettings(**{**stream.settings.__dict__,
                                                       "heartbeat_timeout": 0.5}))

        async def work() -> tuple[list[PushedOrder], BrokerError | None]:
            consumer = Consumer(quick)
            return consumer.markers, await consumer.finished()

        markers, error = run(work, adapter)
    finally:
        silent.stop()
    assert markers == [CONNECTED]
    assert isinstance(error, BrokerUnavailable) and error.code == "heartbeat"


# -- configuration ----------------------------------------------------------------------------


BASE = {"kind": "longport", "app_key": "k", "app_secret": "s", "access_token": "t"}


@pytest.mark.parametrize(("push_url", "base_url", "tls", "url"), [
    ("", "https://openapi.longbridge.com", True, "wss://openapi-trade.longbridge.com/v2"),
    ("", "https://openapi.longbridge.cn", True, "wss://openapi-trade.longbridge.cn/v2"),
    ("", "https://openapi.longportapp.com", True, "wss://openapi-trade.longportapp.com/v2"),
    ("", "http://127.0.0.1:8080", True, longportpush.DEFAULT_TRADE_WS_URL),
    ("127.0.0.1:9000", "", False, "ws://127.0.0.1:9000/v2"),
    ("wss://push.example/v3", "", True, "wss://push.example/v3"),
])
def test_trade_ws_url(push_url: str, base_url: str, tls: bool, url: str) -> None:
    assert trade_ws_url(push_url, base_url or "http://127.0.0.1", tls=tls) == url


def test_push_problem() -> None:
    assert LongPortAdapter.supports_push
    assert adapter_for(BASE).push_available() is None
    assert adapter_for({**BASE, "push": False}).push_available() == "push = false"
    refused = adapter_for({**BASE, "push_tls": False}).push_available()
    assert refused is not None and "openapi-trade.longportapp.com" in refused
    assert adapter_for({**BASE, "push_tls": False, "push_url": "ws://127.0.0.1:5/v2"}
                       ).push_available() is None


def test_push_problem_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "websockets.asyncio.client", None)
    monkeypatch.delitem(sys.modules, "poller.brokers.longportpush")
    monkeypatch.delattr(poller.brokers, "longportpush")
    reason = adapter_for(BASE).push_available()
    assert reason == ("the push extra is missing (websockets.asyncio.client cannot be "
                      "imported): pip install '.[push]'")


def test_the_sdks_reconnect_numbers() -> None:
    # rust/src/trade/core.rs RECONNECT_DELAY, rust/crates/wsclient/src/client.rs timeouts.
    assert (longportpush.RECONNECT_DELAY, longportpush.MAX_RETRIES,
            longportpush.HEARTBEAT_TIMEOUT, longportpush.CONNECT_TIMEOUT) == (
        2.0, None, 120.0, 5.0)
    assert json.loads(json.dumps(longportpush.PROTOCOL_QUERY)) == {
        "version": "1", "codec": "1", "platform": "9"}
