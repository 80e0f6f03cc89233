"""One broker connection's polling: list calls, probes, diff, and the atomic commit.

A :class:`Tracker` remembers the last snapshot of every order of its connection (loaded from
the store at start), turns each list answer into events with :func:`poller.diff.diff`, and
hands one :class:`~poller.store.Batch` per list call to the store. Broker errors are sorted
here: auth stops the connection, rate limits and long outages raise one operator event per
episode, and nothing a broker answers can kill the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any

from poller.brokers.base import BrokerAdapter, ListScope, first_problem
from poller.diff import diff
from poller.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerRateLimited,
)
from poller.models import OrderEvent, OrderSnapshot, SystemScene, iso, system_event, utcnow
from poller.store import Batch

logger = logging.getLogger(__name__)

Commit = Callable[[Batch], Awaitable[list[OrderEvent]]]
Watched = Callable[[], Awaitable[list[tuple[str, str]]]]

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

    @property
    def open_orders(self) -> int:
        """Orders of this connection that can still change."""
        return sum(1 for s in self.known.values() if not s.final)

    async def poll(self) -> None:
        """Run every list call of the connection once (an APScheduler job)."""
        if self.stopped_reason:
            return
        for scope in self.adapter.scopes():
            if self.stopped_reason:
                return
            await self.poll_scope(scope)
        if self._watched is not None and self.adapter.supports_fetch and not self.stopped_reason:
            await self.poll_watched(await self._watched())

    async def poll_watched(self, watched: list[tuple[str, str]]) -> None:
        """Fetch orders added with ``poller watch`` that no list call reported."""
        now = self._clock()
        batch = Batch()
        for account_id, order_id in watched:
            key = (self.name, account_id, order_id)
            known = self.known.get(key)
            if (known is not None and known.final) or self.missing.get(key, 0) >= \
                    self.stale_after:
                continue
            try:
                found = await self.adapter.fetch_order(account_id, order_id)
            except BrokerError as err:
                if isinstance(err, BrokerAuthError | BrokerRateLimited):
                    await self._failed(err, now)
                    return
                self.log.info("watched order %s: %s", order_id, err)
                continue
            if found is None:
                count = self.missing.get(key, 0) + 1
                self.missing[key] = count
                if count == self.stale_after:
                    self.log.warning("watched order %s is unknown to the broker", order_id)
                continue
            # A watched order is announced from its first sighting: the user asked for it.
            await self._apply(found, batch, now)
        if batch:
            await self._commit(batch)

    async def poll_scope(self, scope: ListScope) -> None:
        """One list call, the probes it implies, and one atomic commit."""
        now = self._clock()
        self.polls += 1
        try:
            result = await self.adapter.list_orders(scope)
        except BrokerError as err:
            await self._failed(err, now)
            return
        batch = Batch()
        first = scope.account_id not in self.known_accounts
        announce = self.announce_existing or not first
        if result.problems:
            self.log.warning("%d order(s) in %s could not be read: %s", len(result.problems),
                             scope.label, first_problem(result.problems))
        present: set[tuple[str, str, str]] = set()
        for snapshot in result.orders:
            present.add(snapshot.key)
            await self._apply(snapshot, batch, now, announce=announce)
        await self._probe_missing(scope, present, batch, now)
        if first:
            batch.baselined.append((self.name, scope.account_id))
        self._recovered(batch, now)
        if batch:
            await self._commit(batch)
        if first:
            self.known_accounts.add(scope.account_id)
            if not announce:
                self.log.info("account %s: recorded %d existing order(s) as the baseline "
                              "(set daemon.announce_existing to announce them)", scope.account_id,
                              len(result.orders))
        self.last_success = now

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
            self.log.warning("%s", warning)
        if result.snapshot is not None and result.snapshot != previous:
            batch.snapshots.append(result.snapshot)
            self.known[snapshot.key] = result.snapshot
        elif previous is not None and self.missing.get(snapshot.key):
            batch.seen.append(snapshot.key)
        self.missing.pop(snapshot.key, None)
        batch.events.extend(result.events)

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
            found: OrderSnapshot | None = None
            if self.adapter.supports_fetch:
                try:
                    found = await self.adapter.fetch_order(snapshot.account_id, snapshot.order_id)
                except BrokerError as err:
                    self.log.info("probe of order %s failed (%s); will retry",
                                  snapshot.order_id, err)
                    continue
            if found is not None:
                await self._apply(found, batch, now)
                continue
            count = self.missing.get(snapshot.key, 0) + 1
            self.missing[snapshot.key] = count
            batch.missing[snapshot.key] = count
            if count >= self.stale_after:
                batch.stale.append(snapshot.key)
                self.log.warning("order %s has been missing for %d polls; marking it stale",
                                 snapshot.order_id, count)
                batch.events.append(system_event(
                    SystemScene.ORDER_STALE, broker=self.name, account_id=snapshot.account_id,
                    order_id=snapshot.order_id, detected_at=now,
                    discriminator=iso(snapshot.updated_at) or snapshot.broker_status,
                    message=(f"order {snapshot.order_id} ({snapshot.symbol}) was last seen "
                             f"{snapshot.status.value} and is no longer reported by the "
                             f"broker; it is not assumed filled or cancelled"),
                ))

    def _too_old(self, snapshot: OrderSnapshot, now: datetime) -> bool:
        limit = self.adapter.retire_after
        placed = snapshot.placed_at
        return limit is not None and placed is not None and (
            (now - placed).total_seconds() > limit)

    async def _failed(self, err: BrokerError, now: datetime) -> None:
        category = err.category
        self.errors[category] = self.errors.get(category, 0) + 1
        self._failures += 1
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
