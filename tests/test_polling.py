"""One connection's polls: baseline, diff into one batch, probes, stale and retired orders,
and memory that changes only after the commit (a scripted adapter, a real SQLite store)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from poller.adapter import ListResult, ListScope
from poller.coordinator import Coordinator
from poller.errors import BrokerAuthError, BrokerUnavailable
from poller.models import OrderStatus
from poller.orderbook import OrderBook
from poller.polling import COMMIT_BACKOFF, ConnectionPoller, recheck_after
from poller.pollqueue import OrderQueue
from tests.scripted import T0, ScriptedAdapter, StoreCommit, clock_at, order


def poller_for(adapter: ScriptedAdapter, commit: StoreCommit, *, announce: bool = False,
               stale_after: int = 3) -> ConnectionPoller:
    book = OrderBook({}, {}, set())
    wakes: list[int] = []
    return ConnectionPoller(adapter, book, Coordinator(adapter.name), OrderQueue(),
                            commit=commit, wake=lambda: wakes.append(1),
                            announce_existing=announce, stale_after=stale_after,
                            clock=clock_at(T0))


def test_first_poll_is_a_silent_baseline_then_changes_are_announced(tmp_path: Path) -> None:
    adapter = ScriptedAdapter()
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    adapter.orders["1"] = order("1")

    async def run() -> None:
        await poller.poll()
        assert commit.scenes() == [] and poller.book.baselined == {"A"}
        adapter.orders["1"] = order("1", OrderStatus.PARTIAL_FILLED, filled=4)
        adapter.orders["2"] = order("2")
        await poller.poll()
        adapter.orders["1"] = order("1", OrderStatus.FILLED, filled=10)
        await poller.poll()

    asyncio.run(run())
    assert commit.scenes() == ["FILLED", "PLACED", "FINAL_FILLED"]
    assert commit.store.known_accounts("cx") == {"A"}
    assert poller.book.known[("cx", "A", "1")].final
    assert poller.polls == 3 and poller.looks == 3


def test_a_failed_commit_changes_nothing_in_memory_and_the_facts_come_again(
        tmp_path: Path) -> None:
    """Memory follows the disk: the partial fill whose commit failed is announced by the next
    poll, from the same answer, with the same event id."""
    adapter = ScriptedAdapter()
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    adapter.orders["1"] = order("1")

    async def run() -> None:
        await poller.poll()
        adapter.orders["1"] = order("1", OrderStatus.PARTIAL_FILLED, filled=4)
        commit.fail_next = 10  # more than the poll's own retries: the disk stays full
        await poller.poll()
        assert commit.calls == 2 + len(COMMIT_BACKOFF)  # the baseline, then every retry
        assert poller.book.known[("cx", "A", "1")].filled_qty == 0
        commit.fail_next = 0  # space is back
        await poller.poll()

    asyncio.run(run())
    assert commit.scenes() == ["FILLED"]
    assert poller.book.known[("cx", "A", "1")].filled_qty == 4


def test_a_commit_that_fails_once_is_retried_within_the_poll(tmp_path: Path) -> None:
    adapter = ScriptedAdapter()
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit, announce=True)
    adapter.orders["1"] = order("1")
    commit.fail_next = 1
    asyncio.run(poller.poll())
    assert commit.scenes() == ["PLACED"] and commit.calls == 2


def test_one_answer_repeating_an_order_and_an_older_state_gives_one_event(
        tmp_path: Path) -> None:
    """Reads within one poll see what earlier reads of the same poll found."""
    adapter = ScriptedAdapter()
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit, announce=True)
    fresh, older = order("1", OrderStatus.FILLED, filled=10), order("1")

    async def run() -> None:
        async def answer(scope: ListScope) -> ListResult:
            return ListResult(scope, [fresh, fresh, older])
        adapter.list_orders = answer  # type: ignore[method-assign]
        await poller.poll()

    asyncio.run(run())
    assert commit.scenes() == ["FINAL_FILLED"]
    assert commit.store.load_orders("cx")[("cx", "A", "1")] == fresh


def test_an_order_that_leaves_an_open_list_is_confirmed_per_order(tmp_path: Path) -> None:
    adapter = ScriptedAdapter(open_only=True)
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    adapter.orders["1"] = order("1")

    async def run() -> None:
        await poller.poll()
        adapter.orders["1"] = order("1", OrderStatus.CANCELLED)  # drops out of the open list
        await poller.poll()
        assert poller.queue.pop(float("inf")) == ("cx", "A", "1")  # urgent: confirm it
        assert commit.scenes() == []  # nothing concluded from its absence
        await poller.poll_order(("cx", "A", "1"))

    asyncio.run(run())
    assert commit.scenes() == ["CANCEL_SUCCESS"]
    assert adapter.fetched == ["1"] and poller.order_polls == 1


def test_an_order_the_broker_stops_reporting_becomes_stale_never_cancelled(
        tmp_path: Path) -> None:
    adapter = ScriptedAdapter()
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit, stale_after=2)
    adapter.orders["1"] = order("1")

    async def run() -> None:
        await poller.poll()
        del adapter.orders["1"]
        for _ in range(2):
            await poller.poll_order(("cx", "A", "1"))

    asyncio.run(run())
    assert commit.scenes() == ["ORDER_STALE"]
    assert poller.book.missing[("cx", "A", "1")] == 2
    assert [o.stale for o in commit.store.list_orders("cx")] == [True]


def test_an_order_older_than_the_broker_answers_for_is_retired(tmp_path: Path) -> None:
    adapter = ScriptedAdapter(open_only=True)
    adapter.retire_after = 3600.0
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    adapter.orders["1"] = order("1", placed_at=T0 - timedelta(hours=2))

    async def run() -> None:
        await poller.poll()
        del adapter.orders["1"]
        await poller.poll()

    asyncio.run(run())
    assert commit.scenes() == ["ORDER_RETIRED"]
    assert adapter.fetched == [] and poller.queue.pop(float("inf")) is None


def test_a_failed_per_order_poll_retries_the_order_and_auth_stops_the_connection(
        tmp_path: Path) -> None:
    adapter = ScriptedAdapter(per_order=True)
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    key = ("cx", "A", "1")
    adapter.orders["1"] = order("1")

    async def run() -> None:
        adapter.failures.append(BrokerUnavailable("timed out", connection="cx"))
        await poller.poll_order(key)
        assert poller.coordinator.errors == {"unavailable": 1}
        assert poller.queue.next_due() is not None  # looked at again soon
        assert poller.coordinator.stopped_reason is None
        adapter.failures.append(BrokerAuthError("bad key", connection="cx"))
        await poller.poll_order(key)

    asyncio.run(run())
    assert poller.coordinator.stopped_reason == "bad key"
    assert commit.scenes() == ["BROKER_AUTH_FAILED"]


def test_a_changed_order_is_requeued_urgently_once_committed(tmp_path: Path) -> None:
    adapter = ScriptedAdapter(per_order=True)
    commit = StoreCommit(tmp_path)
    poller = poller_for(adapter, commit)
    adapter.orders["1"] = order("1")

    async def run() -> None:
        await poller.poll()
        adapter.orders["1"] = replace(order("1", OrderStatus.PARTIAL_FILLED, filled=2))
        commit.fail_next = 10
        await poller.poll_order(("cx", "A", "1"))
        assert poller.book.known[("cx", "A", "1")].filled_qty == 0  # nothing in memory
        assert poller.queue.next_due() is not None  # but looked at again soon
        poller.queue.pop(float("inf"))
        commit.fail_next = 0
        await poller.poll_order(("cx", "A", "1"))

    asyncio.run(run())
    assert poller.queue.next_due() is not None
    assert commit.scenes() == ["FILLED"]


def test_a_change_is_rechecked_at_four_ninths_of_the_period_an_action_within_five_seconds(
        tmp_path: Path) -> None:
    """At 500 orders and 12 reads a second (a 41.7 s round-robin) a partly filled order is
    read again after 18.5 s, not 5 s: a re-poll sooner than that would cost the other
    orders' round-robin almost a whole read per change. An order whose cancel is pending is
    read again within 5 s whatever the period: someone waits on the outcome."""
    adapter = ScriptedAdapter(per_order=True)
    setattr(adapter, "detail_rate", lambda: 12.0)  # noqa: B010 - a slow broker's budget
    commit = StoreCommit(tmp_path)
    poller = ConnectionPoller(adapter, OrderBook({}, {}, set()), Coordinator("cx"),
                              OrderQueue(), commit=commit, wake=lambda: None,
                              announce_existing=False, stale_after=3, clock=clock_at(T0),
                              monotonic=lambda: 100.0)
    for n in range(1, 501):
        adapter.orders[str(n)] = order(str(n))

    async def run() -> None:
        await poller.poll()
        assert len(poller.queue) == 500 and poller.queue.next_due() is None
        adapter.orders["1"] = order("1", OrderStatus.PARTIAL_FILLED, filled=2)
        await poller.poll_order(("cx", "A", "1"))
        assert poller.queue.next_due() == pytest.approx(100 + 500 / 12 * 4 / 9)
        adapter.orders["2"] = order("2", OrderStatus.PENDING_CANCEL)
        await poller.poll_order(("cx", "A", "2"))
        assert poller.queue.next_due() == pytest.approx(105.0)

    asyncio.run(run())
    assert commit.scenes() == ["FILLED"]  # a pending cancel is no event of its own


@pytest.mark.parametrize(("queued", "rate", "expected", "uncapped"), [
    (0, 0.0, 5.0, 5.0), (40, 12.0, 40 / 12 * 4 / 9, 40 / 12 * 4 / 9),
    (1, 12.0, 1 / 12, 1 / 12), (500, 12.0, 5.0, 500 / 12 * 4 / 9)])
def test_recheck_after_is_four_ninths_of_a_round_robin_period_within_bounds(
        queued: int, rate: float, expected: float, uncapped: float) -> None:
    assert recheck_after(queued, rate) == pytest.approx(expected)
    assert recheck_after(queued, rate, cap=None) == pytest.approx(uncapped)
