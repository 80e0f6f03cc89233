"""The push runner: a stream's updates through the polls' diff and store, the list cadence
following the stream, reconnects, and a refused stream that falls back to polling.

The broker side is a queue-fed stream implementing :class:`poller.pushfeed.PushStream` (the
real streams are tested against official-protocol servers in ``tests/brokers``); the
pipeline is the real one: ConnectionPoller, OrderBook, a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from poller.coordinator import Coordinator
from poller.errors import BrokerAuthError, BrokerError, BrokerUnavailable
from poller.models import OrderStatus
from poller.orderbook import OrderBook
from poller.polling import ConnectionPoller
from poller.pollqueue import OrderQueue
from poller.pushfeed import CONNECTED, PushedOrder, PushStream
from poller.pushrunner import PushRunner
from poller.simulator.webull import WebullSim
from tests.conftest import Receiver, daemon_config, running_app
from tests.scripted import T0, ScriptedAdapter, StoreCommit, clock_at, order

End = BrokerError | None


class QueueStream:
    """A stream fed by the test: updates, then what ends the connection."""

    def __init__(self, items: asyncio.Queue[PushedOrder | End]) -> None:
        self.items = items
        self.closed = False

    async def updates(self) -> AsyncIterator[PushedOrder]:
        yield CONNECTED
        while True:
            item = await self.items.get()
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

    def __init__(self) -> None:
        super().__init__()
        self.items: asyncio.Queue[PushedOrder | End] = asyncio.Queue()
        self.opened = 0

    def open_push(self) -> PushStream:
        self.opened += 1
        return QueueStream(self.items)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.adapter = PushingAdapter()
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
                                 on_change=self._changed, on_auth_failed=refused)

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


# --- end to end: the Webull simulator's trade events, a real App ----------------------


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
                assert sim.events is not None
                sim.events.drop()
                await until(lambda: push.status.drops == 1, timeout=10)
                sim.book.fill(order_.order_id, 3)  # while the stream is down: polled
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 3)
                await until(lambda: push.up, timeout=15)  # reconnected
                sim.book.fill(order_.order_id)  # the rest, pushed again
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 4)
                return {"order": order_.order_id, "drops": push.status.drops}

        found = asyncio.run(scenario())
    finally:
        sim.stop()
    scenes = receiver.scenes(found["order"])
    assert scenes == ["PLACED", "FILLED", "FILLED", "FINAL_FILLED"], scenes
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 4
    via = [e["payload"].get("via") for e in receiver.events]
    assert via[1] == "push" and via[3] == "push" and via[2] is None  # the drop: a poll
