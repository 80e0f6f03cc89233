"""The push runner: a stream's updates through the polls' diff and store, the list cadence
following the stream, reconnects, and a refused stream that falls back to polling.

The broker side is a queue-fed stream implementing :class:`poller.pushfeed.PushStream` (the
real streams are tested against official-protocol servers in ``tests/brokers``); the
pipeline is the real one: ConnectionPoller, OrderBook, a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import SecretStr

from poller.brokers import longportpush, shioajipush, webullpush
from poller.brokers.longportpush import LongPortTradePush, TradePushSettings
from poller.brokers.shioajipush import ShioajiEventStream
from poller.brokers.shioajipush import StreamSettings as ShioajiSettings
from poller.brokers.webullpush import EventsSettings, WebullEventStream
from poller.coordinator import Coordinator
from poller.errors import BrokerAuthError, BrokerError, BrokerUnavailable
from poller.health import AppCollector, health
from poller.models import OrderStatus
from poller.orderbook import OrderBook
from poller.polling import ConnectionPoller
from poller.pollqueue import OrderQueue
from poller.pushfeed import CONNECTED, PushedOrder, PushStream
from poller.pushrunner import (
    RECONNECT_CAP,
    RECONNECT_FIRST,
    PushRunner,
    ReconnectPolicy,
    policy_of,
)
from poller.simulator.webull import WebullSim
from tests.conftest import Receiver, daemon_config, running_app, until
from tests.scripted import T0, ScriptedAdapter, StoreCommit, clock_at, order

End = BrokerError | None


#: A queue item that sets the stream's ``reconnect_delay`` (a server's ``retry:``).
@dataclass(frozen=True)
class SetDelay:
    seconds: float


class QueueStream:
    """A stream fed by the test: updates, then what ends the connection."""

    def __init__(self, items: asyncio.Queue[PushedOrder | End | SetDelay]) -> None:
        self.items = items
        self.closed = False

    async def updates(self) -> AsyncIterator[PushedOrder]:
        yield CONNECTED
        while True:
            item = await self.items.get()
            if isinstance(item, SetDelay):
                self.reconnect_delay = item.seconds
                continue
            if isinstance(item, PushedOrder):
                yield item
                continue
            if item is not None:
                raise item
            return

    async def aclose(self) -> None:
        self.closed = True


class PushingAdapter(ScriptedAdapter):
    supports_push: ClassVar[bool] = True

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.items: asyncio.Queue[PushedOrder | End | SetDelay] = asyncio.Queue()
        self.opened = 0
        #: Attributes each stream gets (``reconnect_delay``, ``reconnect_cap``, ...).
        self.policy = policy or {}

    def open_push(self) -> PushStream:
        self.opened += 1
        stream = QueueStream(self.items)
        for name, value in self.policy.items():
            setattr(stream, name, value)
        return stream


class Rig:
    def __init__(self, tmp_path: Path, policy: dict[str, Any] | None = None,
                 **runner: Any) -> None:
        self.adapter = PushingAdapter(policy)
        self.commit = StoreCommit(tmp_path)
        self.polls_asked = 0
        self.refused: list[BrokerAuthError] = []
        self.poller = ConnectionPoller(
            self.adapter, OrderBook({}, {}, set()), Coordinator("cx"), OrderQueue(),
            commit=self.commit, wake=lambda: None, announce_existing=False, stale_after=3,
            clock=clock_at(T0))
        self.poller.poll_soon = self._poll_soon

        async def refused(err: BrokerAuthError) -> None:
            self.refused.append(err)

        self.runner = PushRunner(self.adapter, apply=self.poller.apply_push,
                                 on_change=self._changed, on_auth_failed=refused, **runner)

    def _poll_soon(self) -> None:
        self.polls_asked += 1

    def _changed(self, up: bool) -> None:
        self.poller.push_up = up
        if not up:
            self._poll_soon()


def fill(filled: int, status: OrderStatus = OrderStatus.PARTIAL_FILLED) -> PushedOrder:
    return PushedOrder(account_id="A", order_id="1", status=status,
                       filled_qty=Decimal(filled), kind="ORDER_FILLED")


def test_pushed_fills_are_announced_once_and_the_poll_agrees(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.adapter.orders["1"] = order("1")

    async def run() -> None:
        await rig.poller.poll()  # the baseline
        rig.poller.push_up = False
        await rig.poller.poll()
        rig.runner.start()
        await until(lambda: rig.runner.up)
        await rig.adapter.items.put(fill(4))
        await until(lambda: rig.commit.scenes() == ["FILLED"])
        await rig.adapter.items.put(fill(10, OrderStatus.FILLED))
        await until(lambda: rig.commit.scenes() == ["FILLED", "FINAL_FILLED"])
        # The poll sees what the stream said: nothing new (the same facts, the same ids).
        rig.adapter.orders["1"] = order("1", OrderStatus.FILLED, filled=10)
        rig.poller.push_up = False
        await rig.poller.poll()
        await rig.runner.stop()

    asyncio.run(run())
    assert rig.commit.scenes() == ["FILLED", "FINAL_FILLED"]
    events = [e for e, _ in rig.commit.store.recent_events()]
    assert all(e.payload.get("via") == "push" for e in events)
    assert rig.runner.status.events == 2 and rig.poller.pushed == 2


def test_list_calls_slow_while_the_stream_is_up_and_return_at_a_drop(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.adapter.orders["1"] = order("1")

    async def run() -> None:
        await rig.poller.poll()
        rig.runner.start()
        await until(lambda: rig.runner.up)
        before = rig.poller.polls
        for _ in range(5):
            await rig.poller.poll()  # the scheduler's ticks: within reconcile_interval
        assert rig.poller.polls == before
        await rig.adapter.items.put(BrokerUnavailable("stream reset"))
        await until(lambda: rig.runner.status.state == "down")
        assert not rig.poller.push_up and rig.polls_asked == 1  # catch up at once
        await rig.poller.poll()
        assert rig.poller.polls == before + 1
        await until(lambda: rig.runner.up, timeout=5)  # reconnected after its backoff
        await rig.runner.stop()

    asyncio.run(run())
    assert rig.adapter.opened == 2 and rig.runner.status.drops == 1
    assert rig.runner.status.last_error == "stream reset"


def test_an_update_that_does_not_fit_is_confirmed_by_a_poll(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.adapter.orders["1"] = order("1", OrderStatus.PARTIAL_FILLED, filled=4)

    async def run() -> None:
        await rig.poller.poll()
        await rig.poller.apply_push(fill(3))  # less than known: late or out of order
        await rig.poller.apply_push(PushedOrder(account_id="A", order_id="2",
                                                status=OrderStatus.SUBMITTED))  # unknown
        await rig.poller.apply_push(PushedOrder(account_id="A", order_id="",
                                                client_order_id="nobody-knows"))

    asyncio.run(run())
    assert rig.commit.scenes() == []
    queue = rig.poller.queue
    due = {queue.pop(time.monotonic() + 1), queue.pop(time.monotonic() + 1)}
    assert due == {("cx", "A", "1"), ("cx", "A", "2")}  # polled next, before the rest
    assert rig.polls_asked == 1  # no key at all: the lists settle it


def test_an_order_named_by_its_client_id_only_is_found(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.adapter.orders["1"] = order("1", client_order_id="mine-1")

    async def run() -> None:
        await rig.poller.poll()
        await rig.poller.apply_push(PushedOrder(
            account_id="A", order_id="", client_order_id="mine-1",
            status=OrderStatus.CANCELLED))

    asyncio.run(run())
    assert rig.commit.scenes() == ["CANCEL_SUCCESS"]


def test_a_refused_stream_is_one_error_and_polling_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def run() -> None:
        rig.runner.start()
        await until(lambda: rig.runner.up)
        await rig.adapter.items.put(BrokerAuthError("signature refused"))
        await until(lambda: rig.runner.status.state == "stopped")
        assert not rig.poller.push_up and len(rig.refused) == 1
        assert rig.adapter.opened == 1  # no reconnect loop against a refused key
        rig.runner.retry_now()  # a reload
        await until(lambda: rig.adapter.opened == 2 and rig.runner.up)
        await rig.runner.stop()

    asyncio.run(run())
    assert rig.runner.status.state == "off"


def test_a_reload_while_the_refusal_is_being_recorded_is_not_lost(tmp_path: Path) -> None:
    """``retry_now`` (a reload) arrives while the refusal's event is still being committed
    (a slow disk): the stream tries again once that is done, instead of waiting for the
    next reload."""
    rig = Rig(tmp_path)
    committing = asyncio.Event()
    release = asyncio.Event()

    async def slow_commit(err: BrokerAuthError) -> None:
        committing.set()
        await release.wait()

    rig.runner._on_auth_failed = slow_commit

    async def run() -> None:
        rig.runner.start()
        await until(lambda: rig.runner.up)
        await rig.adapter.items.put(BrokerAuthError("signature refused"))
        await committing.wait()
        rig.runner.retry_now()  # the reload, during the commit
        release.set()
        await until(lambda: rig.adapter.opened == 2 and rig.runner.up)
        await rig.runner.stop()

    asyncio.run(run())


# --- reconnect numbers: the stream's own (its SDK's), else the runner's ------------------


class Waits:
    """The runner's wait, recorded: returns at once, so each drop reconnects straight away
    and the test sees every delay the runner chose (no timing involved)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, wake: asyncio.Event, seconds: float) -> None:
        self.delays.append(seconds)


