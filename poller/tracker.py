"""One broker connection's polling: list calls, probes, diff, and the atomic commit.

A :class:`Tracker` remembers the last snapshot of every order of its connection (loaded from
the store at start), turns each list answer into events with :func:`poller.diff.diff`, and
hands one :class:`~poller.store.Batch` per list call to the store. Broker errors are sorted
here: auth stops the connection, rate limits and long outages raise one operator event per
episode, and nothing a broker answers can kill the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from poller.actions import (
    PROCESSING_CODES,
    RETRIES,
    VERIFY_AT_MOST,
    VERIFY_WITHIN,
    Outcome,
    Pending,
    action_event,
)
from poller.adapter import BrokerAdapter, ListScope, first_problem
from poller.diff import diff
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerRateLimited,
    BrokerRejected,
)
from poller.models import (
    OrderEvent,
    OrderSnapshot,
    OrderStatus,
    SceneType,
    SystemScene,
    iso,
    system_event,
    utcnow,
)
from poller.pollqueue import OrderQueue
from poller.ratelimit import PRIORITY, PRIORITY_ACTION, PRIORITY_ROUTINE, PRIORITY_URGENT
from poller.store import ActionRow, Batch

logger = logging.getLogger(__name__)

Commit = Callable[[Batch], Awaitable[list[OrderEvent]]]
Watched = Callable[[], Awaitable[list[tuple[str, str]]]]

#: Orders diffed between two yields to the event loop.
YIELD_EVERY = 100
#: Statuses in which an order is about to change: polled again soon.
_IN_FLIGHT = frozenset({OrderStatus.PENDING, OrderStatus.PENDING_CANCEL,
                        OrderStatus.PENDING_REPLACE})
#: Consecutive failed polls before the circuit opens, and how long it stays open.
BREAKER_FAILURES = 5
BREAKER_OPEN_SECONDS = 60.0
#: Consecutive failed polls, and seconds of failure, before "unreachable" is announced.
UNREACHABLE_AFTER_FAILURES = 5
UNREACHABLE_AFTER_SECONDS = 60.0


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the connection's name and tags it for JSON logs."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[
            str, Any]]:
        name = (self.extra or {}).get("connection", "")
        kwargs.setdefault("extra", {})["connection"] = name
        return f"{name}: {msg}", kwargs


class Tracker:
    """Polls one broker connection and commits what changed."""

    def __init__(
        self,
        adapter: BrokerAdapter,
        *,
        commit: Commit,
        known: dict[tuple[str, str, str], OrderSnapshot],
        known_accounts: set[str],
        missing: dict[tuple[str, str, str], int],
        announce_existing: bool,
        stale_after: int,
        watched: Watched | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.known = known
        self.known_accounts = known_accounts
        self.missing = missing
        self.announce_existing = announce_existing
        self.stale_after = stale_after
        self._commit = commit
        self._watched = watched
        self._clock = clock
        self.log = ConnectionLog(logger, {"connection": self.name})
        self.stopped_reason: str | None = None
        self.last_success: datetime | None = None
        self.polls = 0
        self.errors: dict[str, int] = {}
        self._episode: dict[str, datetime] = {}
        self._failures = 0
        self._unreachable_announced = False
        self._mono = monotonic
        self.queue: OrderQueue[tuple[str, str, str]] = OrderQueue()
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._stopping = False
        self._breaker_until = 0.0
        self.order_polls = 0
        self.rate_limit_answers = 0
        self.completed = 0
        #: Successful reads of the broker (list answers and per-order answers).
        self.looks = 0
        self._warned: set[str] = set()
        self._pending: dict[tuple[str, str, str], Pending] = {}
        self._send_lock = asyncio.Lock()
        #: Set by the app: ask for an early list poll; store an action's progress.
        self.on_list_wanted: Callable[[], None] | None = None
        self.on_action_state: Callable[[int, str, bool], Awaitable[None]] | None = None

    @property
    def open_orders(self) -> int:
        """Orders of this connection that can still change."""
        return sum(1 for s in self.known.values() if not s.final)

    async def poll(self) -> None:
        """Run every list call of the connection once (an APScheduler job)."""
        if self.stopped_reason or self._breaker_open():
            return
        for scope in self.adapter.scopes():
            if self.stopped_reason:
                return
            await self.poll_scope(scope)
        if self._watched is not None and self.adapter.supports_fetch and not self.stopped_reason:
            now = self._mono()
            for account_id, order_id in await self._watched():
                key = (self.name, account_id, order_id)
                known = self.known.get(key)
                if (known is None or not known.final) and \
                        self.missing.get(key, 0) < self.stale_after:
                    self.queue.urgent(key, now)
            self._wake.set()

    # -- per-order polling ---------------------------------------------------------------

    def start(self) -> None:
        """Start the per-order poll loop (connections with a per-order call only)."""
        if not self.adapter.supports_fetch or self._drainer is not None:
            return
        if self.adapter.polls_each_order:
            for key, snapshot in self.known.items():
                if not snapshot.final and self.missing.get(key, 0) < self.stale_after:
                    self.queue.add(key)
        self._drainer = asyncio.create_task(self._drain(), name=f"orders-{self.name}")

    async def stop(self) -> None:
        """Finish the per-order poll in progress (bounded by the request deadline), then stop."""
        self._stopping = True
        self._wake.set()
        if self._drainer is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._drainer),
                                   timeout=self.adapter.config.timeout + 1)
        except TimeoutError:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        self._drainer = None

    def recheck_after(self) -> float:
        """Seconds before an order that just changed is polled again.

        About one round-robin period, but at least one budget slot and at most 5 s, so an order
        that just partly filled is looked at again well within two per-order intervals.
        """
        rate = self.adapter.detail_rate()
        if not rate:
            return 5.0
        return min(5.0, max(1.0 / rate, len(self.queue) / rate))

    async def _drain(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self.stopped_reason or self._breaker_open():
                await self._idle(self._breaker_until - self._mono()
                                 if self._breaker_until else None)
                continue
            key = self.queue.pop(self._mono())
            if key is None:
                due = self.queue.next_due()
                await self._idle(None if due is None else due - self._mono())
                continue
            # Orders that just changed or left a list go before the round-robin refresh.
            token = PRIORITY.set(PRIORITY_URGENT if self.queue.last_was_urgent
                                 else PRIORITY_ROUTINE)
            try:
                await self._poll_one(key)
            except Exception:  # the loop must survive anything one order's answer does
                self.log.exception("per-order poll of %s failed unexpectedly", key[2])
            finally:
                PRIORITY.reset(token)
                self.queue.polled(key, self._mono())
                self.completed += 1

    async def _idle(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=None if timeout is None
                                   else max(0.0, timeout))
        except TimeoutError:
            pass

    async def _poll_one(self, key: tuple[str, str, str]) -> None:
        _, account_id, order_id = key
        try:
            found = await self.adapter.fetch_order(account_id, order_id)
        except BrokerError as err:
            now = self._clock()
            if isinstance(err, BrokerAuthError | BrokerRateLimited):
                await self._failed(err, now)
            else:
                self.errors[err.category] = self.errors.get(err.category, 0) + 1
                self.log.info("order %s: poll failed (%s): %s", order_id, err.category, err)
                self.queue.urgent(key, self._mono() + self.recheck_after())
            return
        now = self._clock()  # when the answer was read, not when the budget let us ask
        self.order_polls += 1
        self.looks += 1
        batch = Batch()
        if found is None:
            self._count_missing(self.known.get(key), key, batch, now)
        else:
            await self._apply(found, batch, now)
        if batch:
            await self._commit(batch)

    async def poll_scope(self, scope: ListScope) -> None:
        """One list call, the probes it implies, and one atomic commit."""
        self.polls += 1
        try:
            result = await self.adapter.list_orders(scope)
        except BrokerError as err:
            await self._failed(err, self._clock())
            return
        now = self._clock()  # when the answer was read
        batch = Batch()
        # The baseline is per list call (CoinW lists one pair per call), so a pair or account
        # added later is also recorded silently on its first poll.
        first = scope.label not in self.known_accounts
        announce = self.announce_existing or not first
        if result.problems:
            text = f"{len(result.problems)} order(s) in {scope.label} could not be read: " \
                   f"{first_problem(result.problems)}"
            if text not in self._warned:
                self._warned.add(text)
                self.log.warning("%s", text)
        present: set[tuple[str, str, str]] = set()
        for index, snapshot in enumerate(result.orders):
            if index and not index % YIELD_EVERY:
                # A long answer (thousands of orders) must not hold the loop: requests the
                # budget already admitted would leave late and reach the broker bunched up.
                await asyncio.sleep(0)
            present.add(snapshot.key)
            await self._apply(snapshot, batch, now, announce=announce)
        await self._probe_missing(scope, present, batch, now)
        if first:
            batch.baselined.append((self.name, scope.label))
        self._recovered(batch, now)
        if batch:
            await self._commit(batch)
        if first:
            self.known_accounts.add(scope.label)
            if not announce:
                self.log.info("%s: recorded %d existing order(s) as the baseline "
                              "(set daemon.announce_existing to announce them)", scope.label,
                              len(result.orders))
        self.last_success = now
        self.looks += 1

    async def _apply(self, snapshot: OrderSnapshot, batch: Batch, now: datetime, *,
                     announce: bool = True) -> None:
        previous = self.known.get(snapshot.key)
        if announce and previous is not None and not previous.final and (
            snapshot.status != previous.status or snapshot.filled_qty != previous.filled_qty
        ):
            try:
                snapshot = await self.adapter.refine(previous, snapshot)
            except BrokerError as err:
                self.log.info("could not read details of order %s (%s); using the list answer",
                              snapshot.order_id, err)
        result = diff(previous, snapshot, detected_at=now, announce=announce)
        for warning in result.warnings:
            if warning not in self._warned:  # once per distinct problem, not every poll
                self._warned.add(warning)
                self.log.warning("%s", warning)
        if result.snapshot is not None and self._pending:
            self._judge(snapshot.key, previous, result.snapshot, batch, now)
        if result.snapshot is not None and result.snapshot != previous:
            batch.snapshots.append(result.snapshot)
            self.known[snapshot.key] = result.snapshot
            self._requeue(snapshot.key, result.snapshot, changed=previous is not None)
        elif previous is not None and self.missing.get(snapshot.key):
            batch.seen.append(snapshot.key)
        self.missing.pop(snapshot.key, None)
        batch.events.extend(result.events)

    def _requeue(self, key: tuple[str, str, str], snapshot: OrderSnapshot, *,
                 changed: bool) -> None:
        """Keep the per-order queue in step with what we now know of an order."""
        if not self.adapter.supports_fetch:
            return
        if snapshot.final:
            self.queue.discard(key)
            return
        if not self.adapter.polls_each_order:
            # The list calls report this order's next change; spending the shared budget on
            # re-reading it would only slow the lists down.
            return
        self.queue.add(key, self._mono())
        if changed or snapshot.status in _IN_FLIGHT:
            self.queue.urgent(key, self._mono() + self.recheck_after())
            self._wake.set()

    async def _probe_missing(self, scope: ListScope, present: set[tuple[str, str, str]],
                             batch: Batch, now: datetime) -> None:
        """Orders we track that the list no longer shows: confirm before concluding."""
        absent = [s for key, s in self.known.items()
                  if key not in present and not s.final and scope.covers(s)
                  and self.missing.get(key, 0) < self.stale_after]
        for snapshot in absent:
            if self._too_old(snapshot, now):
                self.missing[snapshot.key] = self.stale_after
                batch.missing[snapshot.key] = self.stale_after
                batch.stale.append(snapshot.key)
                self.log.warning("order %s is older than the broker answers for; retiring it",
                                 snapshot.order_id)
                batch.events.append(system_event(
                    SystemScene.ORDER_RETIRED, broker=self.name, account_id=snapshot.account_id,
                    order_id=snapshot.order_id, detected_at=now, discriminator="retired",
                    message=(f"order {snapshot.order_id} ({snapshot.symbol}, last seen "
                             f"{snapshot.status.value}) is older than the broker reports on; "
                             "poller stopped tracking it"),
                ))
                continue
            if self.adapter.supports_fetch:
                # Confirm with the per-order call before concluding anything.
                self.queue.urgent(snapshot.key, self._mono())
                self._wake.set()
                continue
            self._count_missing(snapshot, snapshot.key, batch, now)

    def _count_missing(self, snapshot: OrderSnapshot | None, key: tuple[str, str, str],
                       batch: Batch, now: datetime) -> None:
        """One more poll in which the broker did not report an order we track."""
        count = self.missing.get(key, 0) + 1
        self.missing[key] = count
        if snapshot is None:
            if count == self.stale_after:
                self.log.warning("watched order %s is unknown to the broker", key[2])
            return
        batch.missing[key] = count
        if count < self.stale_after:
            if self.adapter.supports_fetch:
                self.queue.urgent(key, self._mono() + self.recheck_after())
            return
        self.queue.discard(key)
        batch.stale.append(key)
        self.log.warning("order %s has been missing for %d polls; marking it stale",
                         snapshot.order_id, count)
        batch.events.append(system_event(
            SystemScene.ORDER_STALE, broker=self.name, account_id=snapshot.account_id,
            order_id=snapshot.order_id, detected_at=now,
            discriminator=iso(snapshot.updated_at) or snapshot.broker_status,
            message=(f"order {snapshot.order_id} ({snapshot.symbol}) was last seen "
                     f"{snapshot.status.value} and is no longer reported by the broker; "
                     "it is not assumed filled or cancelled"),
        ))

    # -- order actions ---------------------------------------------------------------------

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
        key = (self.name, row.account_id or self._account_of(row.order_id), row.order_id)
        known = self.known.get(key) or self._find(row.order_id)
        if known is None and self.adapter.supports_fetch:
            try:
                known = await self.adapter.fetch_order(key[1], row.order_id)
            except BrokerError as err:
                return Outcome(False, "", f"could not read the order first: {err}")
            if known is not None:
                batch = Batch()
                await self._apply(known, batch, self._clock())
                if batch:
                    await self._commit(batch)
                known = self.known.get(known.key, known)
        if known is None:
            return Outcome(False, "", f"order {row.order_id} is not known on {self.name}")
        key = known.key
        failed = SceneType.MODIFY_FAILED if row.kind == "replace" else SceneType.CANCEL_FAILED
        if known.final:
            return Outcome(False, "", f"order {row.order_id} is already {known.status.value}")
        problem = self.adapter.check_action(known, row.kind, qty, price)
        if problem:
            return Outcome(False, "", problem)
        loop = asyncio.get_running_loop()
        pending = Pending(row, qty, price, loop.create_future())
        if pending.satisfied(known):
            return Outcome(True, "", "the order already shows the requested values")
        self._pending[key] = pending
        try:
            async with self._send_lock:
                sent = await self._send_action(row, self.known.get(key, known), qty, price)
            if sent is not None:  # refused by the broker
                await self._commit(Batch(events=[action_event(
                    self.known.get(key, known), failed, row.id, sent, self._clock())]))
                return Outcome(False, failed.value, sent)
            await self._store_action_state(row, "sent")
            # Give up only after the broker was actually looked at a few times without showing
            # the change (a busy budget can delay those looks well past VERIFY_WITHIN), and
            # never later than VERIFY_AT_MOST.
            started, looks = loop.time(), self.looks
            while not pending.future.done() and not (
                    (loop.time() - started >= VERIFY_WITHIN and self.looks - looks >= 3)
                    or loop.time() - started >= VERIFY_AT_MOST):
                # Look at the order again: with the per-order call where orders are polled
                # one by one, else through the list (one list answer settles every pending
                # action of the connection; a finished order that left an open-orders list
                # is confirmed with the per-order call by the list poll itself).
                if self.adapter.polls_each_order:
                    self.queue.urgent(key, self._mono())
                    self._wake.set()
                elif self.on_list_wanted is not None:
                    self.on_list_wanted()
                try:
                    await asyncio.wait_for(asyncio.shield(pending.future),
                                           timeout=max(0.5, self.adapter.config.interval))
                except TimeoutError:
                    continue
            if pending.future.done():
                return pending.future.result()
            message = (f"the broker accepted the request but the order did not show it "
                       f"in {self.looks - looks} look(s) over {loop.time() - started:.0f} s")
            await self._commit(Batch(events=[action_event(
                self.known.get(key, known), failed, row.id, message, self._clock())]))
            return Outcome(False, failed.value, message)
        finally:
            self._pending.pop(key, None)

    async def _send_action(self, row: ActionRow, known: OrderSnapshot, qty: Decimal | None,
                           price: Decimal | None) -> str | None:
        """Send until the broker answers; returns its refusal text, or None when accepted."""
        for attempt in range(1, RETRIES + 1):
            await self._store_action_state(row, "sending", attempt=True)
            try:
                if row.kind == "replace":
                    await self.adapter.replace_order(known, qty=qty, price=price)
                else:
                    await self.adapter.cancel_order(known)
                return None
            except BrokerRejected as err:
                current = self.known.get(known.key, known)
                if row.kind == "cancel" and current.final:
                    return f"{err} (the order is {current.status.value})"
                return str(err)
            except BrokerAuthError as err:
                await self._failed(err, self._clock())
                return str(err)
            except BrokerError as err:
                # "order is processing, try later", a rate-limit pause, a network error:
                # retried through the budget (replace and cancel are safe to repeat).
                self.log.info("%s of order %s not accepted yet (attempt %d): %s", row.kind,
                              row.order_id, attempt, err)
                if err.code not in PROCESSING_CODES:
                    await asyncio.sleep(min(5.0, 0.5 * attempt))
        return f"gave up after {RETRIES} attempts (broker busy or unreachable)"

    async def _store_action_state(self, row: ActionRow, state: str, *,
                                  attempt: bool = False) -> None:
        if self.on_action_state is not None:
            await self.on_action_state(row.id, state, attempt)

    def _find(self, order_id: str) -> OrderSnapshot | None:
        return next((s for s in self.known.values() if s.order_id == order_id), None)

    def _account_of(self, order_id: str) -> str:
        found = self._find(order_id)
        if found is not None:
            return found.account_id
        scopes = self.adapter.scopes()
        return scopes[0].account_id if scopes else ""

    def _judge(self, key: tuple[str, str, str], previous: OrderSnapshot | None,
               snapshot: OrderSnapshot, batch: Batch, now: datetime) -> None:
        """Settle a pending action from a new snapshot (before its events are queued)."""
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            return
        kind = pending.row.kind
        if pending.satisfied(snapshot):
            scene = "MODIFY_SUCCESS" if kind == "replace" else "CANCEL_SUCCESS"
            pending.future.set_result(Outcome(True, scene, f"the broker shows the order "
                                                           f"{snapshot.status.value}"))
        elif snapshot.final:
            failed = SceneType.MODIFY_FAILED if kind == "replace" else SceneType.CANCEL_FAILED
            message = f"the order was {snapshot.status.value} before the {kind} took effect"
            # Announced before the order's own final event (CANCEL_FAILED, then FINAL_FILLED).
            batch.events.append(action_event(snapshot, failed, pending.row.id, message, now))
            pending.future.set_result(Outcome(False, failed.value, message))

    def _too_old(self, snapshot: OrderSnapshot, now: datetime) -> bool:
        limit = self.adapter.retire_after
        placed = snapshot.placed_at
        return limit is not None and placed is not None and (
            (now - placed).total_seconds() > limit)

    def _breaker_open(self) -> bool:
        """True while a connection that kept failing is left alone for a while."""
        if not self._breaker_until:
            return False
        if self._mono() < self._breaker_until:
            return True
        self._breaker_until = 0.0  # half-open: the next poll is the trial
        return False

    async def _failed(self, err: BrokerError, now: datetime) -> None:
        category = err.category
        self.errors[category] = self.errors.get(category, 0) + 1
        self._failures += 1
        if isinstance(err, BrokerRateLimited):
            self.rate_limit_answers += 1
        if self._failures >= BREAKER_FAILURES and not isinstance(err, BrokerAuthError):
            self._breaker_until = self._mono() + BREAKER_OPEN_SECONDS
            self.log.warning("%d failed polls in a row; pausing this connection for %g s",
                             self._failures, BREAKER_OPEN_SECONDS)
        batch = Batch()
        if isinstance(err, BrokerAuthError):
            self.stopped_reason = str(err)
            self.log.error("credentials refused; polling of this connection stops until the "
                           "config is fixed and poller reloaded: %s", err)
            batch.events.append(system_event(
                SystemScene.BROKER_AUTH_FAILED, broker=self.name, detected_at=now,
                discriminator=self._episode_start("auth", now),
                message=f"{self.name}: the broker refused the credentials ({err}); "
                        "polling of this connection has stopped",
            ))
        elif isinstance(err, BrokerRateLimited):
            start = self._episode.get("rate_limited")
            pause = f"; paused for {err.retry_after:g} s" if err.retry_after else ""
            if start is None:
                self.log.error("the broker rate-limited us%s (this should not happen: "
                               "check other programs using this key): %s", pause, err)
                batch.events.append(system_event(
                    SystemScene.BROKER_RATE_LIMITED, broker=self.name, detected_at=now,
                    discriminator=self._episode_start("rate_limited", now),
                    message=f"{self.name}: rate-limited by the broker{pause}: {err}",
                ))
            else:
                self.log.info("still rate-limited: %s", err)
        else:
            episode = self._episode.get(category)
            if episode is None:
                self._episode_start(category, now)
                self.log.warning("poll failed (%s): %s", category, err)
            else:
                self.log.debug("poll failed again (%s): %s", category, err)
            first = min(self._episode.values())
            if (not self._unreachable_announced
                    and self._failures >= UNREACHABLE_AFTER_FAILURES
                    and (now - first).total_seconds() >= UNREACHABLE_AFTER_SECONDS):
                self._unreachable_announced = True
                self.log.error("broker unreachable since %s (%d failed polls)", iso(first),
                               self._failures)
                batch.events.append(system_event(
                    SystemScene.BROKER_UNREACHABLE, broker=self.name, detected_at=now,
                    discriminator=iso(first) or "",
                    message=f"{self.name}: no successful poll since {iso(first)} "
                            f"({self._failures} failures, last: {err})",
                ))
        if batch:
            await self._commit(batch)

    def _episode_start(self, category: str, now: datetime) -> str:
        start = self._episode.setdefault(category, now)
        return iso(start) or ""

    def _recovered(self, batch: Batch, now: datetime) -> None:
        if self._unreachable_announced:
            first = min(self._episode.values())
            batch.events.append(system_event(
                SystemScene.BROKER_RECOVERED, broker=self.name, detected_at=now,
                discriminator=iso(first) or "",
                message=f"{self.name}: polling works again (failing since {iso(first)})",
            ))
            self.log.info("broker reachable again")
        elif self._episode:
            self.log.info("poll succeeded again")
        self._episode.clear()
        self._failures = 0
        self._unreachable_announced = False
