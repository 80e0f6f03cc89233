"""The running daemon: store, trackers, notifiers, dispatcher, jobs and action runner.

:class:`App` owns the runtime; everything about turning a configuration into parts lives in
:mod:`poller.compose`, the scheduler's jobs in :mod:`poller.jobs`, one connection's polling in
:mod:`poller.tracker`. Every commit goes through :meth:`App.commit`: routes are computed
first, the store writes them in one transaction, then delivery is woken and observers told.

Over 400 lines: the daemon's lifecycle — start, commit, reload, cluster membership, stop —
is one sequence over the same parts (trackers, jobs, dispatcher, leases); split up, each
piece would reach into the others' fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from poller.actionqueue import ActionRunner
from poller.actions import ActionExecutor
from poller.adapter import BrokerAdapter
from poller.compose import Loaded, Validated, build_adapter, build_notifier
from poller.databaseurl import DatabaseUrl
from poller.dispatch import DeliveryPolicy, Dispatcher
from poller.errors import StoreError
from poller.events import OrderEvent, system_event
from poller.health import ErrorEpisode, pending_age, problems
from poller.jobs import PollJobs
from poller.leasekeeper import LeaseKeeper, this_instance
from poller.logsetup import Redactor
from poller.looplag import LoopLag
from poller.models import SystemScene, iso, utcnow
from poller.notifiers import Notifier
from poller.observers import ObserverQueue
from poller.orderbook import OrderBook
from poller.plugins import Plugins
from poller.records import Batch, OutboxSummary
from poller.routing import route
from poller.settings import Settings
from poller.statestore import StateStore
from poller.storehealth import Outage, StoreHealth
from poller.timetext import age_text
from poller.tracker import Tracker

logger = logging.getLogger(__name__)
T = TypeVar("T")


class App:
    """The running daemon. Build with :meth:`create`; ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings, plugins: Plugins, validated: Validated,
                 store: StateStore, redactor: Redactor) -> None:
        self.settings = settings
        self.plugins = plugins
        self.validated = validated
        self.store = store
        self.redactor = redactor
        # SQLite work stays off the loop, on one thread (the store is not shared).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.adapters: dict[str, BrokerAdapter[Any]] = {}
        self.trackers: dict[str, Tracker] = {}
        self.notifiers: list[Notifier] = []
        self.jobs: PollJobs | None = None
        self.dispatcher: Dispatcher | None = None
        self.actions: ActionRunner | None = None
        self.event_listeners: list[Callable[[list[OrderEvent]], None]] = []
        self.events_by_scene: dict[str, int] = {}
        # Snapshots for the health server's thread: each refresh binds new containers.
        self.backlog: dict[str, int] = {}
        self.outbox: dict[str, OutboxSummary] = {}
        self.connection_errors: dict[str, ErrorEpisode] = {}
        self.last_tick = time.monotonic()
        self.store_health = StoreHealth()
        self.observers = ObserverQueue(plugins)
        self.loop_lag = LoopLag()
        #: Several instances share a PostgreSQL database: the leases of this one.
        self.keeper: LeaseKeeper | None = None

    @classmethod
    def create(cls, settings: Settings, plugins: Plugins, validated: Validated, *,
               redactor: Redactor, store: StateStore) -> App:
        """Build the adapters and notifiers (one httpx client each); nothing runs yet."""
        app = cls(settings, plugins, validated, store, redactor)
        app.notifiers = [build_notifier(name, ncls, ncfg)
                         for name, (ncls, ncfg) in validated.notifiers.items()]
        for name, (bcls, bcfg) in validated.brokers.items():
            if bcfg.enabled:
                app.adapters[name] = build_adapter(name, bcls, bcfg)
        return app

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    async def commit(self, batch: Batch) -> list[OrderEvent]:
        """Route, commit atomically, then wake delivery and tell observers.

        :raises StoreError: the commit failed; nothing changed (the store's health records
            the episode: one log line and one announcement per outage, not per commit).
        """
        route(batch, self.notifiers)
        try:
            fresh: list[OrderEvent] = await self.db(self.store.commit, batch)
        except StoreError as err:
            if err.reason == "fenced" and self.keeper is not None:
                # Not an outage: another instance holds the connection now (we were paused
                # past our lease). Nothing was written; the next round stops it here.
                logger.warning("%s", err)
                self.keeper.wake()
                raise
            await self._store_failed(err)
            raise
        ended = self.store_health.succeeded()
        for event in fresh:
            self.events_by_scene[event.scene] = self.events_by_scene.get(event.scene, 0) + 1
        if fresh:
            if self.dispatcher:
                self.dispatcher.wake()
            for listener in self.event_listeners:
                listener(fresh)
            for event in fresh:
                self.observers.put(event)
        if ended is not None:
            await self._store_recovered(ended)
        return fresh

    async def _store_failed(self, err: StoreError) -> None:
        now = datetime.now(UTC)
        if not self.store_health.failed(err, now):
            await self._store_still_failing(err, now)
            return
        logger.error("%s; polling goes on and nothing is lost: the same facts are committed "
                     "once the store works again", err)
        event = system_event(
            SystemScene.STORE_FAILING, detected_at=now, discriminator=iso(now) or "",
            phase="started", count=1,
            message=f"poller cannot write its database: {err}. Polling goes on; what it "
                    "sees is recorded and announced once the database works again")
        if self.dispatcher is not None:
            # The outbox is in the store that cannot commit: this one goes out directly.
            await self.dispatcher.announce(event)

    async def _store_still_failing(self, err: StoreError, now: datetime) -> None:
        """Remind people, once per ``alert_repeat_interval``, of an outage that lasts (a
        disk left full overnight must not be one message at 3 a.m. and then silence)."""
        health = self.store_health
        outage = health.outage
        if outage is None or not health.reminder_due(
                now, self.settings.daemon.alert_repeat_interval):
            return
        hours = (now - outage.since).total_seconds() / 3600
        logger.error("still cannot write the database after %.1f h (%d failed commits): %s",
                     hours, outage.failures, err)
        event = system_event(
            SystemScene.STORE_FAILING, detected_at=now, phase="reminder",
            count=outage.failures,
            discriminator=f"{iso(outage.since)}#reminder{health.reminders}",
            message=f"poller still cannot write its database after {hours:.1f} h (since "
                    f"{iso(outage.since)}, {outage.failures} failed commits): {err}. Polling "
                    "goes on; nothing seen meanwhile is lost")
        if self.dispatcher is not None:
            await self.dispatcher.announce(event)

    async def _store_recovered(self, outage: Outage) -> None:
        now = datetime.now(UTC)
        logger.info("the database works again (failing since %s, %d failed commits)",
                    iso(outage.since), outage.failures)
        with contextlib.suppress(StoreError):
            await self.commit(Batch(events=[system_event(
                SystemScene.STORE_RECOVERED, detected_at=now,
                discriminator=iso(outage.since) or "",
                message=(f"poller can write its database again (it could not since "
                         f"{iso(outage.since)}: {outage.error}; {outage.failures} failed "
                         "commits, retried)"))]))

    # -- startup -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load state, start delivery, the action runner and the polling jobs."""
        if self.store.recovered_from is not None:
            await self.commit(Batch(events=[system_event(
                SystemScene.DATABASE_RECOVERED, detected_at=datetime.now(UTC),
                discriminator=str(self.store.recovered_from),
                message=(f"the state database was damaged and moved to "
                         f"{self.store.recovered_from}; poller started from a fresh, silent "
                         "baseline (orders are not re-announced)"))]))
        self.jobs = PollJobs()
        self.observers.start()
        self.loop_lag.start()
        if self.clustered:
            await self._join_cluster()
        else:
            for name in self.adapters:
                await self._add_tracker(name)
        self._start_dispatcher()
        self.actions = ActionRunner(self.store, self.db, self._executor_of,
                                    expiry=self.settings.daemon.action_expiry,
                                    held_only=self.clustered)
        self.actions.start()
        await self.plugins.call_observers("startup", app=self)
        for name in self.trackers:
            self._schedule(name)
        self.jobs.start()

    @property
    def clustered(self) -> bool:
        """Whether this daemon shares its (PostgreSQL) database with other instances."""
        return isinstance(self.settings.daemon.database, DatabaseUrl)

    @property
    def cluster(self) -> dict[str, Any] | None:
        """This instance and its leases (for /healthz); None for SQLite."""
        return None if self.keeper is None else self.keeper.view()

    def connection_names(self) -> set[str]:
        """Connections an order action may name (in a cluster: every enabled one)."""
        return set(self.adapters) if self.clustered else set(self.trackers)

    async def _join_cluster(self) -> None:
        for adapter in self.adapters.values():
            adapter.budget.shut_lease()  # nothing is sent before a lease says so
        self.keeper = LeaseKeeper(
            db=self.db, lease_round=self.store.lease_round, leave=self.store.leave,
            instance=this_instance(), ttl=self.settings.daemon.lease_seconds,
            connections=lambda: sorted(self.adapters),
            budget_of=lambda name: self.adapters[name].budget,
            start=self._start_connection, stop=self._stop_connection)
        await self.keeper.start()
        logger.info("instance %s joined the cluster on %s: %d instance(s), %d connection(s) "
                    "each at most", self.keeper.instance.id, self.store.location,
                    self.keeper.instances, self.keeper.target + 1)

    async def _start_connection(self, name: str) -> None:
        # Held here now: poll from the shared snapshots (no baseline again, no re-announcing).
        if name not in self.trackers and name in self.adapters:
            await self._add_tracker(name)
            if self.jobs is not None:
                self._schedule(name)
                self.jobs.poll_soon(name)
            if self.dispatcher is not None:
                self.dispatcher.wake()  # what a dead holder committed but never sent

    async def _stop_connection(self, name: str) -> None:
        # The lease is gone or handed back: stop polling (the adapter stays).
        if self.jobs is not None:
            await self.jobs.remove(name)
        tracker = self.trackers.pop(name, None)
        if tracker is not None:
            await tracker.stop()
        if self.actions is not None:
            await self.actions.drop_connection(name)

    async def _add_tracker(self, name: str) -> None:
        daemon = self.settings.daemon
        book = OrderBook(await self.db(self.store.load_orders, name),
                         await self.db(self.store.missing_counts, name),
                         await self.db(self.store.known_accounts, name))
        tracker = Tracker(
            self.adapters[name], commit=self.commit, book=book,
            announce_existing=daemon.announce_existing, stale_after=daemon.stale_after,
            watched=partial(self.db, self.store.watched, name),
            poll_soon=partial(self._poll_soon, name), record_state=self._record_action,
            repeat_interval=daemon.alert_repeat_interval,
        )
        self.trackers[name] = tracker
        tracker.start()

    def _schedule(self, name: str) -> None:
        assert self.jobs is not None
        tracker = self.trackers[name]
        self.jobs.add(name, tracker.poll, tracker.adapter.config.interval)

    def _poll_soon(self, name: str) -> None:
        if self.jobs is not None:
            self.jobs.poll_soon(name)

    def _executor_of(self, name: str) -> ActionExecutor | None:
        tracker = self.trackers.get(name)
        return None if tracker is None else tracker.actions

    async def _record_action(self, action_id: int, state: str, attempt: bool) -> None:
        # An action's progress is for people to follow; its outcome is recorded (and kept
        # until it can be) by the runner. A full disk must not stop a send half-way.
        try:
            await self.db(self.store.update_action, action_id, state, attempt=attempt)
        except StoreError as err:
            logger.debug("action %d: cannot record state %s: %s", action_id, state, err)

    def _start_dispatcher(self) -> None:
        self.dispatcher = Dispatcher(
            self.store, self.notifiers, db=self.db, commit=self.commit, redactor=self.redactor,
            policy=DeliveryPolicy(
                give_up_after=self.settings.daemon.give_up_after,
                repeat_interval=self.settings.daemon.alert_repeat_interval,
                backlog_alert_after=self.settings.daemon.backlog_alert_after))
        self.dispatcher.start()

    def wake_actions(self) -> None:
        """An action was queued through the API: run it now."""
        if self.actions is not None:
            self.actions.wake()

    # -- reload ------------------------------------------------------------------------

    async def reconfigure(self, loaded: Loaded) -> None:
        """Swap in a new, already validated configuration (SIGHUP).

        Connections whose configuration did not change keep their state, queue and budget;
        changed ones are rebuilt, removed ones stopped. Notifiers are rebuilt when their
        configuration changed (their queued deliveries stay in the outbox).
        """
        old = self.validated
        if loaded.settings.daemon.database != self.settings.daemon.database:
            logger.warning("daemon.database changed; the new path takes effect after a restart")
        self.redactor.add(loaded.validated.secrets())
        if loaded.settings.daemon.max_database_mb != self.settings.daemon.max_database_mb:
            await self.db(self.store.set_size_limit, loaded.settings.daemon.max_database_mb)
        self.settings = loaded.settings.model_copy(
            update={"daemon": loaded.settings.daemon.model_copy(
                update={"database": self.settings.daemon.database})})
        self.plugins = loaded.plugins
        self.observers.plugins = loaded.plugins
        self.validated = loaded.validated
        new = loaded.validated.brokers
        for name in list(self.adapters):
            if name not in new or new[name] != old.brokers.get(name) or not new[name][1].enabled:
                await self._remove_connection(name)
                logger.info("connection %s %s", name,
                            "removed" if name not in new else "reconfigured")
        for name, tracker in self.trackers.items():
            if tracker.push is not None:  # a refused stream: maybe the key was fixed
                tracker.push.retry_now()
            if tracker.stopped_reason:  # kept its config, maybe the key was fixed: try now
                tracker.coordinator.resume()
                self._poll_soon(name)
        for name, (bcls, bcfg) in new.items():
            if name in self.adapters or not bcfg.enabled:
                continue
            self.adapters[name] = build_adapter(name, bcls, bcfg)
            if self.keeper is not None:
                self.adapters[name].budget.shut_lease()
                self.keeper.wake()  # the next round may take it
                continue
            await self._add_tracker(name)
            if self.jobs is not None:
                self._schedule(name)
        if loaded.validated.notifiers != old.notifiers:
            await self._rebuild_notifiers(old, loaded.validated)

    async def _remove_connection(self, name: str) -> None:
        if self.keeper is not None:
            self.keeper.drop(name)
        if self.jobs is not None:
            await self.jobs.remove(name)
        tracker = self.trackers.pop(name, None)
        if tracker is not None:
            await tracker.stop()
        adapter = self.adapters.pop(name, None)
        if adapter is not None:
            await adapter.aclose()

    async def _rebuild_notifiers(self, old: Validated, new: Validated) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.settings.daemon.shutdown_grace)
        keep = {n.name: n for n in self.notifiers
                if new.notifiers.get(n.name) == old.notifiers.get(n.name)}
        for notifier in self.notifiers:
            if notifier.name not in keep:
                await notifier.aclose()
        self.notifiers = [keep.get(name) or build_notifier(name, ncls, ncfg)
                          for name, (ncls, ncfg) in new.notifiers.items()]
        self._start_dispatcher()

    # -- what the main loop and status lines read --------------------------------------

    @property
    def heartbeat(self) -> int:
        """Grows whenever a poll (list or per-order) completes, whatever its outcome."""
        return sum(t.completed for t in self.trackers.values())

    async def refresh_backlog(self) -> None:
        """Re-read the outbox per configured notifier and the connections' error episodes
        (for status lines, ``/healthz`` and metrics); this is also the main loop's tick that
        ``/healthz`` watches."""
        summary = await self.db(self.store.outbox_summary, [n.name for n in self.notifiers])
        self.outbox = summary
        self.backlog = {name: s.pending for name, s in summary.items()}
        self._refresh_errors()
        self.last_tick = time.monotonic()

    def _refresh_errors(self) -> None:
        # A snapshot of plain values: the health server reads it from its own thread.
        self.connection_errors = {
            name: ErrorEpisode(e.category, e.since, e.message)
            for name, tracker in self.trackers.items() if (e := tracker.episode) is not None}

    def status_line(self) -> str:
        """A one-line summary: connections, open orders, the outbox, and every problem."""
        open_orders = sum(t.open_orders for t in self.trackers.values())
        outbox = list(self.outbox.values())
        waiting = sum(s.pending for s in outbox)
        # In a cluster the others' connections are not "missing": say how many are held here.
        held = (f"{len(self.trackers)} of {len(self.adapters)} connection(s) held here"
                if self.clustered else f"{len(self.trackers)} connection(s)")
        text = f"{held}, {open_orders} open order(s), {waiting} waiting notification(s)"
        now = utcnow()
        oldest = max((pending_age(s, now) for s in outbox if s.pending), default=None)
        if oldest is not None:
            text += f", oldest {age_text(oldest)}"
        dead = sum(s.dead for s in outbox)
        if dead:
            text += f", {dead} dead letter(s)"
        found = problems(self, now)
        if found:
            text += "; " + "; ".join(found)
        return text

    # -- shutdown ----------------------------------------------------------------------

    def abort(self) -> None:
        """Stop waiting for deliveries during :meth:`stop` (a second Ctrl-C)."""
        if self.dispatcher is not None:
            self.dispatcher.abort()

    async def stop(self, grace: float | None = None) -> None:
        """Stop polling after the poll in progress, flush deliveries briefly, close all.

        :param grace: seconds to keep delivering (default ``daemon.shutdown_grace``).
        """
        for adapter in self.adapters.values():
            # A poll asleep in a long pause (a rate-limit answer's Retry-After) would hold
            # shutdown for that long; it has sent nothing yet, so it is simply cancelled.
            waiting = adapter.budget.close()
            if waiting:
                logger.info("%s: %d request(s) waiting for the rate budget cancelled",
                            adapter.name, waiting)
        if self.actions is not None:
            await self.actions.stop()
        if self.keeper is not None:
            await self.keeper.stop()  # stops its connections, hands the leases back
        if self.jobs is not None:
            await self.jobs.stop()
        await asyncio.gather(*(t.stop() for t in self.trackers.values()))
        if self.dispatcher is not None:
            await self.dispatcher.stop(
                self.settings.daemon.shutdown_grace if grace is None else grace)
        await self.loop_lag.stop()
        await self.observers.stop(self.settings.daemon.shutdown_grace if grace is None
                                  else min(grace, 1.0))
        await self.plugins.call_observers("shutdown", app=self)
        for adapter in self.adapters.values():
            await adapter.aclose()
        for notifier in self.notifiers:
            await notifier.aclose()
        self._executor.shutdown(wait=True)