async def drop(rig: Rig, times: int, error: BrokerError | None = None) -> None:
    """Let the stream come up and drop ``times`` times (each reconnect comes up again)."""
    for n in range(1, times + 1):
        def connected(n: int = n) -> bool:
            return rig.runner.up and rig.adapter.opened == n

        def dropped(n: int = n) -> bool:
            return rig.runner.status.drops == n

        await until(connected)
        await rig.adapter.items.put(error or BrokerUnavailable("reset", code="UNAVAILABLE"))
        await until(dropped)


def test_a_stream_s_own_first_delay_and_cap_are_used(tmp_path: Path) -> None:
    waits = Waits()
    # The monotonic clock stands still: no connection counts as stable, so no reset.
    rig = Rig(tmp_path, {"reconnect_delay": 5.0, "reconnect_cap": 15.0}, wait=waits,
              monotonic=lambda: 0.0)

    async def run() -> None:
        rig.runner.start()
        await drop(rig, 4)
        await until(lambda: rig.adapter.opened == 5 and rig.runner.up)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [5.0, 10.0, 15.0, 15.0]
    assert rig.runner.next_delay == 15.0


def test_a_stream_that_says_nothing_gets_the_runner_s_backoff(tmp_path: Path) -> None:
    waits = Waits()
    rig = Rig(tmp_path, wait=waits, monotonic=lambda: 0.0)

    async def run() -> None:
        rig.runner.start()
        await drop(rig, 3)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [1.0, 2.0, 4.0]


