"""``/healthz`` and ``/metrics`` over real HTTP: for a small view (all the DaemonView protocol
asks, with a real latency histogram and real outbox summaries), and for running daemons
polling a simulated broker and delivering to a real receiver; and the example alerting
rules, checked against the names ``/metrics`` exposes."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.errors import StoreError
from poller.health import ERROR_CATEGORIES, SCENES, ErrorEpisode, HealthServer
from poller.latencyhistogram import DEFAULT_BUCKETS, LatencyHistogram
from poller.looplag import LoopLag
from poller.models import SceneType, SystemScene, parse_iso
from poller.records import OutboxSummary
from poller.settings import DaemonSettings, Settings
from poller.simulator.httpserver import SimResponse
from poller.simulator.shioaji import ShioajiSim
from poller.storehealth import StoreHealth
from poller.tracker import Tracker
from tests.conftest import Receiver, daemon_config, running_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ALERTS = Path(__file__).resolve().parent.parent / "contrib" / "prometheus" / "poller-alerts.yml"


@dataclass
class Stats:
    """A notifier's delivery counters, as the dispatcher keeps them."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass
class Counters:
    """What health reads of a dispatcher."""

    stats: dict[str, Stats] = field(default_factory=dict)


@dataclass
class View:
    """Everything DaemonView names, with no connection (the protocol allows it: a daemon with
    only notifiers, or between reloads)."""

    settings: Settings = field(default_factory=lambda: Settings(
        daemon=DaemonSettings(backlog_alert_after=600.0)))
    trackers: dict[str, Tracker] = field(default_factory=dict)
    dispatcher: Counters | None = None
    backlog: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, OutboxSummary] = field(default_factory=dict)
    connection_errors: dict[str, ErrorEpisode] = field(default_factory=dict)
    events_by_scene: dict[str, int] = field(default_factory=dict)
    last_tick: float = field(default_factory=time.monotonic)
    store_health: StoreHealth = field(default_factory=StoreHealth)
    loop_lag: LoopLag = field(default_factory=LoopLag)
    cluster: dict[str, Any] | None = None


def get(port: int, path: str) -> tuple[int, str, str]:
    """Status, content type and body of one GET (error statuses included)."""
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return answer.status_code, answer.headers["Content-Type"], answer.text


