"""Shared fixtures: a real webhook receiver on loopback, and a daemon run in-process."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from poller.app import App
from poller.compose import validate
from poller.logsetup import Redactor
from poller.plugins import DEFAULT_PLUGINS, get_plugin_manager
from poller.settings import load_settings
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller.statestore import open_configured
from tests.pgserver import PgServer, running_server

# Times shown to people are local with their offset; the tests expect UTC unless they choose a
# zone themselves (subprocesses inherit it).
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole run (started on first use). Without
    PostgreSQL installed, every test that needs it fails with the line saying how to get it."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the test server: its ``postgresql://`` URL."""
    return pg_server.database()


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """Set the process's local zone for one test (``local_zone("Asia/Taipei")``); UTC again
    afterwards."""
    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield use
    use("UTC")


class Receiver:
    """A webhook receiver: a real HTTP server that records every event POSTed to it.

    ``fail_next(n, status)`` makes the next ``n`` requests fail with ``status``.
    """

    def __init__(self) -> None:
        self.server = SimServer("receiver")
        self.events: list[dict[str, Any]] = []
        self.requests: list[SimRequest] = []
        self._failures: list[int] = []
        self._cond = threading.Condition()
        self.server.route("POST", "/hook", self._hook)

    def _hook(self, request: SimRequest) -> SimResponse:
        with self._cond:
            self.requests.append(request)
            if self._failures:
                return SimResponse(self._failures.pop(0), {"error": "planned failure"})
            self.events.append(json.loads(request.body))
            self._cond.notify_all()
        return SimResponse(200, {"ok": True})

    @property
    def url(self) -> str:
        return self.server.url + "/hook"

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._cond:
            self._failures.extend([status] * count)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 15.0) -> list[dict[str, Any]]:
        """Block until ``predicate(events)`` holds (woken by each arrival)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout=timeout):
                raise AssertionError(
                    f"timed out; received {[e['payload'].get('scene_type') for e in self.events]}")
            return list(self.events)

    def scenes(self, order_id: str | None = None) -> list[str]:
        with self._cond:
            return [e["payload"]["scene_type"] for e in self.events
                    if order_id is None or e["payload"].get("order_id") == order_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Re-check ``predicate`` on the event loop until it holds; fail at the deadline (a
    condition waited for, never a fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def daemon_config(tmp_path: Path, brokers: dict[str, Any], receiver_url: str | None = None,
                  **daemon: Any) -> dict[str, Any]:
    """A config dict with a temp database and (optionally) a webhook notifier."""
    notifiers: dict[str, Any] = {}
    if receiver_url:
        notifiers["hook"] = {"kind": "webhook", "url": receiver_url}
    return {
        "daemon": {"database": str(tmp_path / "poller.db"), **daemon},
        "brokers": brokers,
        "notifiers": notifiers,
    }


@asynccontextmanager
async def running_app(config: dict[str, Any], extra_plugins: tuple[str, ...] = (),
                      redactor: Redactor | None = None) -> AsyncIterator[App]:
    """Start an App from a config dict in this event loop; stop it on exit.

    ``extra_plugins`` are dotted module names registered besides the built-ins; the
    configured secrets are added to ``redactor`` when one is given.
    """
    settings = load_settings(data=config)
    plugins = get_plugin_manager(builtins=DEFAULT_PLUGINS + extra_plugins)
    validated = validate(settings, plugins.registry(), "<test>")
    store = open_configured(settings.daemon, lock=True)
    redactor = redactor or Redactor()
    redactor.add(validated.secrets())
    app = App.create(settings, plugins, validated, redactor=redactor, store=store)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        store.close()