def test_a_stable_connection_starts_the_backoff_again(tmp_path: Path) -> None:
    waits = Waits()
    now = [0.0]
    rig = Rig(tmp_path, {"reconnect_delay": 2.0}, wait=waits, monotonic=lambda: now[0])

    async def run() -> None:
        rig.runner.start()
        await drop(rig, 2)
        await until(lambda: rig.adapter.opened == 3 and rig.runner.up)
        now[0] += 31.0  # this connection stayed up past STABLE_AFTER
        await rig.adapter.items.put(BrokerUnavailable("reset"))
        await until(lambda: rig.runner.status.drops == 3)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [2.0, 4.0, 2.0]


def test_a_delay_the_server_set_during_the_connection_is_the_one_used(
        tmp_path: Path) -> None:
    """As a Shioaji server's ``retry:`` field: the runner reads the stream's delay after the
    connection ended, not when it opened it."""
    waits = Waits()
    rig = Rig(tmp_path, {"reconnect_delay": 3.0}, wait=waits, monotonic=lambda: 0.0)

    async def run() -> None:
        rig.runner.start()
        await until(lambda: rig.runner.up)
        await rig.adapter.items.put(SetDelay(7.5))
        await rig.adapter.items.put(BrokerUnavailable("reset"))
        await until(lambda: rig.runner.status.drops == 1)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [7.5]


def test_a_code_the_stream_s_sdk_does_not_retry_stops_it_until_a_reload(
        tmp_path: Path) -> None:
    waits = Waits()
    refused: list[BrokerError] = []

    async def on_refused(err: BrokerError) -> None:
        refused.append(err)

    rig = Rig(tmp_path, {"retryable": WebullEventStream.retryable}, wait=waits,
              on_refused=on_refused)

    async def run() -> None:
        rig.runner.start()
        await drop(rig, 1, BrokerUnavailable("gRPC INTERNAL", code="INTERNAL"))  # retried
        await until(lambda: rig.adapter.opened == 2 and rig.runner.up)
        await rig.adapter.items.put(BrokerUnavailable("gRPC UNIMPLEMENTED",
                                                      code="UNIMPLEMENTED"))
        await until(lambda: rig.runner.status.state == "stopped")
        assert not rig.poller.push_up and rig.polls_asked == 2  # one catch-up a drop
        assert rig.adapter.opened == 2 and [e.code for e in refused] == ["UNIMPLEMENTED"]
        rig.runner.retry_now()  # a reload
        await until(lambda: rig.adapter.opened == 3 and rig.runner.up)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [1.0]  # no wait was chosen after the refusal
    assert rig.refused == []  # not a credentials refusal: no PUSH_REFUSED


