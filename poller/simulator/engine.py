"""A broker-neutral simulated order book: orders, deals, and lifecycles that move on their own.

Each broker simulator keeps one :class:`OrderBook` and renders its orders in that broker's
wire format and status vocabulary. Tests drive orders step by step (``fill``, ``cancel``...);
``poller demo`` and the benchmarks let :meth:`OrderBook.step` move them at random. Every
change is logged with its time, so a benchmark can measure detection latency.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Simulated statuses (canonical-ish; each simulator maps them to its own strings).
PENDING = "PENDING"
SUBMITTED = "SUBMITTED"
PARTIAL = "PARTIAL"
FILLED = "FILLED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
EXPIRED = "EXPIRED"
PENDING_CANCEL = "PENDING_CANCEL"
PENDING_REPLACE = "PENDING_REPLACE"
TERMINAL = frozenset({FILLED, CANCELLED, FAILED, EXPIRED})


@dataclass
class SimDeal:
    """One execution."""

    seq: str
    qty: Decimal
    price: Decimal
    at: float  # wall-clock seconds


@dataclass
class SimOrder:
    """One simulated order, broker-neutral."""

    order_id: str
    account_id: str
    symbol: str
    side: str  # BUY / SELL
    qty: Decimal
    price: Decimal
    status: str = PENDING
    deals: list[SimDeal] = field(default_factory=list)
    cancel_qty: Decimal = Decimal(0)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    message: str = ""
    client_order_id: str = ""
    order_type: str = "LIMIT"
    time_in_force: str = "DAY"
    history: list[tuple[str, Decimal, Decimal, float, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def filled(self) -> Decimal:
        """Total filled quantity."""
        return sum((d.qty for d in self.deals), Decimal(0))

    @property
    def avg_price(self) -> Decimal:
        """Average fill price (0 before any fill)."""
        filled = self.filled
        if not filled:
            return Decimal(0)
        return (sum((d.qty * d.price for d in self.deals), Decimal(0)) / filled).quantize(
            Decimal("0.0001"))

    @property
    def remaining(self) -> Decimal:
        """Quantity still working."""
        return self.qty - self.filled

    @property
    def terminal(self) -> bool:
        """True once the order cannot change any more."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class Change:
    """One logged change: when (monotonic), which order, what happened."""

    at: float
    order_id: str
    what: str


