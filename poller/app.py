"""Assemble the daemon from settings: store, plugins, broker connections, notifiers, scheduler.

:func:`validate` turns the ``[brokers.*]`` / ``[notifiers.*]`` tables into typed configs
(used by ``check-config`` and at every start or reload); :class:`App` owns the running pieces.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import ValidationError

from poller import budgetplan
from poller.actions import ActionRunner
from poller.adapter import BrokerAdapter, BrokerConfig, secret_values
from poller.dispatch import DeliveryPolicy, Dispatcher
from poller.errors import ConfigError, ConfigProblem
from poller.httpclient import build_client
from poller.logsetup import Redactor
from poller.models import OrderEvent, SystemScene, system_event
from poller.notifiers import Notifier, NotifierConfig
from poller.plugins import Plugins, Registry
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.settings import Settings, problems_from
from poller.store import Batch, Store
from poller.tracker import Tracker

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Validated:
    """Typed configs of every connection and notifier, checked against their plugins."""

    brokers: dict[str, tuple[type[BrokerAdapter], BrokerConfig]]
    notifiers: dict[str, tuple[type[Notifier], NotifierConfig]]

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for redaction."""
        found: list[str] = []
        for cls, cfg in self.brokers.values():
            found.extend(cls.secrets(cfg))
        for _, ncfg in self.notifiers.values():
            found.extend(secret_values(ncfg))
        return found


@dataclass(frozen=True)
class Loaded:
    """A fully validated configuration with its plugins: what a start or a reload needs."""

    settings: Settings
    plugins: Plugins
    validated: Validated


def validate(settings: Settings, registry: Registry, source: str) -> Validated:
    """Check every connection and notifier table against its kind's ``Config`` model.

    :raises ConfigError: with one problem per offending key, across all tables at once.
    """
    problems: list[ConfigProblem] = []
    brokers: dict[str, tuple[type[BrokerAdapter], BrokerConfig]] = {}
    notifiers: dict[str, tuple[type[Notifier], NotifierConfig]] = {}
    for section, tables, kinds in (
        ("brokers", settings.brokers, registry.brokers),
        ("notifiers", settings.notifiers, registry.notifiers),
    ):
        for name, table in tables.items():
            kind = table.get("kind")
            if not kind:
                problems.append(ConfigProblem(source, f"{section}.{name}.kind",
                                              "required key is missing"))
                continue
            cls = kinds.get(str(kind))
            if cls is None:
                known = ", ".join(sorted(kinds)) or "none"
                problems.append(ConfigProblem(source, f"{section}.{name}.kind",
                                              f"unknown kind {kind!r} (known: {known})"))
                continue
            try:
                config = cls.Config.model_validate(table)
            except ValidationError as err:
                problems.extend(problems_from(err, source, (section, name)))
                continue
            if section == "brokers":
                assert isinstance(config, BrokerConfig)
                broker_cls: Any = cls
                for key, message in broker_cls.check(config):
                    problems.append(ConfigProblem(source, f"{section}.{name}.{key}", message))
                limit_problems = _limit_problems(broker_cls, config, source, name)
                if config.per_order_polling and not broker_cls.supports_fetch:
                    problems.append(ConfigProblem(
                        source, f"{section}.{name}.per_order_polling",
                        f"{broker_cls.kind} has no per-order call"))
                problems.extend(limit_problems)
                if not limit_problems:
                    for key, message in budgetplan.problems(broker_cls, config,
                                                            build_budget(broker_cls, config)):
                        problems.append(ConfigProblem(source, f"{section}.{name}.{key}",
                                                      message))
                brokers[name] = (broker_cls, config)
            else:
                assert isinstance(config, NotifierConfig)
                notifier_cls: Any = cls
                notifiers[name] = (notifier_cls, config)
    if problems:
        raise ConfigError(problems)
    return Validated(brokers, notifiers)


def _limit_problems(cls: type[BrokerAdapter], config: BrokerConfig, source: str,
                    name: str) -> list[ConfigProblem]:
    problems = []
    for group, text in config.limits.items():
        key = f"brokers.{name}.limits.{group}"
        if group not in cls.limits:
            known = ", ".join(sorted(cls.limits)) or "none"
            problems.append(ConfigProblem(source, key, f"unknown limit group (known: {known})"))
            continue
        try:
            spec = LimitSpec.parse(text)
        except ValueError as err:
            problems.append(ConfigProblem(source, key, str(err)))
            continue
        documented = cls.limits[group]
        if spec.count / spec.window > documented.count / documented.window:
            if config.limits_above_documented:
                logger.warning("%s: limit %s = %s is ABOVE the documented %s "
                               "(limits_above_documented = true): the broker may throttle or "
                               "ban this key", name, group, text, documented)
            else:
                problems.append(ConfigProblem(
                    source, key, f"{text} is above the documented limit {documented}; set "
                    "limits_above_documented = true only if the broker granted it"))
    return problems


