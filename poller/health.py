"""``/healthz`` and Prometheus ``/metrics`` on loopback (off unless ``daemon.health_listen``).

A small WSGI app served by the standard library in a background thread, so a scrape never
waits for the event loop. Metrics are read from the daemon's own counters at scrape time by
one custom collector (no instrumentation scattered through the code); prometheus-client does
the exposition format. Every label series a configuration implies (each connection, notifier,
error category and event scene) is there from the start, at 0, so ``rate()``, ``increase()``
and ``absent()`` work before the first event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from poller.errors import (
    BrokerAnswerTooLarge,
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
)
from poller.latencyhistogram import LatencyHistogram
from poller.looplag import LoopLag
from poller.loopserver import LoopbackServer, StartResponse, json_answer
from poller.models import SceneType, SystemScene, iso, utcnow
from poller.records import OutboxSummary
from poller.settings import Settings
from poller.storehealth import StoreHealth
from poller.timetext import age_text
from poller.tracker import Tracker

logger = logging.getLogger(__name__)

#: Every category a failed poll is counted under (see :attr:`BrokerError.category`).
ERROR_CATEGORIES: tuple[str, ...] = tuple(sorted({cls("").category for cls in (
    BrokerError, BrokerUnavailable, BrokerRateLimited, BrokerMalformed, BrokerAnswerTooLarge,
    BrokerAuthError, BrokerRejected, BrokerNotFound)}))
#: Every scene an event can have, order and system ones.
SCENES: tuple[str, ...] = (*(s.value for s in SceneType), *(s.value for s in SystemScene))


@dataclass(frozen=True)
class ErrorEpisode:
    """A connection's current run of failed polls: what kind, since when, what was said."""

    category: str
    since: datetime
    message: str


