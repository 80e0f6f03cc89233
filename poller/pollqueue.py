"""Which order to poll next on a connection with a per-order call (design.md §5).

Urgent orders come first, each no earlier than its due time: orders that just changed or are
in flight, orders that left a list answer and must be confirmed, watched orders not yet seen.
Otherwise the order polled least recently (a fair round-robin over the open orders). Terminal
orders are simply never added. Pure bookkeeping on a clock the caller passes in.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class OrderQueue(Generic[K]):
    """A priority queue of order keys: urgent-by-due-time, then least recently polled."""

    def __init__(self) -> None:
        self._members: dict[K, float] = {}
        self._rr: list[tuple[float, int, K]] = []
        self._urgent: dict[K, float] = {}
        self._uheap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._taken: set[K] = set()
        #: Whether the key :meth:`pop` returned last came from the urgent tier.
        self.last_was_urgent = False

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def add(self, key: K, last_polled: float = float("-inf")) -> None:
        """Include ``key`` in the round-robin (no-op when already there)."""
        if key in self._members:
            return
        self._members[key] = last_polled
        if key not in self._taken:
            heapq.heappush(self._rr, (last_polled, next(self._seq), key))

    def discard(self, key: K) -> None:
        """Stop polling ``key`` (it became terminal or was retired)."""
        self._members.pop(key, None)
        self._urgent.pop(key, None)

    def urgent(self, key: K, due: float) -> None:
        """Poll ``key`` at ``due`` (or the earlier due time it already has) before the rest."""
        current = self._urgent.get(key)
        if current is not None and current <= due:
            return
        self._urgent[key] = due
        heapq.heappush(self._uheap, (due, next(self._seq), key))

    def next_due(self) -> float | None:
        """The earliest due time of an urgent key (``None`` when there is none)."""
        while self._uheap and self._urgent.get(self._uheap[0][2]) != self._uheap[0][0]:
            heapq.heappop(self._uheap)
        return self._uheap[0][0] if self._uheap else None

    def pop(self, now: float) -> K | None:
        """The key to poll now, or ``None``; call :meth:`polled` when done with it."""
        due = self.next_due()
        if due is not None and due <= now:
            _, _, key = heapq.heappop(self._uheap)
            del self._urgent[key]
            self._taken.add(key)
            self.last_was_urgent = True
            return key
        while self._rr:
            last, _, key = heapq.heappop(self._rr)
            if self._members.get(key) == last and key not in self._taken:
                self._taken.add(key)
                self.last_was_urgent = False
                return key
        return None

    def polled(self, key: K, now: float) -> None:
        """``key`` was just polled: it goes to the back of the round-robin."""
        self._taken.discard(key)
        if key in self._members:
            self._members[key] = now
            heapq.heappush(self._rr, (now, next(self._seq), key))
