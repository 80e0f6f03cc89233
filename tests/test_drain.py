"""The per-order loop: urgent orders first, one bad answer never ends it, paused while the
connection is stopped, and stop finishes the poll in progress."""

from __future__ import annotations

import asyncio

from poller.coordinator import Coordinator
from poller.drain import OrderDrain
from poller.errors import BrokerAuthError
from poller.orderbook import Key
from poller.pollqueue import OrderQueue
from poller.ratelimit import PRIORITY, PRIORITY_ROUTINE, PRIORITY_URGENT
from tests.conftest import until


def keys(*ids: str) -> list[Key]:
    return [("cx", "A", i) for i in ids]


def test_urgent_orders_go_first_and_a_raising_poll_does_not_end_the_loop() -> None:
    async def run() -> list[tuple[str, int]]:
        queue: OrderQueue[Key] = OrderQueue()
        for key in keys("1", "2", "3"):
            queue.add(key)
        wake = asyncio.Event()
        seen: list[tuple[str, int]] = []
        done = asyncio.Event()

        async def poll_one(key: Key) -> None:
            seen.append((key[2], PRIORITY.get()))
            if key[2] == "2":
                raise RuntimeError("a bad answer")
            if len(seen) >= 4:
                done.set()

        queue.urgent(keys("3")[0], 0.0)
        drain = OrderDrain("cx", queue, wake, poll_one, Coordinator("cx"), stop_within=1.0)
        drain.start()
        await asyncio.wait_for(done.wait(), 5)
        await drain.stop()
        assert drain.completed >= 4 and not drain.running
        return seen

    seen = asyncio.run(run())
    assert seen[0] == ("3", PRIORITY_URGENT)
    assert {"1", "2"} <= {order for order, _ in seen[1:4]}
    assert all(priority == PRIORITY_ROUTINE for _, priority in seen[1:3])


def test_a_stopped_connection_polls_nothing_until_woken() -> None:
    async def run() -> int:
        queue: OrderQueue[Key] = OrderQueue()
        queue.add(keys("1")[0])
        wake = asyncio.Event()
        coordinator = Coordinator("cx")
        coordinator.failed(BrokerAuthError("refused"))
        polled: list[Key] = []

        async def poll_one(key: Key) -> None:
            polled.append(key)

        drain = OrderDrain("cx", queue, wake, poll_one, coordinator, stop_within=1.0)
        drain.start()
        for _ in range(20):
            await asyncio.sleep(0)  # let the loop run; it must idle, not spin or poll
        await drain.stop()
        return len(polled)

    assert asyncio.run(run()) == 0


def test_stop_waits_for_the_poll_in_progress_within_its_bound() -> None:
    async def run() -> tuple[bool, bool]:
        queue: OrderQueue[Key] = OrderQueue()
        queue.add(keys("1")[0])
        started, release = asyncio.Event(), asyncio.Event()
        finished: list[bool] = []

        async def poll_one(key: Key) -> None:
            started.set()
            await release.wait()
            finished.append(True)

        drain = OrderDrain("cx", queue, asyncio.Event(), poll_one, Coordinator("cx"),
                           stop_within=5.0)
        drain.start()
        await started.wait()
        stopping = asyncio.create_task(drain.stop())
        await asyncio.sleep(0)
        release.set()
        await stopping
        hung = OrderDrain("cx", queue, asyncio.Event(), lambda k: asyncio.Event().wait(),
                          Coordinator("cx"), stop_within=0.05)
        queue.add(keys("2")[0])
        hung.start()
        await hung.stop()  # cancelled after its bound instead of hanging shutdown
        return bool(finished), hung.running

    assert asyncio.run(run()) == (True, False)


def test_several_polls_are_in_flight_at_once_up_to_the_cap() -> None:
    """The rate is the budget's, not 1 / round trip: with slow answers the drain keeps up
    to ``in_flight`` polls waiting at once, never more."""
    async def run() -> tuple[int, int]:
        queue: OrderQueue[Key] = OrderQueue()
        for key in keys(*(str(n) for n in range(20))):
            queue.add(key)
        wake = asyncio.Event()
        in_flight = peak = done = 0
        release = asyncio.Event()
        all_done = asyncio.Event()

        async def poll_one(key: Key) -> None:
            nonlocal in_flight, peak, done
            in_flight += 1
            peak = max(peak, in_flight)
            if peak == 4:
                release.set()  # the cap is reached: answer them all
            await release.wait()
            in_flight -= 1
            done += 1
            if done >= 12:
                all_done.set()

        drain = OrderDrain("cx", queue, wake, poll_one, Coordinator("cx"), stop_within=5.0,
                           in_flight=4)
        drain.start()
        await asyncio.wait_for(all_done.wait(), 10)
        await drain.stop()
        return peak, done

    peak, done = asyncio.run(run())
    assert peak == 4 and done >= 12


def test_a_key_is_taken_when_the_budget_can_send_it() -> None:
    """With ``ready_in``, the drain takes no key while the budget would hold the request
    back, so the key is chosen when it can leave: an order that becomes urgent meanwhile is
    the one polled, without waiting for the round-robin's slot."""
    async def run() -> tuple[list[tuple[str, int]], list[bool]]:
        queue: OrderQueue[Key] = OrderQueue()
        for key in keys("1", "2"):
            queue.add(key)
        wake = asyncio.Event()
        asked: list[bool] = []
        polled: list[tuple[str, int]] = []

        def ready_in(urgent: bool) -> float:
            asked.append(urgent)
            return 0.0 if urgent else 3600.0  # the round-robin's slot is far off

        async def poll_one(key: Key) -> None:
            polled.append((key[2], PRIORITY.get()))

        drain = OrderDrain("cx", queue, wake, poll_one, Coordinator("cx"), stop_within=1.0,
                           in_flight=4, ready_in=ready_in)
        drain.start()
        await until(lambda: bool(asked))
        assert polled == []  # nothing taken while the budget holds it back
        queue.urgent(keys("2")[0], 0.0)
        wake.set()
        await until(lambda: bool(polled))
        await drain.stop()
        return polled, asked

    polled, asked = asyncio.run(run())
    assert polled == [("2", PRIORITY_URGENT)]
    assert asked[0] is False and True in asked