def scrape(port: int) -> str:
    status, content_type, text = get(port, "/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    return text


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metrics(port: int) -> Samples:
    return parse(scrape(port))


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def summary(name: str, pending: int = 0, age: float | None = None, dead: int = 0,
            error: str = "") -> OutboxSummary:
    oldest = None if age is None else datetime.now(UTC) - timedelta(seconds=age)
    return OutboxSummary(name, pending, oldest, dead, error, None)


@pytest.fixture(scope="module")
def shared_view() -> View:
    return View()


@pytest.fixture
def view(shared_view: View) -> View:
    """The view the module's server serves, in a known state for each test."""
    shared_view.dispatcher = Counters({"hook": Stats(), "mail": Stats()})
    shared_view.outbox = {"hook": summary("hook", 2, 30.0), "mail": summary("mail")}
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


@pytest.mark.parametrize(("age", "status", "word", "problems"), [
    (0.0, 200, "ok", []),
    (30.0, 200, "ok", []),
    (61.0, 503, "stalled", ["main loop has not ticked for 61 s"]),
    (3600.0, 503, "stalled", ["main loop has not ticked for 60 min"]),
])
def test_healthz_follows_the_main_loop_tick(view: View, server: HealthServer, age: float,
                                           status: int, word: str,
                                           problems: list[str]) -> None:
    view.last_tick = time.monotonic() - age
    code, content_type, body = get(server.port, "/healthz")
    assert (code, content_type) == (status, "application/json")
    data = json.loads(body)
    oldest = data["notifiers"]["hook"].pop("oldest_pending")
    when = parse_iso(oldest)
    assert when is not None and 29 <= (datetime.now(UTC) - when).total_seconds() < 40
    assert data == {
        "status": word, "problems": problems, "connections": {},
        "outbox_backlog": {"hook": 2, "mail": 0},
        "notifiers": {
            "hook": {"pending": 2, "dead": 0, "last_error": None, "delivered": 0,
                     "last_delivery": None},
            "mail": {"pending": 0, "oldest_pending": None, "dead": 0, "last_error": None,
                     "delivered": 0, "last_delivery": None}},
        "store": {"ok": True}}


def test_an_old_backlog_makes_health_degraded(view: View, server: HealthServer) -> None:
    view.outbox = {"hook": summary("hook", 412, 38 * 60 + 5, dead=3, error="hook: HTTP 503"),
                   "mail": summary("mail", 1, 5.0)}
    code, _, body = get(server.port, "/healthz")
    data = json.loads(body)
    assert (code, data["status"]) == (503, "degraded")
    assert data["problems"] == ["notifier hook: 412 message(s) waiting, oldest 38 min"]
    assert (data["notifiers"]["hook"]["dead"], data["notifiers"]["hook"]["last_error"]) == (
        3, "hook: HTTP 503")
    samples = metrics(server.port)
    oldest = sample(samples, "poller_notifier_oldest_pending_seconds", notifier="hook")
    assert oldest is not None and 38 * 60 + 5 <= oldest < 38 * 60 + 60
    assert sample(samples, "poller_outbox_dead_letters", notifier="hook") == 3.0

    view.outbox["hook"] = summary("hook", 412, 599.0)  # under backlog_alert_after
    assert get(server.port, "/healthz")[0] == 200


def test_metrics_are_read_at_scrape_time(view: View, server: HealthServer) -> None:
    first = metrics(server.port)
    assert sample(first, "poller_events_total", scene="PLACED") == 3.0
    assert sample(first, "poller_events_total", scene="FILLED") == 1.0
    assert sample(first, "poller_outbox_backlog", notifier="hook") == 2.0
    assert sample(first, "poller_outbox_backlog", notifier="mail") == 0.0

    view.events_by_scene["PLACED"] = 4
    view.events_by_scene["PLUGIN_SCENE"] = 1
    view.backlog = {}
    view.dispatcher = None
    again = metrics(server.port)
    assert sample(again, "poller_events_total", scene="PLACED") == 4.0
    assert sample(again, "poller_events_total", scene="PLUGIN_SCENE") == 1.0
    assert sample(again, "poller_outbox_backlog", notifier="hook") is None
    assert sample(again, "poller_deliveries_total", notifier="hook", outcome="delivered") is None


def test_every_series_is_there_at_zero_before_anything_happened(server: HealthServer) -> None:
    fresh = HealthServer(View(dispatcher=Counters({"hook": Stats()}),
                              outbox={"hook": summary("hook")}, backlog={"hook": 0}),
                         "127.0.0.1", 0)
    fresh.start()
    try:
        samples = metrics(fresh.port)
    finally:
        fresh.stop()
    assert set(SCENES) == {s.value for s in SceneType} | {s.value for s in SystemScene}
    for scene in SCENES:
        assert sample(samples, "poller_events_total", scene=scene) == 0.0
    for outcome in ("delivered", "retried", "dead"):
        assert sample(samples, "poller_deliveries_total", notifier="hook", outcome=outcome) == 0
    for name in ("poller_dead_letters_total", "poller_notifier_oldest_pending_seconds",
                 "poller_outbox_backlog", "poller_outbox_dead_letters",
                 "poller_delivery_latency_seconds_count", "poller_delivery_latency_seconds_sum"):
        assert sample(samples, name, notifier="hook") == 0.0, name
    for bound in ("+Inf", *(repr(b) for b in DEFAULT_BUCKETS)):
        assert sample(samples, "poller_delivery_latency_seconds_bucket", notifier="hook",
                      le=bound) == 0.0
    assert sample(samples, "poller_store_healthy") == 1.0
    assert sample(samples, "poller_store_commit_failures_total") == 0.0
    started = sample(samples, "poller_start_time_seconds")
    assert started is not None and started <= time.time()
    tick = sample(samples, "poller_main_loop_tick_age_seconds")
    assert tick is not None and 0.0 <= tick < 60.0


def test_delivery_latency_is_a_histogram(view: View, server: HealthServer) -> None:
    stats = Stats()
    assert view.dispatcher is not None
    view.dispatcher.stats["hook"] = stats
    latencies = [0.05, 0.1, 0.3, 0.3, 0.9, 4.0, 12.0, 45.0, 200.0, 1000.0, 0.2]
    for seconds in latencies:
        stats.latency.observe(seconds)
        stats.delivered += 1
    text = scrape(server.port)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "poller_delivery_latency_seconds")
    assert family.type == "histogram"
    hook = [s for s in family.samples if s.labels["notifier"] == "hook"]
    buckets = [(float(s.labels["le"]), s.value) for s in hook if s.name.endswith("_bucket")]
    assert [b for b, _ in buckets] == [*DEFAULT_BUCKETS, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)  # cumulative: never shrinks
    assert dict(buckets) == {b: sum(x <= b for x in latencies) for b, _ in buckets}
    (count,) = [s.value for s in hook if s.name.endswith("_count")]
    (total,) = [s.value for s in hook if s.name.endswith("_sum")]
    assert count == counts[-1] == stats.delivered == len(latencies)
    assert total == pytest.approx(sum(latencies))
    assert "quantile" not in text.split("poller_delivery_latency_seconds", 1)[1].split("#")[0]


