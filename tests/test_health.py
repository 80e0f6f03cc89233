"""``/healthz`` and ``/metrics`` over real HTTP: for a small view without connections (all the
DaemonView protocol asks), and for a running daemon polling a simulated broker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.dispatch import Dispatcher
from poller.errors import StoreError
from poller.health import HealthServer
from poller.looplag import LoopLag
from poller.models import parse_iso
from poller.simulator.shioaji import ShioajiSim
from poller.storehealth import StoreHealth
from poller.tracker import Tracker
from tests.conftest import Receiver, daemon_config, running_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class View:
    """Everything DaemonView names, with no connection and no dispatcher (the protocol
    allows both: a daemon with only notifiers, or between reloads)."""

    trackers: dict[str, Tracker] = field(default_factory=dict)
    dispatcher: Dispatcher | None = None
    backlog: dict[str, int] = field(default_factory=dict)
    events_by_scene: dict[str, int] = field(default_factory=dict)
    last_tick: float = field(default_factory=time.monotonic)
    store_health: StoreHealth = field(default_factory=StoreHealth)
    loop_lag: LoopLag = field(default_factory=LoopLag)


def get(port: int, path: str) -> tuple[int, str, str]:
    """Status, content type and body of one GET (error statuses included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


def metrics(port: int) -> Samples:
    status, content_type, text = get(port, "/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def shared_view() -> View:
    return View()


@pytest.fixture
def view(shared_view: View) -> View:
    """The view the module's server serves, in a known state for each test."""
    shared_view.backlog = {"hook": 2, "mail": 0}
    shared_view.events_by_scene = {"PLACED": 3, "FILLED": 1}
    shared_view.last_tick = time.monotonic()
    shared_view.store_health = StoreHealth()
    return shared_view


@pytest.fixture(scope="module")
def server(shared_view: View) -> Iterator[HealthServer]:
    """One server for the module (stopping one waits for its half-second poll)."""
    health = HealthServer(shared_view, "127.0.0.1", 0, stale_after=60.0)
    health.start()
    yield health
    health.stop()


@pytest.mark.parametrize(("age", "status", "word"), [
    (0.0, 200, "ok"),
    (30.0, 200, "ok"),
    (61.0, 503, "stalled"),
    (3600.0, 503, "stalled"),
])
def test_healthz_follows_the_main_loop_tick(view: View, server: HealthServer, age: float,
                                           status: int, word: str) -> None:
    view.last_tick = time.monotonic() - age
    code, content_type, body = get(server.port, "/healthz")
    assert (code, content_type) == (status, "application/json")
    assert json.loads(body) == {"status": word, "connections": {},
                                "outbox_backlog": {"hook": 2, "mail": 0},
                                "store": {"ok": True}}


def test_metrics_are_read_at_scrape_time(view: View, server: HealthServer) -> None:
    first = metrics(server.port)
    assert sample(first, "poller_events_total", scene="PLACED") == 3.0
    assert sample(first, "poller_events_total", scene="FILLED") == 1.0
    assert sample(first, "poller_outbox_backlog", notifier="hook") == 2.0
    assert sample(first, "poller_outbox_backlog", notifier="mail") == 0.0
    # No connection and no dispatcher: those families have no samples at all.
    assert {name for name, _ in first} == {"poller_events_total", "poller_outbox_backlog",
                                           "poller_store_healthy",
                                           "poller_store_commit_failures_total",
                                           "poller_event_loop_lag_seconds"}

    view.events_by_scene["PLACED"] = 4
    view.events_by_scene["EXPIRED"] = 1
    view.backlog = {}
    again = metrics(server.port)
    assert sample(again, "poller_events_total", scene="PLACED") == 4.0
    assert sample(again, "poller_events_total", scene="EXPIRED") == 1.0
    assert sample(again, "poller_outbox_backlog", notifier="hook") is None


@pytest.mark.parametrize("path", ["/", "/health", "/metrics/extra", "/healthz/"])
def test_other_paths_are_not_found(view: View, server: HealthServer, path: str) -> None:
    assert get(server.port, path) == (404, "application/json",
                                      json.dumps({"error": f"no such path {path}"}))


def test_stop_closes_the_port() -> None:
    health = HealthServer(View(), "127.0.0.1", 0)
    health.start()
    port = health.port
    assert port > 0 and get(port, "/healthz")[0] == 200
    health.stop()
    with pytest.raises(urllib.error.URLError):
        get(port, "/healthz")


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until ``predicate()`` holds (checked as the daemon's loop runs)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def in_thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.to_thread(fn, *args)


def test_a_running_daemon(tmp_path: Path, receiver: Receiver) -> None:
    """One connection polling, one stopped by refused credentials, one notifier delivering."""
    sim = ShioajiSim(seed=7, api_key="key-health-1", secret_key="sec-health-2")
    sim.start()
    started = time.time()
    brokers = {"tw": sim.broker_config("tw") | {"interval": 0.2},
               "bad": sim.broker_config("bad") | {"secret_key": "wrong-secret", "interval": 0.2}}
    config = daemon_config(tmp_path, brokers, receiver.url, announce_existing=True)

    async def scenario() -> tuple[tuple[int, str, str], Samples, dict[str, Any]]:
        async with running_app(config) as app:
            health = HealthServer(app, "127.0.0.1", 0)
            health.start()
            try:
                sim.book.place(sim.accounts()[0], "2890", "BUY", 10, "27.1")
                tw, bad = app.trackers["tw"], app.trackers["bad"]
                dispatcher = app.dispatcher
                assert dispatcher is not None
                await until(lambda: bad.stopped_reason is not None, "the refused credentials")
                await until(lambda: tw.open_orders == 1, "the order")
                await until(lambda: dispatcher.stats["hook"].delivered >= 2, "two deliveries")
                await app.refresh_backlog()
                answer = await in_thread(get, health.port, "/healthz")
                scraped = await in_thread(metrics, health.port)
                known = {
                    "bad_errors": dict(bad.errors), "bad_reason": bad.stopped_reason,
                    "groups": {n: sorted(t.adapter.budget.groups) for n, t in
                               app.trackers.items()},
                    "backlog": dict(app.backlog),
                }
                return answer, scraped, known
            finally:
                health.stop()

    try:
        answer, scraped, known = asyncio.run(scenario())
    finally:
        sim.stop()

    code, _, body = answer
    healthz = json.loads(body)
    assert (code, healthz["status"], healthz["outbox_backlog"]) == (200, "ok", known["backlog"])
    tw, bad = healthz["connections"]["tw"], healthz["connections"]["bad"]
    assert (tw["open_orders"], tw["stopped"]) == (1, None)
    assert parse_iso(tw["last_success"]) is not None
    assert (bad["open_orders"], bad["last_success"], bad["stopped"]) == (
        0, None, known["bad_reason"])

    polls = sample(scraped, "poller_polls_total", connection="tw", call="list")
    assert polls is not None and polls >= 1
    assert sample(scraped, "poller_polls_total", connection="tw", call="order") is not None
    assert sample(scraped, "poller_poll_errors_total", connection="bad", category="auth") == \
        known["bad_errors"]["auth"]
    assert sample(scraped, "poller_poll_errors_total", connection="tw", category="auth") is None
    assert sample(scraped, "poller_rate_limit_answers_total", connection="tw") == 0.0
    assert sample(scraped, "poller_open_orders", connection="tw") == 1.0
    assert sample(scraped, "poller_open_orders", connection="bad") == 0.0
    last = sample(scraped, "poller_last_success_timestamp_seconds", connection="tw")
    assert last is not None and started <= last <= time.time()
    assert sample(scraped, "poller_last_success_timestamp_seconds", connection="bad") is None
    for connection, groups in known["groups"].items():
        for group in groups:
            admitted = sample(scraped, "poller_budget_requests_total", connection=connection,
                              group=group)
            use = sample(scraped, "poller_budget_window_use", connection=connection,
                         group=group)
            assert admitted is not None and use is not None and 0.0 <= use <= 1.0
    assert sample(scraped, "poller_events_total", scene="PLACED") == 1.0
    assert sample(scraped, "poller_events_total", scene="BROKER_AUTH_FAILED") == 1.0
    delivered = sample(scraped, "poller_deliveries_total", notifier="hook", outcome="delivered")
    assert delivered is not None and delivered >= 2
    assert sample(scraped, "poller_deliveries_total", notifier="hook", outcome="dead") == 0.0
    assert sample(scraped, "poller_deliveries_total", notifier="hook", outcome="retried") == 0.0
    for quantile in ("0.5", "0.99"):
        latency = sample(scraped, "poller_delivery_latency_seconds", notifier="hook",
                         quantile=quantile)
        assert latency is not None and latency >= 0.0


def test_a_store_that_cannot_commit_makes_health_degraded(server: HealthServer,
                                                          view: View) -> None:
    view.store_health.failed(StoreError("cannot write to p.db: no space left", reason="full"),
                             datetime(2026, 5, 20, 3, 0, tzinfo=UTC))
    status, _, body = get(server.port, "/healthz")
    data = json.loads(body)
    assert (status, data["status"]) == (503, "degraded")
    assert data["store"] == {"ok": False, "failing_since": "2026-05-20T03:00:00.000Z",
                             "reason": "full", "error": "cannot write to p.db: no space left",
                             "failed_commits": 1}
    samples = metrics(server.port)
    assert sample(samples, "poller_store_healthy") == 0.0
    assert sample(samples, "poller_store_commit_failures_total") == 1.0
    view.store_health.succeeded()
    assert get(server.port, "/healthz")[0] == 200


def test_a_failing_view_answers_json_500_and_idle_clients_block_no_one(
        server: HealthServer, view: View) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        saved = view.backlog
        view.backlog = None  # type: ignore[assignment]  # dict(None) raises inside /healthz
        try:
            status, content_type, body = get(server.port, "/healthz")
        finally:
            view.backlog = saved
        assert (status, content_type) == (500, "application/json")
        assert json.loads(body) == {"error": "internal error (logged by the daemon)"}
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/nope")[:2] == (404, "application/json")
    finally:
        for sock in idle:
            sock.close()
