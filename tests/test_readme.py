"""The README's plugin examples are real: the drop-in notifier and the broker adapter, copied
from the README into a drop-in folder, run together in the daemon against loopback servers."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from pathlib import Path
from typing import Any

from poller.app import App
from poller.compose import validate
from poller.logsetup import Redactor
from poller.plugins import get_plugin_manager
from poller.settings import load_settings
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller.store import Store

ROOT = Path(__file__).resolve().parent.parent


def example(heading: str) -> str:
    """The first python code block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match is not None, heading
    return match.group(1)


class Acme:
    """The README's imaginary broker: one list endpoint, its envelope, its error codes."""

    def __init__(self) -> None:
        self.server = SimServer("acme")
        self.orders: list[dict[str, Any]] = []
        self.answers: list[SimResponse] = []
        self.calls = 0
        self.lock = threading.Lock()
        self.server.route("GET", "/v1/orders", self.list)

    def list(self, request: SimRequest) -> SimResponse:
        with self.lock:
            self.calls += 1
            if request.headers.get("authorization") != "Bearer acme-canary-key":
                return SimResponse(401, {"ok": False, "error": "BAD_KEY", "message": "who?"})
            if self.answers:
                return self.answers.pop(0)
            return SimResponse(200, {"ok": True, "orders": list(self.orders)})


def test_the_readme_notifier_and_adapter_work_as_drop_ins(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o700)
    for name, heading in (("ntfy.py", "### Writing a drop-in notifier"),
                          ("acme.py", "### Writing a broker adapter")):
        (folder / name).write_text(example(heading))
        (folder / name).chmod(0o600)
    acme = Acme()
    phone = SimServer("ntfy")
    texts: list[str] = []
    arrived = threading.Condition()

    def receive(request: SimRequest) -> SimResponse:
        with arrived:
            texts.append(request.body.decode())
            arrived.notify_all()
        return SimResponse(200, {"ok": True})

    def two_messages() -> bool:  # the operator event, then the fill
        with arrived:
            return arrived.wait_for(lambda: len(texts) >= 2, timeout=30)

    phone.route("POST", "/my-fills", receive)
    acme.server.start()
    phone.start()
    config = {
        "daemon": {"database": str(tmp_path / "p.db"), "plugins_dirs": [str(folder)]},
        "brokers": {"desk": {"kind": "acme", "base_url": acme.server.url, "interval": 0.2,
                             "api_key": "acme-canary-key", "account": "A1"}},
        "notifiers": {"phone": {"kind": "ntfy", "topic": "my-fills", "server": phone.url}},
    }

    async def run() -> dict[str, int]:
        settings = load_settings(data=config)
        plugins = get_plugin_manager(plugin_dirs=settings.daemon.plugins_dirs)
        registry = plugins.registry()
        adapter = registry.brokers["acme"]
        # The README's penalty is 30 s; the test's budget waits a moment instead.
        adapter.errors = dataclasses.replace(adapter.errors, penalty=0.5)
        validated = validate(settings, registry, "<readme>")
        store = Store.open(settings.daemon.database, lock=True)
        app = App.create(settings, plugins, validated, redactor=Redactor(), store=store)
        await app.start()
        try:
            tracker = app.trackers["desk"]
            while "A1" not in tracker.known_accounts:  # the first poll is the baseline
                await asyncio.sleep(0.05)
            with acme.lock:
                acme.answers.append(SimResponse(200, {"ok": False, "error": "RATE_LIMIT",
                                                      "message": "slow down"}))
                acme.orders.append({"id": "7", "state": "done", "symbol": "ACME",
                                    "side": "buy", "qty": "5", "filled": "5",
                                    "price": "12.5"})
            assert await asyncio.to_thread(two_messages), texts
            return dict(tracker.errors)
        finally:
            await app.stop()
            store.close()

    try:
        errors = asyncio.run(run())
    finally:
        acme.server.stop()
        phone.stop()
    assert errors == {"rate_limited": 1}  # the table sorted RATE_LIMIT; the group paused
    assert texts[0].startswith("poller: BROKER_RATE_LIMITED (desk)")  # one operator event
    final = texts[1].splitlines()
    assert final[0] == "desk: BUY 5 ACME filled"
    assert "filled 5 / 5 (100 %)" in final
