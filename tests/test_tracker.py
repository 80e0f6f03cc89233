"""One connection assembled: open orders queued per order at start, order actions settled by
the poller's answers, and the counters the status line and metrics read."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from poller.models import OrderStatus
from poller.orderbook import OrderBook
from poller.records import ActionRow
from poller.simulator.webull import WebullSim
from poller.tracker import Tracker
from tests.conftest import Receiver, daemon_config, running_app, until
from tests.scripted import ScriptedAdapter, StoreCommit, order


def tracker_for(adapter: ScriptedAdapter, commit: StoreCommit, book: OrderBook,
                states: list[tuple[int, str]] | None = None,
                polled_soon: list[int] | None = None) -> Tracker:
    async def record(action_id: int, state: str, attempt: bool) -> None:
        if states is not None:
            states.append((action_id, state))

    return Tracker(adapter, commit=commit, book=book, announce_existing=False, stale_after=3,
                   record_state=record,
                   poll_soon=lambda: polled_soon.append(1) if polled_soon is not None else None)


def test_start_queues_every_open_order_when_orders_are_polled_one_by_one(
        tmp_path: Path) -> None:
    adapter = ScriptedAdapter(per_order=True)
    adapter.orders = {"1": order("1"), "2": order("2")}
    known = {("cx", "A", "1"): order("1"), ("cx", "A", "2"): order("2"),
             ("cx", "A", "3"): order("3", OrderStatus.FILLED, filled=10)}
    commit = StoreCommit(tmp_path)

    async def run() -> tuple[int, int]:
        tracker = tracker_for(adapter, commit, OrderBook(known, {}, {"A"}))
        tracker.start()
        while tracker.order_polls < 2:
            await asyncio.sleep(0.01)
        await tracker.poll()
        await tracker.stop()
        return tracker.completed, tracker.open_orders

    completed, open_orders = asyncio.run(run())
    assert sorted(adapter.fetched[:2]) == ["1", "2"]  # the final order is never polled
    assert completed >= 3 and open_orders == 2


def test_an_action_is_settled_by_the_next_answer_that_shows_it(tmp_path: Path) -> None:
    """A list-polled connection: the executor sends, asks for an early list poll, and the
    poll's snapshot (committed) settles the outcome."""
    adapter = ScriptedAdapter()
    adapter.supports_cancel = True
    adapter.orders = {"1": order("1")}
    sent: list[str] = []

    async def cancel(known: object) -> None:
        sent.append("cancel")
        adapter.orders["1"] = order("1", OrderStatus.CANCELLED)

    adapter.cancel_order = cancel  # type: ignore[method-assign,assignment]
    commit = StoreCommit(tmp_path)
    states: list[tuple[int, str]] = []
    soon: list[int] = []
    row = ActionRow(7, "cx", "A", "1", "cancel", None, None, "queued", 0, "", "", "", "")

    async def run() -> object:
        tracker = tracker_for(adapter, commit, OrderBook({}, {}, set()), states, soon)
        await tracker.poll()  # the baseline: the order is known

        async def poll_when_asked() -> None:
            while not soon:
                await asyncio.sleep(0.01)
            await tracker.poll()

        poller = asyncio.create_task(poll_when_asked())
        outcome = await tracker.actions.perform(row, None, None)
        await poller
        return outcome

    outcome = asyncio.run(run())
    assert sent == ["cancel"] and states[-1] == (7, "sent")
    assert (outcome.succeeded, outcome.scene) == (True, "CANCEL_SUCCESS")  # type: ignore[attr-defined]
    assert commit.scenes() == ["CANCEL_SUCCESS"]


def test_an_action_on_a_finished_order_is_refused_before_sending(tmp_path: Path) -> None:
    adapter = ScriptedAdapter()
    book = OrderBook({("cx", "A", "1"): order("1", OrderStatus.FILLED, filled=10)}, {}, {"A"})
    row = ActionRow(1, "cx", "A", "1", "replace", "5", None, "queued", 0, "", "", "", "")

    async def run() -> object:
        tracker = tracker_for(adapter, StoreCommit(tmp_path), book)
        return await tracker.actions.perform(row, Decimal(5), None)

    outcome = asyncio.run(run())
    assert outcome.message == "order 1 is already FILLED"  # type: ignore[attr-defined]


def test_a_stream_error_its_sdk_does_not_retry_is_one_event_and_polling_goes_on(
        tmp_path: Path, receiver: Receiver) -> None:
    """push_url pointing at a gRPC server without the events service: UNIMPLEMENTED, which
    Webull's SDK does not retry. One PUSH_REFUSED event, the stream stopped (no reconnect
    loop), and the list keeps being polled."""
    import grpc  # the push extra, a test dependency

    bare = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    sim = WebullSim(seed=4)
    sim.start()
    try:
        table = sim.broker_config("wb") | {"interval": 2.5, "share": 1.0, "push": True,
                                           "push_url": f"127.0.0.1:{port}",
                                           "push_tls": False}
        config = daemon_config(tmp_path, {"wb": table}, receiver.url)

        async def scenario() -> tuple[str, int]:
            async with running_app(config) as app:
                tracker = app.trackers["wb"]
                push = tracker.push
                assert push is not None
                events = await asyncio.to_thread(
                    receiver.wait_for,
                    lambda e: any(x["payload"]["scene_type"] == "PUSH_REFUSED" for x in e))
                assert push.status.state == "stopped"
                seen = len(sim.server.log)
                await until(lambda: len(sim.server.log) >= seen + 3, timeout=15)  # the list goes on
                refused = [x for x in events if x["payload"]["scene_type"] == "PUSH_REFUSED"]
                return str(refused[0]["payload"].get("message", "")), len(refused)

        message, count = asyncio.run(scenario())
    finally:
        sim.stop()
        bare.stop(None)
    assert count == 1
    assert "does not retry" in message and "UNIMPLEMENTED" in message
    assert receiver.scenes().count("PUSH_REFUSED") == 1
