"""The order book changes only through committed batches and never moves backwards."""

from __future__ import annotations

from poller.models import OrderStatus
from poller.orderbook import OrderBook
from poller.records import Batch
from tests.scripted import order

KEY = ("cx", "A", "1")


def test_a_view_sees_the_pending_batch_first() -> None:
    book = OrderBook({KEY: order("1")}, {}, set())
    batch = Batch()
    assert book.view(KEY, batch) == order("1")
    batch.put(order("1", OrderStatus.PARTIAL_FILLED, filled=3))
    assert book.view(KEY, batch).filled_qty == 3
    assert book.known[KEY].filled_qty == 0  # nothing committed yet


def test_apply_takes_snapshots_missing_counts_and_baselines() -> None:
    book = OrderBook({}, {KEY: 2}, set())
    batch = Batch(baselined=[("cx", "A")], missing={("cx", "A", "2"): 1})
    batch.put(order("1"))
    book.apply(batch)
    assert book.known[KEY] == order("1") and KEY not in book.missing
    assert book.missing[("cx", "A", "2")] == 1 and book.baselined == {"A"}
    assert book.open_orders == 1 and book.find("1") == order("1")
    book.apply(Batch(seen=[("cx", "A", "2")]))
    assert ("cx", "A", "2") not in book.missing


def test_a_slower_older_answer_never_moves_the_book_backwards() -> None:
    book = OrderBook({KEY: order("1", OrderStatus.PARTIAL_FILLED, filled=6)}, {}, set())
    book.apply(Batch(snapshots=[order("1", OrderStatus.PARTIAL_FILLED, filled=4)]))
    assert book.known[KEY].filled_qty == 6
    book.apply(Batch(snapshots=[order("1", OrderStatus.FILLED, filled=10)]))
    book.apply(Batch(snapshots=[order("1", OrderStatus.PARTIAL_FILLED, filled=8)]))
    assert book.known[KEY].status is OrderStatus.FILLED


def test_missing_count_includes_the_pending_batch() -> None:
    book = OrderBook({}, {KEY: 1}, set())
    batch = Batch(missing={KEY: 2})
    assert book.missing_count(KEY) == 1 and book.missing_count(KEY, batch) == 2