def build_budget(cls: type[BrokerAdapter], config: BrokerConfig) -> RateBudget:
    """The rate budget of one connection: documented limits, lowered by the config."""
    groups = []
    for group, documented in cls.limits.items():
        spec = documented
        if group in config.limits:
            lowered = LimitSpec.parse(config.limits[group])
            spec = LimitSpec(lowered.count, lowered.window, documented.spacing)
        groups.append(LimitGroup(group, spec, share=config.share))
    return RateBudget(groups)


class App:
    """The running daemon: store, trackers, notifiers, dispatcher and scheduler.

    Build with :meth:`create`; then ``await start()``, and ``await stop()`` when done.
    """

    def __init__(self, settings: Settings, plugins: Plugins, validated: Validated,
                 store: Store, redactor: Redactor) -> None:
        self.settings = settings
        self.plugins = plugins
        self.validated = validated
        self.store = store
        self.redactor = redactor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.adapters: dict[str, BrokerAdapter] = {}
        self.trackers: dict[str, Tracker] = {}
        self.notifiers: list[Notifier] = []
        self.scheduler: AsyncIOScheduler | None = None
        self.dispatcher: Dispatcher | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.event_listeners: list[Callable[[list[OrderEvent]], None]] = []
        self.events_by_scene: dict[str, int] = {}
        self.backlog: dict[str, int] = {}
        self.last_tick = time.monotonic()
        self.health_port: int | None = None
        self.actions: ActionRunner | None = None
        self.api_port: int | None = None
        self._rng = random.Random()

    @classmethod
    def create(cls, settings: Settings, plugins: Plugins, validated: Validated, *,
               redactor: Redactor, store: Store) -> App:
        """Build the adapters and notifiers (one httpx client each); nothing runs yet."""
        app = cls(settings, plugins, validated, store, redactor)
        for name, (ncls, ncfg) in validated.notifiers.items():
            app.notifiers.append(app._build_notifier(name, ncls, ncfg))
        for name, (bcls, bcfg) in validated.brokers.items():
            if not bcfg.enabled:
                continue
            client = build_client(bcfg.base_url, timeout=bcfg.timeout)
            app.adapters[name] = bcls(name, bcfg, client, build_budget(bcls, bcfg))
        return app

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the store's own thread (sqlite work stays off the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def route(self, event: OrderEvent) -> list[str]:
        """Names of the notifiers that should receive ``event``.

        An operator event about a failing notifier goes to every *other* notifier.
        """
        skip = event.payload.get("notifier") if event.event_type == "SYSTEM" else None
        return [n.name for n in self.notifiers if n.name != skip and n.accepts(event)]

    async def commit(self, batch: Batch) -> list[OrderEvent]:
        """Commit a batch atomically, then wake delivery and tell observers."""
        fresh: list[OrderEvent] = await self.db(self.store.commit, batch, self.route)
        for event in fresh:
            self.events_by_scene[event.scene] = self.events_by_scene.get(event.scene, 0) + 1
        if fresh:
            if self.dispatcher:
                self.dispatcher.wake()
            for listener in self.event_listeners:
                listener(fresh)
            for event in fresh:
                await self.plugins.call_observers("order_event", event=event)
        return fresh

    async def start(self) -> None:
        """Load state, start delivery and the polling jobs."""
        if self.store.recovered_from is not None:
            now = datetime.now(UTC)
            await self.commit(Batch(events=[system_event(
                SystemScene.DATABASE_RECOVERED, detected_at=now,
                discriminator=str(self.store.recovered_from),
                message=(f"the state database was damaged and moved to "
                         f"{self.store.recovered_from}; poller started from a fresh, silent "
                         "baseline (orders are not re-announced)"))]))
        for name in self.adapters:
            await self._add_tracker(name)
        self._start_dispatcher()
        self.actions = ActionRunner(self)
        self.actions.start()
        await self.plugins.call_observers("startup", app=self)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        for name in self.trackers:
            self._schedule(name)
        self.scheduler.start()

    async def _add_tracker(self, name: str) -> None:
        daemon = self.settings.daemon
        known = await self.db(self.store.load_orders, name)
        accounts = await self.db(self.store.known_accounts, name)
        missing = await self.db(self.store.missing_counts, name)
        tracker = Tracker(
            self.adapters[name], commit=self.commit, known=known, known_accounts=accounts,
            missing=missing, announce_existing=daemon.announce_existing,
            stale_after=daemon.stale_after,
            watched=partial(self.db, self.store.watched, name),
        )
        tracker.on_list_wanted = partial(self._poll_soon, name)
        tracker.on_action_state = partial(self._action_state)
        self.trackers[name] = tracker
        tracker.start()

    def _start_dispatcher(self) -> None:
        self.dispatcher = Dispatcher(
            self.store, self.notifiers, db=self.db, commit=self.commit, redactor=self.redactor,
            policy=DeliveryPolicy(give_up_after=self.settings.daemon.give_up_after))
        self.dispatcher.start()

    def _schedule(self, name: str) -> None:
        assert self.scheduler is not None
        interval = self.adapters[name].config.interval
        self.scheduler.add_job(
            self._run_poll, "interval", args=[self.trackers[name]], seconds=interval, id=name,
            name=f"poll {name}", max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            # Jitter so several connections do not poll in lockstep.
            next_run_time=datetime.now(UTC) + timedelta(
                seconds=self._rng.uniform(0, min(interval, 1.0))),
            jitter=interval * 0.05,
        )

    def wake_actions(self) -> None:
        """An action was queued through the API: run it now."""
        if self.actions is not None:
            self.actions.wake()

    def _poll_soon(self, name: str) -> None:
        """Run a connection's list job now (an action waits for its outcome)."""
        if any(t.get_name() == f"poll-{name}" for t in self._running):
            return  # a poll of this connection is under way; its answer will do
        if self.scheduler is not None and self.scheduler.get_job(name):
            self.scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    async def _action_state(self, action_id: int, state: str, attempt: bool) -> None:
        await self.db(self.store.update_action, action_id, state, attempt=attempt)

    async def _remove_connection(self, name: str) -> None:
        if self.scheduler is not None and self.scheduler.get_job(name):
            self.scheduler.remove_job(name)
        running = [t for t in self._running if t.get_name() == f"poll-{name}"]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        tracker = self.trackers.pop(name, None)
        if tracker is not None:
            await tracker.stop()
        adapter = self.adapters.pop(name, None)
        if adapter is not None:
            await adapter.aclose()

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
        self.settings = loaded.settings.model_copy(
            update={"daemon": loaded.settings.daemon.model_copy(
                update={"database": self.settings.daemon.database})})
        self.plugins = loaded.plugins
        self.validated = loaded.validated
        new = loaded.validated.brokers
        for name in list(self.adapters):
            if name not in new or new[name] != old.brokers.get(name) or not new[name][1].enabled:
                await self._remove_connection(name)
                logger.info("connection %s %s", name,
                            "removed" if name not in new else "reconfigured")
        for name, (bcls, bcfg) in new.items():
            if name in self.adapters or not bcfg.enabled:
                continue
            client = build_client(bcfg.base_url, timeout=bcfg.timeout)
            self.adapters[name] = bcls(name, bcfg, client, build_budget(bcls, bcfg))
            await self._add_tracker(name)
            if self.scheduler is not None:
                self._schedule(name)
        if loaded.validated.notifiers != old.notifiers:
            if self.dispatcher is not None:
                await self.dispatcher.stop(self.settings.daemon.shutdown_grace)
            keep = {n.name: n for n in self.notifiers
                    if loaded.validated.notifiers.get(n.name) == old.notifiers.get(n.name)}
            for notifier in self.notifiers:
                if notifier.name not in keep:
                    await notifier.aclose()
            self.notifiers = [keep.get(name) or self._build_notifier(name, ncls, ncfg)
                              for name, (ncls, ncfg) in loaded.validated.notifiers.items()]
            self._start_dispatcher()

    def _build_notifier(self, name: str, ncls: type[Notifier], ncfg: NotifierConfig
                        ) -> Notifier:
        client = build_client("", timeout=ncfg.timeout) if ncls.uses_http else None
        return ncls(name, ncfg, client)

    @property
    def heartbeat(self) -> int:
        """Grows whenever a poll (list or per-order) completes, whatever its outcome."""
        return sum(t.completed for t in self.trackers.values())

    async def refresh_backlog(self) -> None:
        """Re-read the outbox backlog per notifier (for status lines and metrics); this is
        also the main loop's tick that ``/healthz`` watches."""
        self.backlog = await self.db(self.store.backlog)
        self.last_tick = time.monotonic()

    async def _run_poll(self, tracker: Tracker) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"poll-{tracker.name}")
        self._running.add(task)
        try:
            await tracker.poll()
        except Exception:  # the daemon never dies from one bad poll
            logger.exception("%s: poll failed unexpectedly", tracker.name)
        finally:
            tracker.completed += 1
            self._running.discard(task)

    def abort(self) -> None:
        """Stop waiting for deliveries during :meth:`stop` (a second Ctrl-C)."""
        if self.dispatcher is not None:
            self.dispatcher.abort()

    async def stop(self, grace: float | None = None) -> None:
        """Stop polling after the poll in progress, flush deliveries briefly, close all.

        :param grace: seconds to keep delivering (default ``daemon.shutdown_grace``).
        """
        if self.actions is not None:
            await self.actions.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.pause()
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await asyncio.gather(*(t.stop() for t in self.trackers.values()))
        if self.dispatcher is not None:
            await self.dispatcher.stop(
                self.settings.daemon.shutdown_grace if grace is None else grace)
        await self.plugins.call_observers("shutdown", app=self)
        for adapter in self.adapters.values():
            await adapter.aclose()
        for notifier in self.notifiers:
            await notifier.aclose()
        self._executor.shutdown(wait=True)

    def status_line(self) -> str:
        """A one-line summary: connections, open orders, outbox backlog."""
        open_orders = sum(t.open_orders for t in self.trackers.values())
        stopped = [n for n, t in self.trackers.items() if t.stopped_reason]
        text = f"{len(self.trackers)} connection(s), {open_orders} open order(s)"
        backlog = sum(self.backlog.values())
        text += f", {backlog} queued notification(s)"
        if stopped:
            text += f", stopped: {', '.join(stopped)}"
        return text
