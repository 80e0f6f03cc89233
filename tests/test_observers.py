"""order_event observers run off the poll and commit path: a hanging or sleeping observer
never stalls polling or delivery, and a queue that overflows drops the oldest for them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import poller
from poller import plugins as plugins_module
from poller.events import OrderEvent, system_event
from poller.models import SystemScene
from poller.observers import ObserverQueue
from poller.plugins import get_plugin_manager
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app
from tests.scripted import T0

release = threading.Event()
seen: list[str] = []


class Sleepy:
    """A plain observer that blocks its caller (time.sleep until released)."""

    @poller.hookimpl
    def order_event(self, event: Any) -> None:
        release.wait(60)
        seen.append(event.scene)


class Hanging:
    """An async observer that never returns."""

    @poller.hookimpl
    async def order_event(self, event: Any) -> None:
        await asyncio.Event().wait()


def test_blocking_observers_never_stall_polling_or_delivery(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module, "HOOK_TIMEOUT", 0.5)  # the hanging one gives up soon
    release.clear()
    seen.clear()
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.1}},
                               receiver.url, announce_existing=True)

        async def run() -> int:
            async with running_app(config) as app:
                app.plugins.pm.register(Hanging())
                app.plugins.pm.register(Sleepy())
                order = sim.book.place(account, "2890", "BUY", 3, "27.1")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                for fills in range(1, 4):
                    sim.book.fill(order.order_id, 1)
                    await asyncio.to_thread(receiver.wait_for,
                                            lambda e, want=fills + 1: len(e) >= want)
                polls = app.trackers["tw"].polls
                release.set()  # let the sleeping observer go before shutdown
                return polls

        polls = asyncio.run(run())
    finally:
        release.set()
        sim.stop()
    # Every event was delivered and polling went on while both observers were stuck.
    assert receiver.scenes() == ["PLACED", "FILLED", "FILLED", "FINAL_FILLED"]
    assert polls >= 4
    assert seen and seen[0] == "PLACED"  # the sleeping observer got them, in order


def test_a_full_queue_drops_the_oldest_for_the_observers() -> None:
    got: list[str] = []

    class Recording:
        @poller.hookimpl
        async def order_event(self, event: OrderEvent) -> None:
            got.append(event.payload["message"])

    def event(n: int) -> OrderEvent:
        return system_event(SystemScene.ORDER_STALE, broker="cx", message=str(n),
                            discriminator=str(n), detected_at=T0)

    async def run() -> int:
        plugins = get_plugin_manager()
        plugins.pm.register(Recording())
        queue = ObserverQueue(plugins, size=3)
        for n in range(5):  # before the worker runs: two must go
            queue.put(event(n))
        queue.start()
        await queue.stop(grace=5)
        return queue.dropped

    assert asyncio.run(run()) == 2
    assert got == ["2", "3", "4"]


def test_a_plain_observer_runs_in_its_own_thread() -> None:
    threads: list[str] = []

    class Plain:
        @poller.hookimpl
        def order_event(self, event: Any) -> None:
            threads.append(threading.current_thread().name)
            time.sleep(0.01)  # blocking here blocks only this thread

    async def run() -> None:
        plugins = get_plugin_manager()
        plugins.pm.register(Plain())
        await plugins.call_observers("order_event", event="E")

    asyncio.run(run())
    assert threads and threads[0].startswith("plugin-") and threads[0] != "MainThread"