def test_a_store_that_cannot_commit_makes_health_degraded(server: HealthServer,
                                                          view: View) -> None:
    view.store_health.failed(StoreError("cannot write to p.db: no space left", reason="full"),
                             datetime(2026, 5, 20, 3, 0, tzinfo=UTC))
    status, _, body = get(server.port, "/healthz")
    data = json.loads(body)
    assert (status, data["status"]) == (503, "degraded")
    assert data["problems"] == ["store cannot commit since 2026-05-20T03:00:00.000Z (full): "
                                "cannot write to p.db: no space left"]
    assert data["store"] == {"ok": False, "failing_since": "2026-05-20T03:00:00.000Z",
                             "reason": "full", "error": "cannot write to p.db: no space left",
                             "failed_commits": 1}
    samples = metrics(server.port)
    assert sample(samples, "poller_store_healthy") == 0.0
    assert sample(samples, "poller_store_commit_failures_total") == 1.0
    view.store_health.succeeded()
    assert get(server.port, "/healthz")[0] == 200


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
    with pytest.raises(httpx.ConnectError):
        get(port, "/healthz")


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
    """One connection polling, one stopped by refused credentials (degraded), one notifier
    delivering."""
    sim = ShioajiSim(seed=7, api_key="key-health-1", secret_key="sec-health-2")
    sim.start()
    started = time.time()
    brokers = {"tw": sim.broker_config("tw") | {"interval": 0.2},
               "bad": sim.broker_config("bad") | {"secret_key": "wrong-secret", "interval": 0.2}}
    config = daemon_config(tmp_path, brokers, receiver.url, announce_existing=True)

    async def scenario() -> tuple[tuple[int, str, str], str, dict[str, Any]]:
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
                scraped = await in_thread(scrape, health.port)
                known = {
                    "bad_errors": dict(bad.errors), "bad_reason": bad.stopped_reason,
                    "groups": {n: {g.name: g.allowed for g in t.adapter.budget.groups.values()}
                               for n, t in app.trackers.items()},
                    "backlog": dict(app.backlog), "status": app.status_line(),
                    "delivered": dispatcher.stats["hook"].delivered,
                    "latency": getattr(dispatcher.stats["hook"], "latency", None),
                }
                return answer, scraped, known
            finally:
                health.stop()

    try:
        answer, text, known = asyncio.run(scenario())
    finally:
        sim.stop()

    code, _, body = answer
    assert "wrong-secret" not in body and "wrong-secret" not in text
    healthz = json.loads(body)
    assert (code, healthz["status"], healthz["outbox_backlog"]) == (
        503, "degraded", known["backlog"])
    assert healthz["problems"] == [f"connection bad stopped: {known['bad_reason']}"]
    assert known["status"].startswith("2 connection(s), 1 open order(s), ")
    assert known["status"].endswith(f"; connection bad stopped: {known['bad_reason']}")
    tw, bad = healthz["connections"]["tw"], healthz["connections"]["bad"]
    assert (tw["open_orders"], tw["stopped"], tw["error"]) == (1, None, None)
    assert parse_iso(tw["last_success"]) is not None
    assert (bad["open_orders"], bad["last_success"], bad["stopped"]) == (
        0, None, known["bad_reason"])
    assert bad["error"]["category"] == "auth" and bad["error"]["message"] == known["bad_reason"]
    since = parse_iso(bad["error"]["since"])
    assert since is not None and started - 1 <= since.timestamp() <= time.time()
    for connection, groups in known["groups"].items():
        budget = healthz["connections"][connection]["budget"]
        assert {g: b["allowed"] for g, b in budget.items()} == groups
        assert all(0 <= b["used"] <= b["allowed"] and b["pad_seconds"] >= 0
                   for b in budget.values())
    hook = healthz["notifiers"]["hook"]
    assert hook["delivered"] == known["delivered"] and hook["dead"] == 0
    assert parse_iso(hook["last_delivery"]) is not None

    scraped = parse(text)
    polls = sample(scraped, "poller_polls_total", connection="tw", call="list")
    assert polls is not None and polls >= 1
    assert sample(scraped, "poller_polls_total", connection="tw", call="order") is not None
    assert sample(scraped, "poller_poll_errors_total", connection="bad", category="auth") == \
        known["bad_errors"]["auth"]
    for category in ERROR_CATEGORIES:
        assert sample(scraped, "poller_poll_errors_total", connection="tw",
                      category=category) == 0.0
    assert sample(scraped, "poller_connection_stopped", connection="bad") == 1.0
    assert sample(scraped, "poller_connection_stopped", connection="tw") == 0.0
    assert sample(scraped, "poller_rate_limit_answers_total", connection="tw") == 0.0
    assert sample(scraped, "poller_open_orders", connection="tw") == 1.0
    assert sample(scraped, "poller_open_orders", connection="bad") == 0.0
    last = sample(scraped, "poller_last_success_timestamp_seconds", connection="tw")
    assert last is not None and started <= last <= time.time()
    assert sample(scraped, "poller_last_success_timestamp_seconds", connection="bad") == 0.0
    for connection, groups in known["groups"].items():
        for group in groups:
            admitted = sample(scraped, "poller_budget_requests_total", connection=connection,
                              group=group)
            use = sample(scraped, "poller_budget_window_use", connection=connection,
                         group=group)
            pad = sample(scraped, "poller_budget_pad_seconds", connection=connection,
                         group=group)
            assert admitted is not None and use is not None and 0.0 <= use <= 1.0
            assert pad is not None and pad >= 0.0
            hold = sample(scraped, "poller_budget_hold_seconds", connection=connection,
                          group=group)
            assert hold is not None and 0.0 <= hold <= pad
    assert sample(scraped, "poller_events_total", scene="PLACED") == 1.0
    assert sample(scraped, "poller_events_total", scene="BROKER_AUTH_FAILED") == 1.0
    assert sample(scraped, "poller_events_total", scene="FILLED") == 0.0
    delivered = sample(scraped, "poller_deliveries_total", notifier="hook", outcome="delivered")
    assert delivered is not None and delivered >= 2
    assert sample(scraped, "poller_deliveries_total", notifier="hook", outcome="dead") == 0.0
    assert sample(scraped, "poller_dead_letters_total", notifier="hook") == 0.0
    assert sample(scraped, "poller_notifier_oldest_pending_seconds", notifier="hook") == 0.0
    count = sample(scraped, "poller_delivery_latency_seconds_count", notifier="hook")
    if isinstance(known["latency"], LatencyHistogram):  # once the dispatcher keeps one
        assert count is not None and count >= 2
    else:
        assert count is None and sample(scraped, "poller_delivery_latency_seconds",
                                        notifier="hook", quantile="0.5") is None


