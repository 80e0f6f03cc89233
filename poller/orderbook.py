"""What one connection knows of its orders: the last committed snapshot of each, how often
in a row each was missing, and which list scopes have their baseline.

The book changes only through :meth:`OrderBook.apply`, called once the batch that records a
change was committed: memory follows the disk, never leads it. While a poll builds its batch,
reads go through :meth:`OrderBook.view`, which sees the batch's own pending snapshots first.
"""

from __future__ import annotations

from poller.diff import is_behind
from poller.models import OrderSnapshot
from poller.records import Batch

Key = tuple[str, str, str]


class OrderBook:
    """The committed state of one connection's orders (loaded from the store at start)."""

    def __init__(self, known: dict[Key, OrderSnapshot], missing: dict[Key, int],
                 baselined: set[str]) -> None:
        self.known = known
        self.missing = missing
        self.baselined = baselined

    @property
    def open_orders(self) -> int:
        """Orders that can still change."""
        return sum(1 for s in self.known.values() if not s.final)

    def view(self, key: Key, batch: Batch | None = None) -> OrderSnapshot | None:
        """The latest snapshot of ``key``: the batch's pending one, else the committed one."""
        if batch is not None:
            pending = batch.latest(key)
            if pending is not None:
                return pending
        return self.known.get(key)

    def missing_count(self, key: Key, batch: Batch | None = None) -> int:
        """Consecutive polls ``key`` was not reported, counting the pending batch."""
        if batch is not None and key in batch.missing:
            return batch.missing[key]
        return self.missing.get(key, 0)

    def find(self, order_id: str) -> OrderSnapshot | None:
        """Any order of this connection with this id (whatever its account)."""
        return next((s for s in self.known.values() if s.order_id == order_id), None)

    def apply(self, batch: Batch) -> None:
        """Take a committed batch's changes into memory.

        A snapshot older than the one already known (a slower, concurrent poll of the same
        order committed after a faster one) never moves the book backwards.
        """
        for snapshot in batch.snapshots:
            current = self.known.get(snapshot.key)
            if current is None or current.final is False and not is_behind(current, snapshot):
                self.known[snapshot.key] = snapshot
            self.missing.pop(snapshot.key, None)
        for key in batch.seen:
            self.missing.pop(key, None)
        for key, count in batch.missing.items():
            self.missing[key] = count
        for _, label in batch.baselined:
            self.baselined.add(label)
