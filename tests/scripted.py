"""A scripted broker adapter and a real store, for testing one connection's parts in-process.

:class:`ScriptedAdapter` answers list and per-order calls from what a test put in
:attr:`ScriptedAdapter.orders` (or raises what it put in :attr:`ScriptedAdapter.failures`);
everything after the adapter — poller, order book, coordinator, SQLite store — is real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx

from poller.adapter import BrokerAdapter, BrokerConfig, ListResult, ListScope
from poller.errors import BrokerError, StoreError
from poller.events import OrderEvent
from poller.models import OrderSnapshot, OrderStatus
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.records import Batch
from poller.store import Store

T0 = datetime(2026, 5, 20, 3, 0, tzinfo=UTC)


class ScriptedAdapter(BrokerAdapter):
    """Answers from :attr:`orders` (by order id); raises from :attr:`failures` first."""

    kind: ClassVar[str] = "scripted"
    limits: ClassVar[dict[str, LimitSpec]] = {"calls": LimitSpec(1000, 1.0)}
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "list": ("calls",), "detail": ("calls",)}
    supports_fetch: ClassVar[bool] = True

    def __init__(self, name: str = "cx", *, per_order: bool = False,
                 open_only: bool = False) -> None:
        config = BrokerConfig(kind="scripted", base_url="http://127.0.0.1:9",
                              per_order_polling=per_order)
        client = httpx.AsyncClient(transport=httpx.MockTransport(
            lambda r: httpx.Response(599)))
        super().__init__(name, config, client,
                         RateBudget([LimitGroup("calls", LimitSpec(1000, 1.0))]))
        self.open_only = open_only
        self.orders: dict[str, OrderSnapshot] = {}
        self.failures: list[BrokerError] = []
        self.fetched: list[str] = []

    def scopes(self) -> list[ListScope]:
        return [ListScope("A", open_only=self.open_only)]

    async def list_orders(self, scope: ListScope) -> ListResult:
        if self.failures:
            raise self.failures.pop(0)
        shown = [s for s in self.orders.values()
                 if not (self.open_only and s.status.terminal)]
        return ListResult(scope, shown)

    async def fetch_order(self, account_id: str, order_id: str) -> OrderSnapshot | None:
        self.fetched.append(order_id)
        if self.failures:
            raise self.failures.pop(0)
        return self.orders.get(order_id)


def order(order_id: str, status: OrderStatus = OrderStatus.SUBMITTED, *, filled: int = 0,
          qty: int = 10, broker: str = "cx", **fields: Any) -> OrderSnapshot:
    """A snapshot of order ``order_id`` on account A."""
    base = OrderSnapshot(broker=broker, broker_kind="scripted", account_id="A",
                         order_id=order_id, status=status, broker_status=status.value,
                         symbol="2890", side="BUY", order_type="LIMIT", qty=Decimal(qty),
                         price=Decimal("27.1"), filled_qty=Decimal(filled))
    return replace(base, **fields) if fields else base


class StoreCommit:
    """The daemon's commit over a real SQLite file: every event routed to ``hook``.

    ``fail_next`` makes the next commits raise what the store raises when the disk is full.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.store = Store.open(tmp_path / "poller.db")
        self.fail_next = 0
        self.calls = 0

    async def __call__(self, batch: Batch) -> list[OrderEvent]:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("cannot write to poller.db: no space left", reason="full")
        batch.routes.update({e.id: ("hook",) for e in batch.events})
        return self.store.commit(batch)

    def scenes(self) -> list[str]:
        """Scenes of every stored event, oldest first."""
        return [e.scene for e, _ in self.store.recent_events(1000)]


def clock_at(moment: datetime) -> Callable[[], datetime]:
    """A wall clock that stands still at ``moment``."""
    return lambda: moment
