"""One broker connection, assembled: its order book, error coordinator, poller, per-order
loop and order actions.

:class:`Tracker` only wires the parts together and answers for them (counters for status
lines, metrics and tests); each job lives in its own module:

* :mod:`poller.orderbook` — what the connection knows of its orders (changes after commits);
* :mod:`poller.polling` — list calls and per-order answers, diffed, probed, committed;
* :mod:`poller.drain` — the per-order poll loop at the budget's pace;
* :mod:`poller.coordinator` — broker errors sorted into stop-and-tell or retry;
* :mod:`poller.actions` — replaces and cancels sent within the budget and verified.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from poller.actions import ActionExecutor, PendingActions, RecordState
from poller.adapter import BrokerAdapter, RequestKind
from poller.coordinator import Coordinator, Episode
from poller.drain import OrderDrain
from poller.errors import BrokerAuthError, BrokerError
from poller.events import system_event
from poller.logsetup import ConnectionLog
from poller.models import OrderSnapshot, SystemScene, iso, utcnow
from poller.orderbook import Key, OrderBook
from poller.polling import Commit, ConnectionPoller, Watched
from poller.pollqueue import OrderQueue
from poller.pushrunner import PushRunner
from poller.ratelimit import PRIORITY_ROUTINE, PRIORITY_URGENT
from poller.records import Batch

logger = logging.getLogger(__name__)


class Tracker:
    """Polls one broker connection, commits what changed, and runs its order actions.

    :param poll_soon: ask for an early list poll (an action waits for its outcome on a
        connection whose orders are seen through the list).
    :param record_state: store an action's progress (action id, state, new attempt?).
    """

    def __init__(
        self,
        adapter: BrokerAdapter,
        *,
        commit: Commit,
        book: OrderBook,
        announce_existing: bool,
        stale_after: int,
        watched: Watched | None = None,
        poll_soon: Callable[[], None] | None = None,
        record_state: RecordState,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        repeat_interval: float = 4 * 3600.0,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.book = book
        self.log = ConnectionLog(logger, {"connection": self.name})
        self.queue: OrderQueue[Key] = OrderQueue()
        self._wake = asyncio.Event()
        self._mono = monotonic
        self._poll_soon = poll_soon
        self.coordinator = Coordinator(self.name, log=self.log, monotonic=monotonic,
                                       repeat_interval=repeat_interval)
        self.pending = PendingActions()
        self.poller = ConnectionPoller(
            adapter, book, self.coordinator, self.queue, commit=commit, wake=self._wake.set,
            judge=self.pending.judge, announce_existing=announce_existing,
            stale_after=stale_after, watched=watched, clock=clock, monotonic=monotonic,
            log=self.log)
        self.drain = OrderDrain(
            self.name, self.queue, self._wake, self.poller.poll_order, self.coordinator,
            stop_within=adapter.config.timeout + 1, in_flight=adapter.config.max_in_flight,
            monotonic=monotonic, log=self.log, ready_in=self._detail_ready_in(adapter))
        self.actions = ActionExecutor(
            adapter, book, self.poller, self.coordinator, self.pending,
            look_again=self._look_again, record_state=record_state,
            clock=clock)
        #: List polls finished, whatever their outcome (with the drain's: the heartbeat).
        self.list_completed = 0
        self.poller.poll_soon = poll_soon
        #: The push subscription, where the broker pushes and the config allows it.
        self.push: PushRunner | None = None
        if adapter.push_available() is None:
            self.push = PushRunner(adapter, apply=self.poller.apply_push,
                                   on_change=self._push_changed,
                                   on_auth_failed=self._push_refused,
                                   on_refused=self._push_stopped, log=self.log,
                                   monotonic=monotonic)

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the push subscription (where there is one) and the per-order poll loop
        (connections with a per-order call only)."""
        if self.push is not None:
            self.push.start()
        if not self.adapter.supports_fetch or self.drain.running:
            return
        if self.adapter.polls_each_order:
            for key, snapshot in self.book.known.items():
                if not snapshot.final and self.book.missing.get(key, 0) < \
                        self.poller.stale_after:
                    self.queue.add(key)
        self.drain.start()

    async def poll(self) -> None:
        """Run every list call of the connection once (the scheduler's job)."""
        try:
            await self.poller.poll()
        finally:
            self.list_completed += 1

    async def stop(self) -> None:
        """Close the push stream; finish the per-order poll in progress (bounded), then stop."""
        if self.push is not None:
            await self.push.stop()
        await self.drain.stop()

    @staticmethod
    def _detail_ready_in(adapter: BrokerAdapter) -> Callable[[bool], float] | None:
        """How long until the budget would admit the adapter's next per-order request
        (urgent or round-robin), for the drain; None without a per-order call."""
        groups = adapter.request_groups.get(RequestKind.DETAIL)
        if not groups:
            return None
        def ready_in(urgent: bool) -> float:
            return adapter.budget.admit_in(groups,
                                           PRIORITY_URGENT if urgent else PRIORITY_ROUTINE)

        return ready_in

    def _push_changed(self, up: bool) -> None:
        """The list cadence follows the stream: slow while it is up; at a drop, full cadence
        at once and a list poll now, to catch up what the stream missed."""
        self.poller.push_up = up
        if not up and self._poll_soon is not None:
            self._poll_soon()

    async def _push_refused(self, err: BrokerAuthError) -> None:
        await self.poller.commit(Batch(events=[system_event(
            SystemScene.PUSH_REFUSED, broker=self.name, detected_at=utcnow(),
            discriminator=iso(utcnow()) or "",
            message=f"{self.name}: the push stream refused the credentials ({err}); polling "
                    "goes on at full cadence. Fix the key, then `systemctl reload poller`")]))

    async def _push_stopped(self, err: BrokerError) -> None:
        # An error the broker's own SDK does not retry (a wrong push_url, say): one event,
        # not a reconnect loop; it stays stopped until a reload.
        await self.poller.commit(Batch(events=[system_event(
            SystemScene.PUSH_REFUSED, broker=self.name, detected_at=utcnow(),
            discriminator=iso(utcnow()) or "",
            message=f"{self.name}: the push stream ended with an error its broker's SDK does "
                    f"not retry ({err}); polling goes on at full cadence. Check push_url, "
                    "then `systemctl reload poller`")]))

    def _look_again(self, key: Key) -> None:
        """Read an order again soon: per order where orders are polled one by one, else
        through the list (one list answer settles every pending action of the connection;
        a finished order that left an open-orders list is confirmed per order by the list
        poll itself)."""
        if self.adapter.polls_each_order:
            self.queue.urgent(key, self._mono())
            self._wake.set()
        elif self._poll_soon is not None:
            self._poll_soon()

    # -- what status lines, metrics and tests read -------------------------------------

    @property
    def known(self) -> dict[Key, OrderSnapshot]:
        """The last committed snapshot of every order."""
        return self.book.known

    @property
    def known_accounts(self) -> set[str]:
        """List scopes whose baseline has been recorded."""
        return self.book.baselined

    @property
    def open_orders(self) -> int:
        """Orders of this connection that can still change."""
        return self.book.open_orders

    @property
    def stopped_reason(self) -> str | None:
        """Why polling stopped (credentials refused), or None."""
        return self.coordinator.stopped_reason

    @property
    def episode(self) -> Episode | None:
        """The run of failed polls under way, or None."""
        return self.coordinator.episode

    @property
    def errors(self) -> dict[str, int]:
        """Failed polls by error category."""
        return self.coordinator.errors

    @property
    def rate_limit_answers(self) -> int:
        """Rate-limit answers received (should stay 0)."""
        return self.coordinator.rate_limit_answers

    @property
    def last_success(self) -> datetime | None:
        """When a list call last succeeded."""
        return self.coordinator.last_success

    @property
    def polls(self) -> int:
        """List calls made."""
        return self.poller.polls

    @property
    def order_polls(self) -> int:
        """Per-order calls answered."""
        return self.poller.order_polls

    @property
    def completed(self) -> int:
        """Polls finished, list and per-order, whatever their outcome."""
        return self.list_completed + self.drain.completed