def test_a_failing_retryable_check_means_retry(tmp_path: Path) -> None:
    def broken(err: BrokerError) -> bool:
        raise RuntimeError("bug in a stream")

    waits = Waits()
    rig = Rig(tmp_path, {"retryable": broken}, wait=waits, monotonic=lambda: 0.0)

    async def run() -> None:
        rig.runner.start()
        await drop(rig, 1)
        await until(lambda: rig.adapter.opened == 2 and rig.runner.up)
        await rig.runner.stop()

    asyncio.run(run())
    assert waits.delays == [1.0]


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "5", True, None])
def test_a_delay_that_is_not_a_positive_number_of_seconds_is_ignored(value: object) -> None:
    class Odd:
        reconnect_delay = value
        reconnect_cap = value

    policy = policy_of(Odd())
    assert (policy.first, policy.cap) == (RECONNECT_FIRST, RECONNECT_CAP)


def test_a_cap_below_the_first_delay_is_a_fixed_delay() -> None:
    policy = ReconnectPolicy(first=5.0, cap=2.0)
    assert [policy.delay(n) for n in (1, 2, 10, 10_000)] == [5.0, 5.0, 5.0, 5.0]


def test_the_real_streams_state_their_sdk_s_numbers() -> None:
    """What each broker stream hands the runner: its SDK's first delay, and for Webull the
    SDK's retryable gRPC codes (poller's own control codes are retried too)."""
    webull = WebullEventStream(EventsSettings(
        connection="wb", target="127.0.0.1:1", tls=False, app_key=SecretStr("k"),
        app_secret=SecretStr("s"), accounts=("A",), algorithm="HMAC-SHA256",
        signature_version="1.0", status_table={}, timestamp=lambda: "", nonce=lambda: ""))
    policy = policy_of(webull)
    assert (policy.first, policy.cap) == (webullpush.RECONNECT_DELAY, RECONNECT_CAP) == (
        5.0, 60.0)
    for code in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "NumOfConnExceed",
                 "SubscribeExpired", ""):
        assert policy.retryable(BrokerUnavailable("x", code=code)), code
    for code in ("UNIMPLEMENTED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "NOT_FOUND",
                 "CANCELLED", "DEADLINE_EXCEEDED"):
        assert not policy.retryable(BrokerUnavailable("x", code=code)), code

    async def token() -> str:
        return ""

    longport = LongPortTradePush(TradePushSettings(
        connection="lp", url="ws://127.0.0.1:1/v2", account_id="A", region="hk", token=token,
        now=lambda: T0))
    assert policy_of(longport).first == longportpush.RECONNECT_DELAY == 2.0
    assert policy_of(longport).retryable(BrokerUnavailable("x", code="connect"))

    def no_quantity(status: OrderStatus | None, order: Decimal | None,
                    cancelled: Decimal | None, filled: Decimal) -> Decimal:
        return filled

    async def shioaji_policy() -> tuple[float, float]:
        async with httpx.AsyncClient() as client:
            stream = ShioajiEventStream(ShioajiSettings(
                connection="sj", url="http://127.0.0.1:1/", accounts=(), status_table={},
                quantity=no_quantity), client)
            first = policy_of(stream).first
            stream.retry_delay = 9.0  # what a server's ``retry: 9000`` sets
            return first, policy_of(stream).first

    assert asyncio.run(shioaji_policy()) == (shioajipush.RECONNECT_DELAY, 9.0) == (3.0, 9.0)


