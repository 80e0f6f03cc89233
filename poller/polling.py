"""One connection's polls: list calls and per-order answers, diffed, probed, committed.

:class:`ConnectionPoller` turns each answer into one :class:`~poller.store.Batch`: the diff of
every order against what the :class:`~poller.orderbook.OrderBook` knows (seeing the batch's
own pending snapshots first), probes of orders a list stopped showing, retirement of orders
older than the broker answers for, and stale marking. The batch is committed in one
transaction; only then do the book, the per-order queue and pending actions change.
Broker errors go to the connection's :class:`~poller.coordinator.Coordinator`. A push
stream's updates (:meth:`ConnectionPoller.apply_push`) go through the same diff and commit.

Over 400 lines: every way an answer about an order reaches the book — list calls, per-order
calls, pushed updates, probes, retirement and stale marking — shares the one diff-and-commit
path and the book's batch view; splitting them would split that path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from poller.adapter import BrokerAdapter, ListScope, first_problem
from poller.coordinator import Coordinator
from poller.diff import diff
from poller.errors import BrokerError, StoreError
from poller.events import OrderEvent, system_event
from poller.logsetup import ConnectionLog
from poller.models import OrderSnapshot, OrderStatus, SystemScene, iso, utcnow
from poller.orderbook import Key, OrderBook
from poller.pollqueue import OrderQueue
from poller.pushfeed import PushedOrder, merge
from poller.records import Batch

logger = logging.getLogger(__name__)

Commit = Callable[[Batch], Awaitable[list[OrderEvent]]]
Watched = Callable[[], Awaitable[list[tuple[str, str]]]]

#: Pauses before a failed commit is tried again (seconds), for faults that pass.
COMMIT_BACKOFF = (0.5, 1.0, 2.0)
#: Orders diffed between two yields to the event loop.
YIELD_EVERY = 100
#: Statuses in which an order is about to change: polled again soon.
IN_FLIGHT = frozenset({OrderStatus.PENDING, OrderStatus.PENDING_CANCEL,
                       OrderStatus.PENDING_REPLACE})


class Judge(Protocol):
    """Settles pending order actions from a new snapshot (see :mod:`poller.actions`)."""

    def __call__(self, key: Key, snapshot: OrderSnapshot, batch: Batch,
                 now: datetime) -> None: ...


#: The longest wait before an order in flight (an action pending), or one whose poll failed,
#: is looked at again: someone is waiting on the outcome, whatever the round-robin's period.
RECHECK_CAP = 5.0


def recheck_after(queued: int, rate: float, *, cap: float | None = RECHECK_CAP) -> float:
    """Seconds before an order that just changed is polled again.

    Four ninths of the round-robin period (``queued`` orders at ``rate`` per-order calls a
    second), so an order that is moving is looked at again at least twice as soon as its
    turn would come (it then goes to the back of the round-robin), but at least one budget
    slot, and at most ``cap`` (``None``: no cap). Not sooner: each re-poll is a request the
    round-robin of the others goes without, and a change of an order at a random moment
    waits E[g²]/2E[g] over its gaps g, which every short gap raises. Measured in
    ``bench.run`` at 50 orders and two fills a second (0–300 ms answers, 300 s, a list call
    every 60 s as well): a quarter period made the mean latency about 4 % longer than two
    fifths; four ninths waits 1.029 × N/(2R) against two fifths' 1.040 × (from the reads'
    arrival times) and still re-polls 2.3 × sooner than the round-robin (2.4 × at two
    fifths); per-order reads alone, four ninths waits 1.06 ×. A change is re-polled
    without a cap: at 500 orders a 5 s cap made each of the two fills a second cost almost
    a whole read of the round-robin (see :meth:`ConnectionPoller._requeue_effect`). The budget
    spreads the round-robin evenly, so a re-poll leaves within a slot of its due time.
    """
    wait = max(1.0 / rate, queued / rate * 4 / 9) if rate else RECHECK_CAP
    return wait if cap is None else min(cap, wait)


class ConnectionPoller:
    """Polls one broker connection and commits what changed."""

    def __init__(
        self,
        adapter: BrokerAdapter,
        book: OrderBook,
        coordinator: Coordinator,
        queue: OrderQueue[Key],
        *,
        commit: Commit,
        wake: Callable[[], None],
        judge: Judge | None = None,
        announce_existing: bool,
        stale_after: int,
        watched: Watched | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        log: ConnectionLog | None = None,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.book = book
        self.coordinator = coordinator
        self.queue = queue
        self.announce_existing = announce_existing
        self.stale_after = stale_after
        self._commit = commit
        self._wake = wake
        self._judge = judge
        self._watched = watched
        self._clock = clock
        self._mono = monotonic
        self.log = log or ConnectionLog(logger, {"connection": self.name})
        #: List calls made, per-order calls answered, and successful reads of the broker.
        self.polls = 0
        self.order_polls = 0
        self.looks = 0
        self._warned: set[str] = set()
        #: While a push stream is up, list calls only reconcile, every reconcile_interval.
        self.push_up = False
        #: Run a list poll soon (set by the tracker): how a push without a per-order call
        #: is confirmed.
        self.poll_soon: Callable[[], None] | None = None
        self.pushed = 0
        self._last_list = float("-inf")

    def recheck_after(self, *, cap: float | None = RECHECK_CAP) -> float:
        """Seconds before an order that just changed is polled again (see
        :func:`recheck_after`)."""
        return recheck_after(len(self.queue), self.adapter.detail_rate(), cap=cap)

    # -- list calls --------------------------------------------------------------------

    async def poll(self) -> None:
        """Run every list call of the connection once (an APScheduler job).

        A connection stopped for refused credentials makes one list call, and only when its
        probe is due (:meth:`Coordinator.probe_due`); if that works, polling goes on.
        """
        if self.coordinator.stopped_reason is not None:
            scopes = self.adapter.scopes()
            if scopes and self.coordinator.probe_due():
                await self.poll_scope(scopes[0])
            return
        if self.coordinator.breaker_open():
            return
        now = self._mono()
        if self.push_up and now - self._last_list < self.adapter.config.reconcile_interval:
            return  # the stream reports changes; list calls only reconcile
        self._last_list = now
        for scope in self.adapter.scopes():
            if self.coordinator.stopped_reason:
                return
            await self.poll_scope(scope)
        if self._watched is not None and self.adapter.supports_fetch \
                and not self.coordinator.stopped_reason:
            now = self._mono()
            for account_id, order_id in await self._watched():
                key = (self.name, account_id, order_id)
                known = self.book.known.get(key)
                if (known is None or not known.final) and \
                        self.book.missing.get(key, 0) < self.stale_after:
                    self.queue.urgent(key, now)
            self._wake()

    async def poll_scope(self, scope: ListScope) -> None:
        """One list call, the probes it implies, and one atomic commit."""
        self.polls += 1
        try:
            result = await self.adapter.list_orders(scope)
        except BrokerError as err:
            await self._commit_or_later(Batch(events=self.coordinator.failed(err,
                                                                             self._clock())))
            return
        now = self._clock()  # when the answer was read, not when the budget let us ask
        batch = Batch()
        # The baseline is per list call (CoinW lists one pair per call), so a pair or account
        # added later is also recorded silently on its first poll.
        first = scope.label not in self.book.baselined
        announce = self.announce_existing or not first
        if result.problems:
            self._warn_once(f"{len(result.problems)} order(s) in {scope.label} could not be "
                            f"read: {first_problem(result.problems)}")
        present: set[Key] = set()
        for index, snapshot in enumerate(result.orders):
            if index and not index % YIELD_EVERY:
                # A long answer (thousands of orders) must not hold the loop: requests the
                # budget already admitted would leave late and reach the broker bunched up.
                await asyncio.sleep(0)
            present.add(snapshot.key)
            await self.apply(snapshot, batch, now, announce=announce)
        self._probe_missing(scope, present, batch, now)
        if first:
            batch.baselined.append((self.name, scope.label))
        was_stopped = self.coordinator.stopped_reason is not None
        batch.events.extend(self.coordinator.succeeded(now))
        if not await self._commit_or_later(batch):
            return
        if was_stopped:
            self._wake()  # the per-order loop idles while the connection is stopped
        if first and not announce:
            self.log.info("%s: recorded %d existing order(s) as the baseline "
                          "(set daemon.announce_existing to announce them)", scope.label,
                          len(result.orders))
        self.looks += 1

    # -- per-order calls ---------------------------------------------------------------

    async def poll_order(self, key: Key) -> None:
        """Read one order with the per-order call and commit what changed."""
        _, account_id, order_id = key
        try:
            found = await self.adapter.fetch_order(account_id, order_id)
        except BrokerError as err:
            if self.coordinator.concerns_connection(err):
                await self._commit_or_later(Batch(events=self.coordinator.failed(
                    err, self._clock())))
            else:
                self.coordinator.order_failed(err)
                self.log.info("order %s: poll failed (%s): %s", order_id, err.category, err)
                self.queue.urgent(key, self._mono() + self.recheck_after())
            return
        now = self._clock()  # when the answer was read, not when the budget let us ask
        self.order_polls += 1
        self.looks += 1
        batch = Batch()
        if found is None:
            self._count_missing(self.book.view(key), key, batch, now)
        else:
            await self.apply(found, batch, now)
        if not await self._commit_or_later(batch):
            # Not in memory either: look at this order again soon, not a round-robin later.
            self.queue.urgent(key, self._mono() + self.recheck_after())

    # -- pushed updates ----------------------------------------------------------------

    async def apply_push(self, update: PushedOrder) -> None:
        """Diff a pushed update into the orders like a poll's answer, and commit.

        An update for an order poller does not know, or one that does not fit what it knows
        (:func:`poller.pushfeed.merge`), is not trusted: the order is polled to confirm.
        Events seen first by a push carry ``via = "push"``.
        """
        key = self._push_key(update)
        known = None if key is None else self.book.view(key)
        merged = None if known is None else merge(known, update)
        if key is None or merged is None:
            self._confirm(key)
            return
        self.pushed += 1
        batch = Batch()
        await self.apply(merged, batch, self._clock())
        for event in batch.events:
            event.payload["via"] = "push"
        if not await self._commit_or_later(batch):
            self._confirm(key)

    def _push_key(self, update: PushedOrder) -> Key | None:
        if update.order_id:
            return (self.name, update.account_id, update.order_id)
        if update.client_order_id:  # some pushes name the order by the client's id only
            for key, snapshot in self.book.known.items():
                if snapshot.client_order_id == update.client_order_id and (
                        not update.account_id or snapshot.account_id == update.account_id):
                    return key
        return None

    def _confirm(self, key: Key | None) -> None:
        """Poll ``key`` (or, without a per-order call or a key, the lists) soon."""
        if key is not None and self.adapter.supports_fetch:
            self.queue.urgent(key, self._mono())
            self._wake()
        elif self.poll_soon is not None:
            self._last_list = float("-inf")
            self.poll_soon()

    # -- what an answer means ----------------------------------------------------------

    async def apply(self, snapshot: OrderSnapshot, batch: Batch, now: datetime, *,
                    announce: bool = True) -> None:
        """Diff one order's new snapshot into ``batch`` (nothing in memory changes yet)."""
        key = snapshot.key
        previous = self.book.view(key, batch)
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
            self._warn_once(warning)
        if result.snapshot is not None and self._judge is not None:
            self._judge(key, result.snapshot, batch, now)
        if result.snapshot is not None and result.snapshot != previous:
            batch.put(result.snapshot)
            batch.effects.append(self._requeue_effect(key, result.snapshot,
                                                      changed=previous is not None))
        elif previous is not None and self.book.missing_count(key, batch):
            batch.seen.append(key)
        batch.events.extend(result.events)

    def _requeue_effect(self, key: Key, snapshot: OrderSnapshot, *,
                        changed: bool) -> Callable[[], None]:
        """Keep the per-order queue in step with what we now know of an order (once the
        change is committed)."""
        def requeue() -> None:
            if not self.adapter.supports_fetch:
                return
            if snapshot.final:
                self.queue.discard(key)
                return
            if not self.adapter.polls_each_order:
                # The list calls report this order's next change; spending the shared
                # budget on re-reading it would only slow the lists down.
                return
            self.queue.add(key, self._mono())
            in_flight = snapshot.status in IN_FLIGHT
            if in_flight or changed:
                # An action's outcome is awaited: within RECHECK_CAP, however many orders.
                # A change: twice as soon as its turn, but no sooner at any N, as the
                # uniform round-robin is what keeps every other order's wait at N/(2R).
                cap = RECHECK_CAP if in_flight else None
                self.queue.urgent(key, self._mono() + self.recheck_after(cap=cap))
                self._wake()
        return requeue

    def _probe_missing(self, scope: ListScope, present: set[Key], batch: Batch,
                       now: datetime) -> None:
        """Orders we track that the list no longer shows: confirm before concluding."""
        absent = [s for key, s in self.book.known.items()
                  if key not in present and not s.final and scope.covers(s)
                  and self.book.missing.get(key, 0) < self.stale_after]
        for snapshot in absent:
            if self._too_old(snapshot, now):
                self._retire(snapshot, batch, now)
            elif self.adapter.supports_fetch:
                # Confirm with the per-order call before concluding anything.
                self.queue.urgent(snapshot.key, self._mono())
                self._wake()
            else:
                self._count_missing(snapshot, snapshot.key, batch, now)

    def _retire(self, snapshot: OrderSnapshot, batch: Batch, now: datetime) -> None:
        """Stop tracking an order older than the broker answers for (CoinW: 7 days)."""
        batch.missing[snapshot.key] = self.stale_after
        batch.stale.append(snapshot.key)
        batch.effects.append(lambda: self.queue.discard(snapshot.key))
        self.log.warning("order %s is older than the broker answers for; retiring it",
                         snapshot.order_id)
        batch.events.append(system_event(
            SystemScene.ORDER_RETIRED, broker=self.name, account_id=snapshot.account_id,
            order_id=snapshot.order_id, detected_at=now, discriminator="retired",
            message=(f"order {snapshot.order_id} ({snapshot.symbol}, last seen "
                     f"{snapshot.status.value}) is older than the broker reports on; "
                     "poller stopped tracking it"),
        ))

    def _count_missing(self, snapshot: OrderSnapshot | None, key: Key, batch: Batch,
                       now: datetime) -> None:
        """One more poll in which the broker did not report an order we track."""
        count = self.book.missing_count(key, batch) + 1
        batch.missing[key] = count
        if snapshot is None:
            if count == self.stale_after:
                self.log.warning("watched order %s is unknown to the broker", key[2])
            return
        if count < self.stale_after:
            if self.adapter.supports_fetch:
                self.queue.urgent(key, self._mono() + self.recheck_after())
            return
        batch.stale.append(key)
        batch.effects.append(lambda: self.queue.discard(key))
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

    def _too_old(self, snapshot: OrderSnapshot, now: datetime) -> bool:
        limit = self.adapter.retire_after
        placed = snapshot.placed_at
        return limit is not None and placed is not None and (
            (now - placed).total_seconds() > limit)

    def _warn_once(self, text: str) -> None:
        """Log a problem once per distinct text, not at every poll."""
        if text not in self._warned:
            self._warned.add(text)
            self.log.warning("%s", text)

    # -- the commit --------------------------------------------------------------------

    async def commit(self, batch: Batch) -> list[OrderEvent]:
        """Commit ``batch``; only once that succeeded does memory take its changes.

        A commit that fails for a reason that passes (a full disk, a lock held a while, an
        I/O error) is tried again after :data:`COMMIT_BACKOFF` pauses.

        :raises StoreError: the commit failed for good; the book, the queue and pending
            actions are as they were, so the next answer derives the same facts again.
        """
        fresh: list[OrderEvent] = []
        if batch:
            for pause in (*COMMIT_BACKOFF, None):
                try:
                    fresh = await self._commit(batch)
                    break
                except StoreError as err:
                    if pause is None or not err.transient:
                        raise
                    await asyncio.sleep(pause)
        self.book.apply(batch)
        for effect in batch.effects:
            effect()
        return fresh

    async def _commit_or_later(self, batch: Batch) -> bool:
        """Commit a poll's batch; False when the store refused (the store's health reports
        the outage once; this answer's facts come again with the next one)."""
        try:
            await self.commit(batch)
        except StoreError as err:
            self.log.debug("commit failed, the next answer will say the same: %s", err)
            return False
        return True