class OrderBook:
    """Thread-safe simulated orders of one broker, with a change log.

    :param new_id: makes the next order id (each broker has its own id format).
    """

    def __init__(self, new_id: Callable[[int], str], *, seed: int | None = None) -> None:
        self._new_id = new_id
        self._counter = itertools.count(1)
        self.orders: dict[str, SimOrder] = {}
        self.lock = threading.RLock()
        self.changes: list[Change] = []
        #: Called after every change, under the book lock, with the order, what happened
        #: and the order's history entry before the change (None for a new order): how a
        #: simulator pushes its broker's events.
        self.listeners: list[Callable[[SimOrder, str, Any], None]] = []
        self.rng = random.Random(seed)
        self.clock: Callable[[], float] = time.monotonic

    def _touch(self, order: SimOrder, what: str) -> None:
        before = order.history[-1] if order.history else None
        order.updated = time.time()
        order.history.append((order.status, order.qty, order.price, order.updated, what))
        self.changes.append(Change(self.clock(), order.order_id, what))
        for listener in list(self.listeners):
            listener(order, what, before)

    def place(self, account_id: str, symbol: str, side: str, qty: Decimal | int | str,
              price: Decimal | int | str, **extra: Any) -> SimOrder:
        """Create an order in PENDING (as a broker's first answer to place_order)."""
        with self.lock:
            number = next(self._counter)
            order = SimOrder(
                order_id=self._new_id(number), account_id=account_id, symbol=symbol,
                side=side, qty=Decimal(str(qty)), price=Decimal(str(price)),
                client_order_id=extra.pop("client_order_id", f"c{number:08d}"),
                order_type=extra.pop("order_type", "LIMIT"),
                time_in_force=extra.pop("time_in_force", "DAY"),
                extra=extra,
            )
            self.orders[order.order_id] = order
            self._touch(order, "placed")
            return order

    def get(self, order_id: str) -> SimOrder:
        """The order with that id (KeyError when unknown)."""
        return self.orders[order_id]

    def accept(self, order_id: str) -> SimOrder:
        """PENDING → SUBMITTED."""
        with self.lock:
            order = self.orders[order_id]
            if order.status == PENDING:
                order.status = SUBMITTED
                self._touch(order, "accepted")
            return order

    def fill(self, order_id: str, qty: Decimal | int | str | None = None,
             price: Decimal | int | str | None = None) -> SimOrder:
        """Execute ``qty`` (default: all that remains) at ``price`` (default: the limit)."""
        with self.lock:
            order = self.orders[order_id]
            if order.terminal:
                raise ValueError(f"order {order_id} is {order.status}")
            amount = order.remaining if qty is None else min(Decimal(str(qty)), order.remaining)
            if amount <= 0:
                raise ValueError("nothing left to fill")
            deal = SimDeal(f"{len(order.deals) + 1:06d}", amount,
                           order.price if price is None else Decimal(str(price)), time.time())
            order.deals.append(deal)
            order.status = FILLED if order.remaining <= 0 else PARTIAL
            self._touch(order, f"fill {amount}")
            return order

    def request_cancel(self, order_id: str) -> SimOrder:
        """A cancel arrives: the order shows PENDING_CANCEL until :meth:`cancel`."""
        with self.lock:
            order = self.orders[order_id]
            if order.terminal:
                raise ValueError(f"order {order_id} is {order.status}")
            order.extra["before_cancel"] = order.status
            order.status = PENDING_CANCEL
            self._touch(order, "cancel requested")
            return order

    def cancel(self, order_id: str) -> SimOrder:
        """Cancel what remains (the order may have fills)."""
        with self.lock:
            order = self.orders[order_id]
            if order.terminal:
                raise ValueError(f"order {order_id} is {order.status}")
            order.cancel_qty = order.remaining
            order.status = CANCELLED
            self._touch(order, "cancelled")
            return order

    def refuse_cancel(self, order_id: str) -> SimOrder:
        """A pending cancel is refused: the order goes back to working."""
        with self.lock:
            order = self.orders[order_id]
            if order.status == PENDING_CANCEL:
                order.status = order.extra.pop("before_cancel", SUBMITTED)
                self._touch(order, "cancel refused")
            return order

    def reject(self, order_id: str, message: str = "rejected by exchange") -> SimOrder:
        """The venue refuses the order."""
        with self.lock:
            order = self.orders[order_id]
            order.status = FAILED
            order.message = message
            self._touch(order, "rejected")
            return order

    def expire(self, order_id: str) -> SimOrder:
        """The order's time in force ran out."""
        with self.lock:
            order = self.orders[order_id]
            order.status = EXPIRED
            self._touch(order, "expired")
            return order

    def modify(self, order_id: str, *, qty: Decimal | int | str | None = None,
               price: Decimal | int | str | None = None) -> SimOrder:
        """Change quantity and/or price of a working order."""
        with self.lock:
            order = self.orders[order_id]
            if order.terminal:
                raise ValueError(f"order {order_id} is {order.status}")
            if qty is not None:
                new_qty = Decimal(str(qty))
                if new_qty <= order.filled:
                    raise ValueError("new quantity must exceed the filled quantity")
                order.qty = new_qty
            if price is not None:
                order.price = Decimal(str(price))
            self._touch(order, "modified")
            return order

    def open_orders(self) -> list[SimOrder]:
        """Orders that can still change."""
        with self.lock:
            return [o for o in self.orders.values() if not o.terminal]

    def step(self, *, accounts: list[str], symbols: list[tuple[str, Decimal]],
             place_probability: float = 0.5, max_open: int = 6) -> None:
        """Move the book one random step: place, accept, fill, modify, cancel, reject."""
        rng = self.rng
        with self.lock:
            live = self.open_orders()
            if (not live or rng.random() < place_probability) and len(live) < max_open:
                symbol, price = rng.choice(symbols)
                self.place(rng.choice(accounts), symbol, rng.choice(["BUY", "SELL"]),
                           rng.choice([1, 2, 5, 10, 100]) * (10 if price < 100 else 1), price)
                return
            if not live:
                return
            order = rng.choice(live)
            roll = rng.random()
            if order.status == PENDING:
                if roll < 0.1:
                    self.reject(order.order_id, "insufficient buying power")
                else:
                    self.accept(order.order_id)
            elif order.status == PENDING_CANCEL:
                self.cancel(order.order_id)
            elif roll < 0.55:
                part = order.remaining if rng.random() < 0.5 else max(
                    Decimal(1), (order.remaining / 2).to_integral_value())
                self.fill(order.order_id, part)
            elif roll < 0.7 and not order.deals:
                step = (order.price * Decimal("0.002")).quantize(Decimal("0.01")) or Decimal(
                    "0.01")
                self.modify(order.order_id, price=order.price - step)
            elif roll < 0.85:
                self.request_cancel(order.order_id)
            elif roll < 0.9:
                self.expire(order.order_id)
