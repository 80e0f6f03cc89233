"""The running daemon in-process: commits routed before the store, observers told, a reload
that keeps unchanged connections and rebuilds changed ones, and the status line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from poller.actionqueue import submit
from poller.compose import Loaded, validate
from poller.databaseurl import DatabaseUrl
from poller.events import OrderEvent, system_event
from poller.models import SystemScene
from poller.plugins import get_plugin_manager
from poller.records import Batch
from poller.settings import load_settings
from poller.simulator.httpserver import SimRequest, SimResponse
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app
from tests.scripted import T0


def loaded(config: dict[str, Any]) -> Loaded:
    settings = load_settings(data=config)
    plugins = get_plugin_manager()
    return Loaded(settings, plugins, validate(settings, plugins.registry(), "<test>"))


def test_commit_routes_stores_wakes_delivery_and_tells_listeners(tmp_path: Path,
                                                                receiver: Receiver) -> None:
    config = daemon_config(tmp_path, {}, receiver.url)
    heard: list[OrderEvent] = []

    async def run() -> tuple[list[OrderEvent], list[OrderEvent], dict[str, int]]:
        async with running_app(config) as app:
            app.event_listeners.append(heard.extend)
            event = system_event(SystemScene.ORDER_STALE, broker="x", message="m",
                                 discriminator="1", detected_at=T0)
            first = await app.commit(Batch(events=[event]))
            again = await app.commit(Batch(events=[event]))  # a replay: not new
            await asyncio.to_thread(receiver.wait_for, lambda e: len(e) == 1)
            return first, again, dict(app.events_by_scene)

    first, again, counts = asyncio.run(run())
    assert len(first) == 1 and again == [] and heard == first
    assert counts == {"ORDER_STALE": 1}
    assert [e["payload"]["scene_type"] for e in receiver.events] == ["ORDER_STALE"]


def test_reload_keeps_unchanged_connections_and_rebuilds_changed_ones(
        tmp_path: Path, receiver: Receiver) -> None:
    sims = [ShioajiSim(seed=1), ShioajiSim(seed=2)]
    for sim in sims:
        sim.start()
    try:
        brokers = {"a": sims[0].broker_config("a") | {"interval": 0.2},
                   "b": sims[1].broker_config("b") | {"interval": 0.2}}
        config = daemon_config(tmp_path, brokers, receiver.url)

        async def run() -> tuple[bool, bool, list[str], str]:
            async with running_app(config) as app:
                kept, changed = app.trackers["a"], app.trackers["b"]
                while not (kept.polls and changed.polls):
                    await asyncio.sleep(0.05)
                new = daemon_config(tmp_path, {
                    "a": brokers["a"], "b": brokers["b"] | {"interval": 0.3},
                    "c": sims[1].broker_config("c") | {"interval": 0.2}}, receiver.url)
                await app.reconfigure(loaded(new))
                return (app.trackers["a"] is kept, app.trackers["b"] is changed,
                        sorted(app.trackers), app.status_line())

        same, rebuilt_same, names, status = asyncio.run(run())
    finally:
        for sim in sims:
            sim.stop()
    assert same and not rebuilt_same and names == ["a", "b", "c"]
    assert status.startswith("3 connection(s), ") and "waiting notification(s)" in status


def test_a_reload_tries_a_stopped_connection_again(tmp_path: Path, receiver: Receiver) -> None:
    """Refused credentials stop a connection for minutes; SIGHUP (the key fixed, the config
    unchanged) tries it again at once."""
    sim = ShioajiSim()
    sim.start()
    refused: list[int] = []

    def once(request: SimRequest) -> SimResponse | None:
        if not refused:
            refused.append(1)
            return SimResponse(403, {"code": 403, "message": "no", "details": None})
        return None

    try:
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url)

        async def run() -> tuple[str | None, str | None]:
            async with running_app(config) as app:
                sim.server.fault = once
                tracker = app.trackers["tw"]
                while tracker.stopped_reason is None:
                    await asyncio.sleep(0.05)
                stopped = tracker.stopped_reason
                await app.reconfigure(loaded(config))
                while tracker.stopped_reason is not None:
                    await asyncio.sleep(0.05)
                return stopped, tracker.stopped_reason

        stopped, after = asyncio.run(run())
    finally:
        sim.stop()
    assert stopped is not None and "credentials refused" in stopped and after is None
    receiver.wait_for(lambda e: [x["payload"]["scene_type"] for x in e] == [
        "BROKER_AUTH_FAILED", "BROKER_RECOVERED"])


def test_two_instances_on_postgresql_one_polls_and_runs_the_actions(
        tmp_path: Path, receiver: Receiver, pg_url: str) -> None:
    """Two daemons share a database and one connection: one holds it, polls it, announces
    its orders once and runs an action submitted through the shared database; /healthz's
    cluster view and the leases say who holds it."""
    sim = ShioajiSim(seed=5)
    sim.start()
    account = sim.accounts()[0]
    order = sim.book.place(account, "2890", "BUY", 10, "27.1")
    sim.book.accept(order.order_id)
    brokers = {"tw": sim.broker_config("tw") | {"interval": 0.2}}
    first = daemon_config(tmp_path, brokers, receiver.url, announce_existing=True,
                          database=pg_url, lease_seconds=3)
    second = daemon_config(tmp_path / "b", brokers, receiver.url, announce_existing=True,
                           database=pg_url, lease_seconds=3)

    async def scenario() -> tuple[Any, Any, Any, Any]:
        async with running_app(first) as a, running_app(second) as b:
            await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1, 30)
            holder, other = (a, b) if a.trackers else (b, a)
            deadline = asyncio.get_running_loop().time() + 15
            while (holder.cluster or {}).get("instances") != 2:  # its next round sees b
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            row = await asyncio.to_thread(
                submit, DatabaseUrl.parse(pg_url), "tw", order.order_id, "cancel",
                timeout=30)
            lines = (holder.status_line(), other.status_line())
            return holder.cluster, other.cluster, row, other.trackers, lines

    try:
        held, idle, row, idle_trackers, lines = asyncio.run(scenario())
    finally:
        sim.stop()
    assert set(held["held"]) == {"tw"} and held["instances"] == 2
    assert idle["held"] == {} and not idle_trackers
    # Each says how many of the configured connections it polls, not "0 connection(s)".
    assert lines[0].startswith("1 of 1 connection(s) held here, ")
    assert lines[1].startswith("0 of 1 connection(s) held here, ")
    assert (row.state, row.outcome, row.attempts) == ("succeeded", "CANCEL_SUCCESS", 1)
    assert "cancel" in str(sim.book.get(order.order_id).status).lower()
    scenes = [e["payload"]["scene_type"] for e in receiver.events]
    assert scenes.count("PLACED") == 1  # announced once, by the one holder