def test_the_webull_channel_is_built_with_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real channel maker, called with what the stream passes (recorded on the way)."""
    import grpc.aio

    seen: list[dict[str, Any]] = []
    for name in ("insecure_channel", "secure_channel"):
        real = getattr(grpc.aio, name)

        def record(*args: Any, real: Any = real, **kwargs: Any) -> Any:
            seen.append(dict(kwargs.get("options") or ()))
            return real(*args, **kwargs)

        monkeypatch.setattr(grpc.aio, name, record)

    async def channels() -> None:
        for tls in (False, True):
            stream = WebullEventStream(EventsSettings(
                connection="wb", target="127.0.0.1:1", tls=tls, app_key=SecretStr("k"),
                app_secret=SecretStr("s"), accounts=("A",), algorithm="HMAC-SHA256",
                signature_version="1.0", status_table={}, timestamp=lambda: "",
                nonce=lambda: ""))
            await stream._open_channel().close()

    asyncio.run(channels())
    expected = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_timeout_ms": 20_000,
                "grpc.keepalive_permit_without_calls": 0}
    assert seen == [expected, expected]


# --- end to end: the Webull simulator's trade events, a real App ----------------------


def stream_health(app: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """The ``wb`` stream as ``/healthz`` shows it, and its ``/metrics`` samples."""
    ok, body = health(app, stale_after=3600)
    samples = {sample.name: sample.value for family in AppCollector(app).collect()
               for sample in family.samples if sample.name.startswith("poller_push_")
               and sample.labels.get("connection") == "wb"}
    return dict(body["connections"]["wb"]["push"]), samples


def test_a_stream_dropped_mid_order_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, receiver: Receiver) -> None:
    """Fills pushed, then the stream drops while the order keeps filling: polling catches
    up at full cadence, the stream comes back, and every transition arrives exactly once."""
    sim = WebullSim(seed=3, push_events=True)
    sim.start()
    try:
        account = sim.accounts()[0]
        table = sim.broker_config("wb") | {"interval": 2.5, "share": 1.0,
                                           "reconcile_interval": 2.5}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)

        async def scenario() -> dict[str, Any]:
            async with running_app(config) as app:
                push = app.trackers["wb"].push
                assert push is not None
                tracker = app.trackers["wb"]
                await until(lambda: push.up and bool(tracker.known_accounts), timeout=15)
                order_ = sim.book.place(account, "AAPL", "BUY", 10, "190")
                sim.book.accept(order_.order_id)
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                sim.book.fill(order_.order_id, 2)  # pushed
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 2)
                readings = [stream_health(app)]
                assert sim.events is not None
                sim.events.drop()
                await until(lambda: push.status.drops == 1, timeout=10)
                readings.append(stream_health(app))
                sim.book.fill(order_.order_id, 3)  # while the stream is down: polled
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 3)
                await until(lambda: push.up, timeout=15)  # reconnected
                sim.book.fill(order_.order_id)  # the rest, pushed again
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 4)
                return {"order": order_.order_id, "drops": push.status.drops,
                        "readings": readings}

        found = asyncio.run(scenario())
    finally:
        sim.stop()
    scenes = receiver.scenes(found["order"])
    assert scenes == ["PLACED", "FILLED", "FILLED", "FINAL_FILLED"], scenes
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 4
    via = [e["payload"].get("via") for e in receiver.events]
    assert via[1] == "push" and via[3] == "push" and via[2] is None  # the drop: a poll
    # What /healthz and /metrics served while the stream was up, and after the drop.
    (up_json, up_metrics), (down_json, down_metrics) = found["readings"]
    assert up_json["state"] == "up" and up_json["updates"] >= 1 and up_json["drops"] == 0
    assert up_metrics["poller_push_up"] == 1.0 and up_metrics["poller_push_updates_total"] >= 1
    assert up_metrics["poller_push_drops_total"] == 0
    assert down_json["drops"] == 1 and down_metrics["poller_push_drops_total"] == 1



def test_a_refused_stream_is_a_health_problem_until_a_reload_brings_it_back(
        tmp_path: Path, receiver: Receiver) -> None:
    """The stream's credentials are refused while the REST calls work: polling goes on,
    ``/healthz`` is degraded with one line that names the stream and the fix, and once the
    key is right a reload (``retry_now``) brings the stream up and health back to ok."""
    sim = WebullSim(seed=3, push_events=True)
    assert sim.events is not None
    right = sim.events.app_secret
    sim.events.app_secret = "not-the-key-poller-has"  # only the stream refuses it
    sim.start()
    try:
        table = sim.broker_config("wb") | {"interval": 2.5, "share": 1.0}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)

        async def scenario() -> list[tuple[bool, dict[str, Any]]]:
            async with running_app(config) as app:
                push = app.trackers["wb"].push
                assert push is not None
                await until(lambda: push.status.state == "stopped", timeout=15)
                readings = [health(app, stale_after=3600)]
                assert sim.events is not None
                sim.events.app_secret = right  # the key is fixed
                push.retry_now()  # what a reload does
                await until(lambda: push.up, timeout=15)
                readings.append(health(app, stale_after=3600))
                return readings

        (ok_down, down), (ok_up, up) = asyncio.run(scenario())
    finally:
        sim.stop()
    assert not ok_down and down["status"] == "degraded"
    assert len(down["problems"]) == 1, down["problems"]
    line = down["problems"][0]
    assert line.startswith("connection wb: push stream stopped (") and \
        "systemctl reload poller" in line
    assert down["connections"]["wb"]["push"]["state"] == "stopped"
    assert right not in str(down) and right not in str(up)  # poller's secret is not shown
    assert ok_up and up["status"] == "ok" and up["problems"] == []
    assert up["connections"]["wb"]["push"]["state"] == "up"
