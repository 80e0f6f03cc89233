"""``poller demo``: the daemon against in-process broker simulators, printing events live.

No accounts and no setup: the simulators listen on loopback, their autopilots place and move
orders, the daemon polls them with a temporary database and the console notifier.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from poller.app import App
from poller.compose import validate
from poller.daemon import serve
from poller.logsetup import Redactor
from poller.plugins import get_plugin_manager
from poller.settings import load_settings
from poller.simulator.base import BrokerSim
from poller.simulator.catalog import SIMULATORS
from poller.store import Store

logger = logging.getLogger(__name__)


def demo_config(sims: dict[str, BrokerSim], database: Path) -> dict[str, Any]:
    """The configuration the demo runs with (also printed by ``poller demo --print-config``)."""
    return {
        "daemon": {"database": str(database), "announce_existing": True},
        "brokers": {f"{kind}-demo": sim.broker_config(f"{kind}-demo")
                    for kind, sim in sims.items()},
        "notifiers": {"console": {"kind": "console"}},
    }


async def run_demo(*, duration: float | None, seed: int | None, kinds: list[str],
                   redactor: Redactor, every: float = 0.7) -> int:
    """Start the simulators and the daemon; return the number of events delivered."""
    sims: dict[str, BrokerSim] = {}
    try:
        for index, kind in enumerate(kinds):
            # Each simulator gets its own sequence, so the four do not move in lockstep.
            sim = SIMULATORS[kind](seed=None if seed is None else seed + index)
            sim.start()
            sim.autopilot(every=every)
            sims[kind] = sim
        with tempfile.TemporaryDirectory(prefix="poller-demo-") as folder:
            data = demo_config(sims, Path(folder) / "demo.db")
            settings = load_settings(data=data)
            plugins = get_plugin_manager()
            validated = validate(settings, plugins.registry(), "<demo>")
            redactor.add(validated.secrets())
            store = Store.open(settings.daemon.database, lock=True)
            try:
                app = App.create(settings, plugins, validated, redactor=redactor, store=store)
                names = ", ".join(f"{kind} at {sim.url}" for kind, sim in sims.items())
                print(f"poller demo: simulators {names}; Ctrl-C to stop", flush=True)
                await serve(app, duration=duration)
                delivered = sum(s.delivered for s in app.dispatcher.stats.values()) \
                    if app.dispatcher else 0
            finally:
                store.close()
        print(f"poller demo: {delivered} event(s) delivered", flush=True)
        return delivered
    finally:
        for sim in sims.values():
            sim.stop()
