"""Order actions through the daemon: replace and cancel within the connection's budget.

The daemon owns each API key's budget, so actions go through it: ``poller replace`` /
``poller cancel``, :func:`submit` (Python) and the local HTTP API queue an action in the
store; the daemon sends it through the connection's rate budget, polls the order, and decides
the outcome from what the broker actually shows: MODIFY_SUCCESS / MODIFY_FAILED or
CANCEL_SUCCESS / CANCEL_FAILED (design.md §3). A cancel that loses the race against a fill
gives CANCEL_FAILED, then FINAL_FILLED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poller.errors import PollerError, StoreError
from poller.models import OrderEvent, OrderSnapshot, SceneType, decimal_text, event_id, iso
from poller.store import ActionRow, Store

if TYPE_CHECKING:
    from poller.app import App

logger = logging.getLogger(__name__)

#: Seconds the daemon waits for the broker to show the outcome of an accepted action (and at
#: least three reads of the broker since sending); never longer than VERIFY_AT_MOST.
VERIFY_WITHIN = 30.0
VERIFY_AT_MOST = 600.0
#: Attempts for an answer like Webull's "order is processing, try later".
RETRIES = 10
#: Broker error codes that mean "busy with this order, try again shortly".
PROCESSING_CODES = frozenset({"TRADE_WEBULL_REQUEST_PROCESSING"})


class ActionRefused(PollerError):
    """An action that cannot be sent (unknown order, finished order, change not allowed)."""


@dataclass(frozen=True)
class Outcome:
    """How an action ended: the scene it produced and a human-readable message."""

    succeeded: bool
    scene: str
    message: str


def parse_decimal(text: str | None, what: str) -> Decimal | None:
    """A positive decimal from a command-line value, or None."""
    if text is None:
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ActionRefused(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise ActionRefused(f"{what} must be positive, got {text}")
    return value


def action_event(snapshot: OrderSnapshot, scene: SceneType, action_id: int, message: str,
                 detected_at: Any) -> OrderEvent:
    """The MODIFY_FAILED / CANCEL_FAILED event of an action the broker refused or lost."""
    payload: dict[str, Any] = {
        "broker": snapshot.broker, "broker_kind": snapshot.broker_kind,
        "account_id": snapshot.account_id, "order_id": snapshot.order_id,
        "client_order_id": snapshot.client_order_id, "symbol": snapshot.symbol,
        "side": snapshot.side, "order_type": snapshot.order_type,
        "qty": decimal_text(snapshot.qty), "price": decimal_text(snapshot.price),
        "filled_qty": decimal_text(snapshot.filled_qty),
        "filled_price": decimal_text(snapshot.avg_fill_price),
        "last_fill_qty": None, "last_fill_price": None,
        "order_status": snapshot.status.value, "previous_status": snapshot.status.value,
        "broker_status": snapshot.broker_status, "scene_type": scene.value, "changes": {},
        "message": message, "event_time": iso(detected_at), "detected_at": iso(detected_at),
    }
    return OrderEvent(
        id=event_id(snapshot.broker, snapshot.account_id, snapshot.order_id, scene.value,
                    f"action:{action_id}"),
        event_type="TRADE", scene=scene.value, timestamp=detected_at, broker=snapshot.broker,
        account_id=snapshot.account_id, order_id=snapshot.order_id, payload=payload)


@dataclass
class Pending:
    """An action sent to the broker, waiting for the order to show its outcome."""

    row: ActionRow
    qty: Decimal | None
    price: Decimal | None
    future: asyncio.Future[Outcome]

    def satisfied(self, snapshot: OrderSnapshot) -> bool:
        """Whether ``snapshot`` shows the requested change."""
        if self.row.kind == "cancel":
            return snapshot.status.value == "CANCELLED"
        return (self.qty is None or snapshot.qty == self.qty) and (
            self.price is None or snapshot.price == self.price)


class ActionRunner:
    """Finds queued actions in the store and runs them, one at a time per connection."""

    def __init__(self, app: App, *, every: float = 0.25) -> None:
        self.app = app
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start looking for actions."""
        self._task = asyncio.create_task(self._loop(), name="actions")

    def wake(self) -> None:
        """An action was just queued (local API): look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop looking; actions in progress finish their current step (bounded)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._running:
            done, pending = await asyncio.wait(list(self._running.values()), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                rows: list[ActionRow] = await self.app.db(self.app.store.open_actions)
            except StoreError:
                logger.exception("cannot read queued actions")
                rows = []
            for row in rows:
                if row.id not in self._running:
                    task = asyncio.create_task(self._run(row), name=f"action-{row.id}")
                    self._running[row.id] = task
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.every)
            except TimeoutError:
                pass

    async def _run(self, row: ActionRow) -> None:
        # One action at a time per order; different orders' actions overlap (each still
        # waits for the connection's budget, and sending is serialised per connection).
        lock = self._locks.setdefault(f"{row.broker}/{row.order_id}", asyncio.Lock())
        try:
            async with lock:
                outcome = await self.execute(row)
            await self.app.db(self.app.store.update_action, row.id,
                              "succeeded" if outcome.succeeded else "failed",
                              outcome=outcome.scene, message=outcome.message)
            logger.info("%s: %s of order %s: %s %s", row.broker, row.kind, row.order_id,
                        outcome.scene or "refused", outcome.message)
        except Exception as err:  # an action must never take the daemon down
            logger.exception("%s: action %d failed unexpectedly", row.broker, row.id)
            await self.app.db(self.app.store.update_action, row.id, "failed",
                              message=f"internal error: {type(err).__name__}")
        finally:
            self._running.pop(row.id, None)

    async def execute(self, row: ActionRow) -> Outcome:
        """Validate, send and verify one action."""
        tracker = self.app.trackers.get(row.broker)
        if tracker is None:
            return Outcome(False, "", f"no running connection {row.broker!r}")
        try:
            qty = parse_decimal(row.qty, "quantity")
            price = parse_decimal(row.price, "price")
        except ActionRefused as err:
            return Outcome(False, "", str(err))
        return await tracker.perform(row, qty, price)


def submit(database: Path, broker: str, order_id: str, kind: str, *, account_id: str = "",
           qty: str | None = None, price: str | None = None, wait: bool = True,
           timeout: float = 60.0, on_wait: Callable[[float], None] = time.sleep
           ) -> ActionRow:
    """Queue an order action for the running daemon (the Python API).

    :param database: the daemon's database (``daemon.database``).
    :param kind: ``"replace"`` (with ``qty`` and/or ``price``) or ``"cancel"``.
    :param wait: wait for the outcome (up to ``timeout`` seconds) instead of returning at once.
    :returns: the action as last seen (``row.done`` tells whether the outcome is known,
        ``row.outcome`` is the scene, ``row.message`` the explanation).
    """
    if kind not in ("replace", "cancel"):
        raise ActionRefused(f"unknown action {kind!r} (replace or cancel)")
    if kind == "replace" and qty is None and price is None:
        raise ActionRefused("replace needs a new quantity and/or price")
    parse_decimal(qty, "quantity")
    parse_decimal(price, "price")
    store = Store.open(database)
    try:
        action_id = store.add_action(broker, account_id, order_id, kind, qty=qty, price=price)
        deadline = time.monotonic() + timeout
        row = store.action(action_id)
        while wait and row is not None and not row.done and time.monotonic() < deadline:
            on_wait(0.2)  # the daemon is another process: look again shortly
            row = store.action(action_id)
        assert row is not None
        return row
    finally:
        store.close()