def test_a_backlog_a_dead_letter_and_an_outage_in_a_running_daemon(
        tmp_path: Path, receiver: Receiver) -> None:
    """A notifier refusing one message for good and failing the next (waiting longer than
    ``backlog_alert_after``), then the broker going away: health, status line and metrics
    follow the store and the connection."""
    sim = ShioajiSim(seed=8)
    sim.start()
    config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                           receiver.url, backlog_alert_after=0.001)
    receiver.fail_next(1, 400)
    receiver.fail_next(1000, 503)

    async def scenario() -> dict[str, Any]:
        async with running_app(config) as app:
            health = HealthServer(app, "127.0.0.1", 0)
            health.start()
            try:
                tw = app.trackers["tw"]
                # Committed, not just started (polls counts list calls as they begin): an
                # order placed while the first list is on its way would be baseline.
                await until(lambda: "tw" in app.trackers and bool(tw.book.baselined),
                            "the baseline")
                account = sim.accounts()[0]
                sim.book.place(account, "2890", "BUY", 10, "27.1")
                sim.book.place(account, "2330", "SELL", 5, "600")
                assert app.dispatcher is not None
                stats = app.dispatcher.stats["hook"]
                await until(lambda: stats.dead == 1 and stats.retried >= 1, "the failures")
                await app.refresh_backlog()
                seen: dict[str, Any] = {
                    "healthz": await in_thread(get, health.port, "/healthz"),
                    "metrics": await in_thread(metrics, health.port),
                    "status": app.status_line()}
                sim.server.fault = lambda request: SimResponse(  # the broker fails
                    500, {"code": 500, "message": "internal", "details": None})
                failed = sum(tw.errors.values())
                await until(lambda: sum(tw.errors.values()) > failed, "a failed poll")
                await app.refresh_backlog()
                first = app.connection_errors["tw"]
                await until(lambda: sum(tw.errors.values()) > failed + 1, "another one")
                await app.refresh_backlog()
                seen["episode"] = (first, app.connection_errors["tw"])
                seen["error_json"] = json.loads(
                    (await in_thread(get, health.port, "/healthz"))[2])["connections"]["tw"]
                return seen
            finally:
                health.stop()

    try:
        seen = asyncio.run(scenario())
    finally:
        sim.stop()

    code, _, body = seen["healthz"]
    data = json.loads(body)
    assert (code, data["status"]) == (503, "degraded")
    (problem,) = data["problems"]
    assert re.fullmatch(r"notifier hook: 1 message\(s\) waiting, oldest \d+ s", problem)
    hook = data["notifiers"]["hook"]
    assert (hook["pending"], hook["dead"], hook["delivered"]) == (1, 1, 0)
    assert hook["last_error"].startswith("webhook hook: HTTP 503")
    assert parse_iso(hook["oldest_pending"]) is not None
    assert re.fullmatch(r"1 connection\(s\), 2 open order\(s\), 1 waiting notification\(s\), "
                        r"oldest \d+ s, 1 dead letter\(s\); notifier hook: 1 message\(s\) "
                        r"waiting, oldest \d+ s", seen["status"])
    samples = seen["metrics"]
    assert sample(samples, "poller_dead_letters_total", notifier="hook") == 1.0
    assert sample(samples, "poller_outbox_dead_letters", notifier="hook") == 1.0
    assert sample(samples, "poller_outbox_backlog", notifier="hook") == 1.0
    oldest = sample(samples, "poller_notifier_oldest_pending_seconds", notifier="hook")
    assert oldest is not None and oldest > 0.0

    first, later = seen["episode"]
    assert first.category == later.category == "unavailable"
    assert first.since == later.since
    assert later.message == "broker unavailable (HTTP 500): internal"  # the adapter's words
    assert seen["error_json"]["error"]["category"] == "unavailable"
    assert seen["error_json"]["stopped"] is None


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition declares, with the suffixes its type implies."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def alert_rules(text: str) -> list[dict[str, str]]:
    """The rules of the alerts file: alert, expr and summary of each (pyyaml is not a
    dependency, and the file keeps each of these on one line)."""
    rules: list[dict[str, str]] = []
    for line in text.splitlines():
        found = re.fullmatch(r"\s*(?:- )?(alert|expr|summary):\s*(.*?)\s*", line)
        if found is None:
            continue
        key, value = found.groups()
        if key == "alert":
            rules.append({})
        assert rules and key not in rules[-1], line
        rules[-1][key] = value.strip('"')
    return rules


def test_the_example_alerts_use_only_exposed_metrics(server: HealthServer, view: View) -> None:
    rules = alert_rules(ALERTS.read_text(encoding="utf-8"))
    exposed = exposed_names(scrape(server.port))
    assert {"poller_connection_stopped", "poller_rate_limit_answers_total",
            "poller_last_success_timestamp_seconds"} <= exposed  # declared without series
    used: set[str] = set()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "summary"} and rule["summary"], rule
        names = set(re.findall(r"\bpoller_[a-z_]+\b", rule["expr"]))
        assert names, rule
        assert names <= exposed, (rule["alert"], names - exposed)
        used |= names
    assert [r["alert"] for r in rules] == [
        "PollerDown", "PollerStalled", "PollerConnectionStopped", "PollerRateLimited",
        "PollerDeadLetters", "PollerBacklogTooOld", "PollerStoreUnhealthy",
        "PollerNoSuccessfulPoll"]
    assert len(used) == 8
