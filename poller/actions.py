"""Order actions of one connection: replace and cancel, sent within its budget, verified.

The daemon owns each API key's budget, so actions go through it (queued by ``poller
replace`` / ``poller cancel``, :func:`poller.actionqueue.submit` or the local HTTP API; run by
:class:`poller.actionqueue.ActionRunner`). :class:`ActionExecutor` sends one through the
connection's rate budget, reads the order again, and decides the outcome from what the broker
actually shows: MODIFY_SUCCESS / MODIFY_FAILED or CANCEL_SUCCESS / CANCEL_FAILED (design.md
§3). A cancel that loses the race against a fill gives CANCEL_FAILED, then FINAL_FILLED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from poller.adapter import BrokerAdapter
from poller.coordinator import Coordinator
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    StoreError,
)
from poller.events import OrderEvent, order_event
from poller.models import OrderSnapshot, SceneType, utcnow
from poller.orderbook import Key, OrderBook
from poller.polling import ConnectionPoller
from poller.ratelimit import PRIORITY, PRIORITY_ACTION
from poller.records import ActionRow, Batch

logger = logging.getLogger(__name__)

#: Seconds the daemon waits for the broker to show the outcome of an accepted action (and at
#: least three reads of the broker since sending); never longer than VERIFY_AT_MOST.
VERIFY_WITHIN = 30.0
VERIFY_AT_MOST = 600.0
#: Attempts for an answer like Webull's "order is processing, try later".
RETRIES = 10
#: Broker error codes that mean "busy with this order, try again shortly".
PROCESSING_CODES = frozenset({"TRADE_WEBULL_REQUEST_PROCESSING"})


#: Store a step of an action: (action id, state, whether this step is a new attempt).
RecordState = Callable[[int, str, bool], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """How an action ended: the scene it produced and a human-readable message."""

    succeeded: bool
    scene: str
    message: str


def action_event(snapshot: OrderSnapshot, scene: SceneType, action_id: int, message: str,
                 detected_at: datetime) -> OrderEvent:
    """The MODIFY_FAILED / CANCEL_FAILED event of an action the broker refused or lost."""
    return order_event(snapshot, scene, discriminator=f"action:{action_id}",
                       detected_at=detected_at, previous_status=snapshot.status,
                       message=message, event_time=detected_at)


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


class ActionExecutor:
    """Validates, sends (through the budget) and verifies the actions of one connection.

    Sending is serialised per connection (a broker like Webull refuses a second replace of
    any order within a second); verification reads the order again — with the per-order call
    where orders are polled one by one, else through an early list poll — until the order
    shows the change, a final status that pre-empts it, or the verification time is up.
    """

    def __init__(
        self,
        adapter: BrokerAdapter,
        book: OrderBook,
        poller: ConnectionPoller,
        coordinator: Coordinator,
        pending: PendingActions,
        *,
        look_again: Callable[[Key], None],
        record_state: RecordState,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.book = book
        self.poller = poller
        self.coordinator = coordinator
        self.pending = pending
        self._look_again = look_again
        self._record_state = record_state
        self._clock = clock
        self._send_lock = asyncio.Lock()
        self.log = poller.log

    async def perform(self, row: ActionRow, qty: Decimal | None, price: Decimal | None
                      ) -> Outcome:
        """Validate, send (through the budget) and verify one replace or cancel."""
        token = PRIORITY.set(PRIORITY_ACTION)  # someone is waiting for this one
        try:
            return await self._perform(row, qty, price)
        finally:
            PRIORITY.reset(token)

    async def _perform(self, row: ActionRow, qty: Decimal | None, price: Decimal | None
                       ) -> Outcome:
        known = await self._known(row)
        if isinstance(known, Outcome):
            return known
        key = known.key
        failed = SceneType.MODIFY_FAILED if row.kind == "replace" else SceneType.CANCEL_FAILED
        if known.final:
            return Outcome(False, "", f"order {row.order_id} is already {known.status.value}")
        problem = self.adapter.check_action(known, row.kind, qty, price)
        if problem:
            return Outcome(False, "", problem)
        pending = Pending(row, qty, price, asyncio.get_running_loop().create_future())
        if pending.satisfied(known):
            return Outcome(True, "", "the order already shows the requested values")
        self.pending.add(key, pending)
        try:
            async with self._send_lock:
                refused = await self._send(row, self.book.known.get(key, known), qty, price)
            if refused is not None:
                await self._commit(Batch(events=[action_event(
                    self.book.known.get(key, known), failed, row.id, refused, self._clock())]))
                return Outcome(False, failed.value, refused)
            await self._record_state(row.id, "sent", False)
            return await self._verify(key, known, pending, failed)
        finally:
            self.pending.remove(key)

    async def _known(self, row: ActionRow) -> OrderSnapshot | Outcome:
        """The order the action is about, read from the broker if we do not know it yet."""
        account = row.account_id or self._account_of(row.order_id)
        key = (self.name, account, row.order_id)
        known = self.book.known.get(key) or self.book.find(row.order_id)
        if known is None and self.adapter.supports_fetch:
            try:
                found = await self.adapter.fetch_order(account, row.order_id)
            except BrokerError as err:
                return Outcome(False, "", f"could not read the order first: {err}")
            if found is not None:
                batch = Batch()
                await self.poller.apply(found, batch, self._clock())
                await self._commit(batch)
                known = self.book.known.get(found.key, found)
        if known is None:
            return Outcome(False, "", f"order {row.order_id} is not known on {self.name}")
        return known

    async def _verify(self, key: Key, known: OrderSnapshot, pending: Pending,
                      failed: SceneType) -> Outcome:
        """Wait for the order to show the outcome of an accepted action."""
        loop = asyncio.get_running_loop()
        # Give up only after the broker was actually looked at a few times without showing
        # the change (a busy budget can delay those looks well past VERIFY_WITHIN), and
        # never later than VERIFY_AT_MOST.
        started, looks = loop.time(), self.poller.looks
        while not pending.future.done() and not (
                (loop.time() - started >= VERIFY_WITHIN and self.poller.looks - looks >= 3)
                or loop.time() - started >= VERIFY_AT_MOST):
            self._look_again(key)
            try:
                await asyncio.wait_for(asyncio.shield(pending.future),
                                       timeout=max(0.5, self.adapter.config.interval))
            except TimeoutError:
                continue
        if pending.future.done():
            return pending.future.result()
        message = (f"the broker accepted the request but the order did not show it "
                   f"in {self.poller.looks - looks} look(s) over {loop.time() - started:.0f} s")
        await self._commit(Batch(events=[action_event(
            self.book.known.get(key, known), failed, pending.row.id, message, self._clock())]))
        return Outcome(False, failed.value, message)

    async def _send(self, row: ActionRow, known: OrderSnapshot, qty: Decimal | None,
                    price: Decimal | None) -> str | None:
        """Send until the broker answers; returns its refusal text, or None when accepted."""
        for attempt in range(1, RETRIES + 1):
            await self._record_state(row.id, "sending", True)
            try:
                if row.kind == "replace":
                    await self.adapter.replace_order(known, qty=qty, price=price)
                else:
                    await self.adapter.cancel_order(known)
                return None
            except BrokerRejected as err:
                current = self.book.known.get(known.key, known)
                if row.kind == "cancel" and current.final:
                    return f"{err} (the order is {current.status.value})"
                return str(err)
            except BrokerAuthError as err:
                await self._commit(Batch(events=self.coordinator.failed(err)))
                return str(err)
            except BrokerError as err:
                # "order is processing, try later", a rate-limit pause, a network error:
                # retried through the budget (replace and cancel are safe to repeat).
                self.log.info("%s of order %s not accepted yet (attempt %d): %s", row.kind,
                              row.order_id, attempt, err)
                if err.code not in PROCESSING_CODES:
                    await asyncio.sleep(min(5.0, 0.5 * attempt))
        return f"gave up after {RETRIES} attempts (broker busy or unreachable)"

    async def _commit(self, batch: Batch) -> None:
        """Commit an action's events; a store that refuses even after the poller's retries
        costs the event, never the action (its outcome is recorded by the runner)."""
        try:
            await self.poller.commit(batch)
        except StoreError as err:
            self.log.error("could not store %s: %s", ", ".join(e.scene for e in batch.events)
                           or "the order's state", err)

    def _account_of(self, order_id: str) -> str:
        found = self.book.find(order_id)
        if found is not None:
            return found.account_id
        scopes = self.adapter.scopes()
        return scopes[0].account_id if scopes else ""


class PendingActions:
    """Actions sent to the broker and waiting for an order to show their outcome.

    :meth:`judge` is handed to the connection's poller: every new snapshot of an order with
    a pending action may settle it. The outcome is set only once the snapshot's batch is
    committed (memory follows the disk); a CANCEL_FAILED/MODIFY_FAILED caused by a fill or
    cancel that came first is queued in the same batch, before the order's own final event.
    """

    def __init__(self) -> None:
        self._pending: dict[Key, Pending] = {}

    def add(self, key: Key, pending: Pending) -> None:
        """Wait for ``key`` to show ``pending``'s outcome."""
        self._pending[key] = pending

    def remove(self, key: Key) -> None:
        """Stop waiting for ``key``."""
        self._pending.pop(key, None)

    def judge(self, key: Key, snapshot: OrderSnapshot, batch: Batch, now: datetime) -> None:
        """Settle a pending action from a new snapshot (before its events are queued)."""
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            return
        kind = pending.row.kind
        if pending.satisfied(snapshot):
            scene = "MODIFY_SUCCESS" if kind == "replace" else "CANCEL_SUCCESS"
            outcome = Outcome(True, scene, f"the broker shows the order {snapshot.status.value}")
        elif snapshot.final:
            failed = SceneType.MODIFY_FAILED if kind == "replace" else SceneType.CANCEL_FAILED
            message = f"the order was {snapshot.status.value} before the {kind} took effect"
            # Announced before the order's own final event (CANCEL_FAILED, then FINAL_FILLED).
            batch.events.append(action_event(snapshot, failed, pending.row.id, message, now))
            outcome = Outcome(False, failed.value, message)
        else:
            return
        batch.effects.append(lambda: _settle(pending.future, outcome))


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