class DeliveryStats(Protocol):
    """One notifier's delivery counters since the daemon started."""

    @property
    def delivered(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def dead(self) -> int: ...
    @property
    def latency(self) -> LatencyHistogram: ...


class DeliveryCounters(Protocol):
    """What health reads of the dispatcher (:class:`poller.dispatch.Dispatcher` has it)."""

    @property
    def stats(self) -> Mapping[str, DeliveryStats]: ...


class DaemonView(Protocol):
    """What ``/healthz`` and ``/metrics`` read of the running daemon (:class:`poller.app.App`
    has it all); read from the server's thread, so only snapshots of plain containers."""

    @property
    def settings(self) -> Settings: ...
    @property
    def trackers(self) -> Mapping[str, Tracker]: ...
    @property
    def dispatcher(self) -> DeliveryCounters | None: ...
    @property
    def backlog(self) -> Mapping[str, int]: ...
    @property
    def outbox(self) -> Mapping[str, OutboxSummary]: ...
    @property
    def connection_errors(self) -> Mapping[str, ErrorEpisode]: ...
    @property
    def events_by_scene(self) -> Mapping[str, int]: ...
    @property
    def last_tick(self) -> float: ...
    @property
    def store_health(self) -> StoreHealth: ...
    @property
    def loop_lag(self) -> LoopLag: ...
    @property
    def cluster(self) -> dict[str, Any] | None: ...


def pending_age(summary: OutboxSummary, now: datetime) -> float:
    """Seconds the notifier's oldest waiting message has waited (0 when none waits)."""
    if summary.oldest_pending is None:
        return 0.0
    return max(0.0, (now - summary.oldest_pending).total_seconds())


def problems(app: DaemonView, now: datetime | None = None) -> list[str]:
    """One line per reason the daemon is degraded: a stopped connection, a push stream
    stopped until a reload (refused credentials, an error its SDK does not retry), a store
    that cannot commit, a notifier whose oldest waiting message is older than
    ``daemon.backlog_alert_after`` (the main loop's stall is :func:`health`'s to tell)."""
    now = now or utcnow()
    found = [f"connection {name} stopped: {tracker.stopped_reason}"
             for name, tracker in list(app.trackers.items()) if tracker.stopped_reason]
    # Polling goes on, so nothing is missed, but the operator asked for push and it will
    # not come back by itself: that needs a human.
    found += [f"connection {name}: push stream stopped ({tracker.push.status.last_error}); "
              "polling goes on at full cadence; fix it, then `systemctl reload poller`"
              for name, tracker in list(app.trackers.items())
              if tracker.push is not None and tracker.push.status.state == "stopped"]
    outage = app.store_health.outage
    if outage is not None:
        found.append(f"store cannot commit since {iso(outage.since)} ({outage.reason}): "
                     f"{outage.error}")
    alert_after = app.settings.daemon.backlog_alert_after
    for name, summary in list(app.outbox.items()):
        age = pending_age(summary, now)
        if summary.pending and age > alert_after:
            found.append(f"notifier {name}: {summary.pending} message(s) waiting, "
                         f"oldest {age_text(age)}")
    return found


class AppCollector(Collector):
    """Reads the running daemon's counters when Prometheus scrapes."""

    def __init__(self, app: DaemonView) -> None:
        self.app = app
        #: When this daemon started serving metrics (``poller_start_time_seconds``).
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        """Yield every poller metric."""
        yield from self._connections()
        yield from self._events()
        yield from self._deliveries()
        yield from self._daemon()

    def _connections(self) -> Iterator[Metric]:
        app = self.app
        polls = CounterMetricFamily("poller_polls", "Polls made", labels=["connection", "call"])
        errors = CounterMetricFamily("poller_poll_errors", "Failed polls by class",
                                     labels=["connection", "category"])
        limited = CounterMetricFamily("poller_rate_limit_answers",
                                      "Rate-limit answers received (should stay 0)",
                                      labels=["connection"])
        stopped = GaugeMetricFamily("poller_connection_stopped",
                                    "1 while a connection is stopped (credentials refused)",
                                    labels=["connection"])
        admitted = CounterMetricFamily("poller_budget_requests",
                                       "Requests admitted by each limit group",
                                       labels=["connection", "group"])
        pads = GaugeMetricFamily("poller_budget_pad_seconds",
                                 "Seconds each limit group's window is padded by (follows the "
                                 "measured spread of round trips)",
                                 labels=["connection", "group"])
        holds = GaugeMetricFamily("poller_budget_hold_seconds",
                                  "Mean seconds a request holds its slot beyond the window: "
                                  "its own round trip (the broker had it by its answer) or "
                                  "the pad, whichever is shorter",
                                  labels=["connection", "group"])
        use = GaugeMetricFamily("poller_budget_window_use",
                                "Share of a limit group's allowance used in the current window",
                                labels=["connection", "group"])
        last = GaugeMetricFamily("poller_last_success_timestamp_seconds",
                                 "Time of the last successful list poll (0 until the first)",
                                 labels=["connection"])
        open_orders = GaugeMetricFamily("poller_open_orders", "Orders that can still change",
                                        labels=["connection"])
        push_up = GaugeMetricFamily("poller_push_up",
                                    "1 while a connection's push stream is connected (absent "
                                    "for connections without one)", labels=["connection"])
        pushed = CounterMetricFamily("poller_push_updates", "Order updates a stream pushed",
                                     labels=["connection"])
        drops = CounterMetricFamily("poller_push_drops", "Times a push stream dropped",
                                    labels=["connection"])
        now = time.monotonic()
        for name, tracker in list(app.trackers.items()):
            polls.add_metric([name, "list"], tracker.polls)
            polls.add_metric([name, "order"], tracker.order_polls)
            counts = dict(tracker.errors)
            for category in sorted(set(ERROR_CATEGORIES) | set(counts)):
                errors.add_metric([name, category], counts.get(category, 0))
            limited.add_metric([name], tracker.rate_limit_answers)
            stopped.add_metric([name], 1.0 if tracker.stopped_reason else 0.0)
            open_orders.add_metric([name], tracker.open_orders)
            success = tracker.last_success
            last.add_metric([name], 0.0 if success is None else success.timestamp())
            for group in list(tracker.adapter.budget.groups.values()):
                admitted.add_metric([name, group.name], group.admitted)
                use.add_metric([name, group.name], group.in_window(now) / group.allowed)
                pads.add_metric([name, group.name], group.pad)
                holds.add_metric([name, group.name], group.hold)
            push = tracker.push
            if push is not None:
                push_up.add_metric([name], 1.0 if push.up else 0.0)
                pushed.add_metric([name], push.status.events)
                drops.add_metric([name], push.status.drops)
        yield from (polls, errors, limited, stopped, admitted, use, pads, holds, last,
                    open_orders, push_up, pushed, drops)

    def _events(self) -> Iterator[Metric]:
        events = CounterMetricFamily("poller_events", "Events committed", labels=["scene"])
        counts = dict(self.app.events_by_scene)
        for scene in (*SCENES, *sorted(set(counts) - set(SCENES))):
            events.add_metric([scene], counts.get(scene, 0))
        yield events

    def _deliveries(self) -> Iterator[Metric]:
        app = self.app
        deliveries = CounterMetricFamily("poller_deliveries", "Delivery attempts by outcome",
                                         labels=["notifier", "outcome"])
        dead = CounterMetricFamily("poller_dead_letters",
                                   "Deliveries given up (dead-lettered) since the start",
                                   labels=["notifier"])
        latency = HistogramMetricFamily("poller_delivery_latency_seconds",
                                        "Detection-to-delivery latency of delivered messages",
                                        labels=["notifier"])
        dispatcher = app.dispatcher
        stats = {} if dispatcher is None else dict(dispatcher.stats)
        for name, counters in stats.items():
            deliveries.add_metric([name, "delivered"], counters.delivered)
            deliveries.add_metric([name, "retried"], counters.retried)
            deliveries.add_metric([name, "dead"], counters.dead)
            dead.add_metric([name], counters.dead)
            histogram = counters.latency
            if histogram is not None:
                buckets, total = histogram.snapshot()
                latency.add_metric([name], [(_le(b), c) for b, c in buckets], total)
        backlog = GaugeMetricFamily("poller_outbox_backlog", "Deliveries waiting",
                                    labels=["notifier"])
        for name, count in list(app.backlog.items()):
            backlog.add_metric([name], count)
        oldest = GaugeMetricFamily("poller_notifier_oldest_pending_seconds",
                                   "Age of a notifier's oldest waiting message (0 when none)",
                                   labels=["notifier"])
        dead_rows = GaugeMetricFamily("poller_outbox_dead_letters",
                                      "Dead letters in the outbox (until requeued)",
                                      labels=["notifier"])
        now = utcnow()
        for name, summary in list(app.outbox.items()):
            oldest.add_metric([name], pending_age(summary, now))
            dead_rows.add_metric([name], summary.dead)
        yield from (deliveries, dead, latency, backlog, oldest, dead_rows)

    def _daemon(self) -> Iterator[Metric]:
        app = self.app
        store_ok = GaugeMetricFamily("poller_store_healthy",
                                     "1 while the state database commits, 0 while it cannot")
        store_ok.add_metric([], 1.0 if app.store_health.ok else 0.0)
        failures = CounterMetricFamily("poller_store_commit_failures",
                                       "Commits the state database refused")
        failures.add_metric([], app.store_health.failures_total)
        tick = GaugeMetricFamily("poller_main_loop_tick_age_seconds",
                                 "Seconds since the main loop last ticked (every 5 s normally)")
        tick.add_metric([], max(0.0, time.monotonic() - app.last_tick))
        started = GaugeMetricFamily("poller_start_time_seconds",
                                    "When this daemon started serving metrics")
        started.add_metric([], self.started)
        lag = GaugeMetricFamily("poller_event_loop_lag_seconds",
                                "How late the event loop ran, over the last minute",
                                labels=["quantile"])
        for q in (0.5, 0.99):
            lag.add_metric([str(q)], app.loop_lag.quantile(q))
        yield from (store_ok, failures, tick, started, lag)


def _le(bound: float) -> str:
    """A bucket bound as the exposition format writes it (``+Inf`` for the last)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _error_json(episode: ErrorEpisode | None) -> dict[str, Any] | None:
    if episode is None:
        return None
    return {"category": episode.category, "since": iso(episode.since),
            "message": episode.message}


def _push_json(tracker: Tracker) -> dict[str, Any] | None:
    """A connection's push stream for ``/healthz`` (None: it has none)."""
    push = tracker.push
    if push is None:
        return None
    status = push.status
    return {"state": status.state, "since": iso(status.since), "updates": status.events,
            "drops": status.drops, "last_update": iso(status.last_event),
            "last_error": status.last_error or None}


def health(app: DaemonView, *, stale_after: float) -> tuple[bool, dict[str, Any]]:
    """Whether the daemon is healthy, and the details ``/healthz`` shows.

    ``stalled`` (the main loop stopped ticking) and ``degraded`` (see :func:`problems`)
    answer 503; ``ok`` answers 200.
    """
    now = utcnow()
    mono = time.monotonic()
    quiet = mono - app.last_tick
    found = problems(app, now)
    if quiet >= stale_after:
        found.insert(0, f"main loop has not ticked for {age_text(quiet)}")
    status = "stalled" if quiet >= stale_after else "degraded" if found else "ok"
    outage = app.store_health.outage
    errors = dict(app.connection_errors)
    dispatcher = app.dispatcher
    stats = {} if dispatcher is None else dict(dispatcher.stats)
    return status == "ok", {
        "status": status,
        "problems": found,
        "connections": {
            name: {"last_success": iso(t.last_success), "open_orders": t.open_orders,
                   "stopped": t.stopped_reason, "error": _error_json(errors.get(name)),
                   "budget": {g.name: {"used": g.in_window(mono), "allowed": g.allowed,
                                       "pad_seconds": round(g.pad, 3),
                                       "hold_seconds": round(g.hold, 3)}
                              for g in list(t.adapter.budget.groups.values())},
                   "push": _push_json(t)}
            for name, t in list(app.trackers.items())
        },
        "outbox_backlog": dict(app.backlog),
        "notifiers": {
            name: {"pending": s.pending, "oldest_pending": iso(s.oldest_pending),
                   "dead": s.dead, "last_error": s.last_error or None,
                   "delivered": stats[name].delivered if name in stats else 0,
                   "last_delivery": iso(s.last_sent)}
            for name, s in list(app.outbox.items())
        },
        "store": {"ok": outage is None,
                  **({} if outage is None else {
                      "failing_since": iso(outage.since), "reason": outage.reason,
                      "error": outage.error, "failed_commits": outage.failures})},
        # PostgreSQL: this instance, the leases it holds (connection → epoch), how many
        # instances share the database. Absent for SQLite.
        **({} if app.cluster is None else {"cluster": app.cluster}),
    }


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` for ``app`` on ``host:port`` in threads."""

    def __init__(self, app: DaemonView, host: str, port: int, *,
                 stale_after: float = 60.0) -> None:
        self.app = app
        self.stale_after = stale_after
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AppCollector(app))
        self._server = LoopbackServer(self._wsgi, host, port, name="health")

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self._server.port

    def _wsgi(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, body = health(self.app, stale_after=self.stale_after)
            return json_answer(start, "200 OK" if ok else "503 Service Unavailable", body)
        if path == "/metrics":
            start("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [generate_latest(self.registry)]
        return json_answer(start, "404 Not Found", {"error": f"no such path {path}"})

    def start(self) -> None:
        """Start serving."""
        self._server.start()
        logger.info("health and metrics on http://%s/", self._server.address)

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()
