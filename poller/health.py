"""``/healthz`` and Prometheus ``/metrics`` on loopback (off unless ``daemon.health_listen``).

A small WSGI app served by the standard library in a background thread, so a scrape never
waits for the event loop. Metrics are read from the daemon's own counters at scrape time by
one custom collector (no instrumentation scattered through the code); prometheus-client does
the exposition format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from poller.dispatch import Dispatcher
from poller.looplag import LoopLag
from poller.loopserver import LoopbackServer, StartResponse, json_answer
from poller.models import iso
from poller.storehealth import StoreHealth
from poller.tracker import Tracker

logger = logging.getLogger(__name__)



class DaemonView(Protocol):
    """What ``/healthz`` and ``/metrics`` read of the running daemon (:class:`poller.app.App`
    has it all); read from the server's thread, so only snapshots of plain containers."""

    @property
    def trackers(self) -> Mapping[str, Tracker]: ...
    @property
    def dispatcher(self) -> Dispatcher | None: ...
    @property
    def backlog(self) -> Mapping[str, int]: ...
    @property
    def events_by_scene(self) -> Mapping[str, int]: ...
    @property
    def last_tick(self) -> float: ...
    @property
    def store_health(self) -> StoreHealth: ...
    @property
    def loop_lag(self) -> LoopLag: ...


class AppCollector(Collector):
    """Reads the running daemon's counters when Prometheus scrapes."""

    def __init__(self, app: DaemonView) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        """Yield every poller metric."""
        app = self.app
        polls = CounterMetricFamily("poller_polls", "Polls made", labels=["connection", "call"])
        errors = CounterMetricFamily("poller_poll_errors", "Failed polls by class",
                                     labels=["connection", "category"])
        limited = CounterMetricFamily("poller_rate_limit_answers",
                                      "Rate-limit answers received (should stay 0)",
                                      labels=["connection"])
        admitted = CounterMetricFamily("poller_budget_requests",
                                       "Requests admitted by each limit group",
                                       labels=["connection", "group"])
        pads = GaugeMetricFamily("poller_budget_pad_seconds",
                                 "Seconds each limit group's window is padded by (follows the "
                                 "measured spread of round trips)",
                                 labels=["connection", "group"])
        use = GaugeMetricFamily("poller_budget_window_use",
                                "Share of a limit group's allowance used in the current window",
                                labels=["connection", "group"])
        last = GaugeMetricFamily("poller_last_success_timestamp_seconds",
                                 "Time of the last successful list poll", labels=["connection"])
        open_orders = GaugeMetricFamily("poller_open_orders", "Orders that can still change",
                                        labels=["connection"])
        now = time.monotonic()
        for name, tracker in list(app.trackers.items()):
            polls.add_metric([name, "list"], tracker.polls)
            polls.add_metric([name, "order"], tracker.order_polls)
            for category, count in list(tracker.errors.items()):
                errors.add_metric([name, category], count)
            limited.add_metric([name], tracker.rate_limit_answers)
            open_orders.add_metric([name], tracker.open_orders)
            if tracker.last_success is not None:
                last.add_metric([name], tracker.last_success.timestamp())
            for group in list(tracker.adapter.budget.groups.values()):
                admitted.add_metric([name, group.name], group.admitted)
                use.add_metric([name, group.name], group.in_window(now) / group.allowed)
                pads.add_metric([name, group.name], group.pad)
        yield from (polls, errors, limited, admitted, use, pads, last, open_orders)
        events = CounterMetricFamily("poller_events", "Events committed", labels=["scene"])
        for scene, count in list(app.events_by_scene.items()):
            events.add_metric([scene], count)
        yield events
        deliveries = CounterMetricFamily("poller_deliveries", "Delivery attempts by outcome",
                                         labels=["notifier", "outcome"])
        latency = GaugeMetricFamily("poller_delivery_latency_seconds",
                                    "Detection-to-delivery latency (last 1000 deliveries)",
                                    labels=["notifier", "quantile"])
        backlog = GaugeMetricFamily("poller_outbox_backlog", "Deliveries waiting",
                                    labels=["notifier"])
        dispatcher = app.dispatcher
        if dispatcher is not None:
            for name, stats in list(dispatcher.stats.items()):
                deliveries.add_metric([name, "delivered"], stats.delivered)
                deliveries.add_metric([name, "retried"], stats.retried)
                deliveries.add_metric([name, "dead"], stats.dead)
                values = sorted(stats.latencies)
                for q in (0.5, 0.99):
                    if values:
                        latency.add_metric([name, str(q)],
                                           values[min(len(values) - 1, int(len(values) * q))])
        for name, count in list(app.backlog.items()):
            backlog.add_metric([name], count)
        yield from (deliveries, latency, backlog)
        store_ok = GaugeMetricFamily("poller_store_healthy",
                                     "1 while the state database commits, 0 while it cannot")
        store_ok.add_metric([], 1.0 if app.store_health.ok else 0.0)
        failures = CounterMetricFamily("poller_store_commit_failures",
                                       "Commits the state database refused")
        failures.add_metric([], app.store_health.failures_total)
        lag = GaugeMetricFamily("poller_event_loop_lag_seconds",
                                "How late the event loop ran, over the last minute",
                                labels=["quantile"])
        for q in (0.5, 0.99):
            lag.add_metric([str(q)], app.loop_lag.quantile(q))
        yield from (store_ok, failures, lag)


def health(app: DaemonView, *, stale_after: float) -> tuple[bool, dict[str, Any]]:
    """Whether the daemon is healthy, and the details ``/healthz`` shows.

    ``stalled`` (the main loop stopped ticking) and ``degraded`` (the store cannot commit)
    answer 503; ``ok`` answers 200.
    """
    alive = time.monotonic() - app.last_tick < stale_after
    outage = app.store_health.outage
    status = "stalled" if not alive else "degraded" if outage is not None else "ok"
    return status == "ok", {
        "status": status,
        "connections": {
            name: {"last_success": iso(t.last_success), "open_orders": t.open_orders,
                   "stopped": t.stopped_reason}
            for name, t in list(app.trackers.items())
        },
        "outbox_backlog": dict(app.backlog),
        "store": {"ok": outage is None,
                  **({} if outage is None else {
                      "failing_since": iso(outage.since), "reason": outage.reason,
                      "error": outage.error, "failed_commits": outage.failures})},
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
