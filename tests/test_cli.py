"""The command line: orders, events (and requeue), plugins, watch, test-notify, JSON logs."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from poller.cli import main
from poller.events import system_event
from poller.logsetup import setup_logging
from poller.models import OrderSnapshot, OrderStatus, SystemScene
from poller.records import Batch
from poller.simulator.httpserver import SimResponse
from poller.store import Store
from tests.conftest import Receiver, daemon_config
from tests.test_daemon import _toml


@pytest.fixture
def config(tmp_path: Path, receiver: Receiver) -> Path:
    table = {"kind": "longport", "base_url": "http://127.0.0.1:9", "access_token": "tok-123456",
             "app_key": "key-123456", "app_secret": "sec-123456"}
    path = tmp_path / "config.toml"
    path.write_text(_toml(daemon_config(tmp_path, {"lp": table}, receiver.url)))
    store = Store.open(tmp_path / "poller.db")
    snap = OrderSnapshot(broker="lp", broker_kind="longport", account_id="acc", order_id="701",
                         status=OrderStatus.PARTIAL_FILLED, broker_status="PartialFilledStatus",
                         symbol="AAPL.US", side="BUY", qty=Decimal(10), price=Decimal("190.5"),
                         filled_qty=Decimal(4))
    event = system_event(SystemScene.ORDER_STALE, broker="lp", order_id="701", discriminator="x",
                         detected_at=datetime(2026, 5, 20, tzinfo=UTC), message="gone quiet")
    store.commit(Batch(snapshots=[snap], events=[event], routes={event.id: ("hook",)}))
    row = store.due("hook")[0]
    store.mark_dead(row.id, error="webhook hook: HTTP 400")
    store.close()
    return path


def test_orders(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["orders", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["BROKER", "ACCOUNT", "ORDER", "SYMBOL", "SIDE", "QTY", "PRICE",
                              "FILLED", "STATUS", "CHANGED"]
    assert out[1].split()[:9] == ["lp", "acc", "701", "AAPL.US", "BUY", "10", "190.5", "4",
                                  "PARTIAL_FILLED"]
    assert main(["orders", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["order_id"] == "701"


def test_events_show_delivery_state_and_requeue(config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ORDER_STALE" in out and "hook:dead [webhook hook: HTTP 400]" in out
    assert main(["events", "-c", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deliveries"][0]["state"] == "dead" and data["payload"]["order_id"] == "701"
    assert main(["events", "-c", str(config), "--requeue", "hook"]) == 0
    assert capsys.readouterr().out.strip() == "re-queued 1 dead-lettered deliveries"
    assert main(["events", "-c", str(config)]) == 0
    assert "hook:pending" in capsys.readouterr().out


def test_plugins(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_CONFIG", "/nonexistent/poller.toml")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "broker kinds: coinw, longport, shioaji, webull" in out
    assert "notifier kinds: apprise, console, email, slack, telegram, webhook" in out
    assert "poller_plugins.webhook  [built-in" in out


def test_watch_and_unwatch(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "-c", str(config), "lp", "999", "--account", "acc"]) == 0
    assert capsys.readouterr().out.strip() == "watching lp 999"
    assert main(["watch", "-c", str(config), "lp", "999", "--account", "acc"]) == 0
    assert capsys.readouterr().out.strip() == "already watching lp 999"
    assert main(["unwatch", "-c", str(config), "lp", "999"]) == 0
    assert main(["unwatch", "-c", str(config), "lp", "999"]) == 1
    assert main(["watch", "-c", str(config), "nope", "1"]) == 78


def test_test_notify(config: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
                     ) -> None:
    assert main(["test-notify", "-c", str(config), "--dry-run", "--scene", "FILLED"]) == 0
    out = capsys.readouterr().out
    assert "hook (webhook): would receive FILLED" in out and '"scene_type": "FILLED"' in out
    assert receiver.events == []
    assert main(["test-notify", "-c", str(config), "hook", "--scene", "MODIFY_SUCCESS"]) == 0
    assert "hook (webhook): delivered MODIFY_SUCCESS" in capsys.readouterr().out
    sample = receiver.events[0]["payload"]
    assert sample["changes"]["qty"] == {"old": "1000", "new": "600"}
    receiver.server.fault = lambda r: SimResponse(403, {"error": "forbidden: bad token"})
    assert main(["test-notify", "-c", str(config), "hook"]) == 1
    assert 'refused: webhook hook: HTTP 403: {"error":"forbidden: bad token"}' in \
        capsys.readouterr().out
    assert main(["test-notify", "-c", str(config), "--scene", "NOPE"]) == 2


def test_json_logs_name_the_connection() -> None:
    stream = io.StringIO()
    setup_logging(level="INFO", fmt="json", stream=stream)
    try:
        from poller.logsetup import ConnectionLog

        ConnectionLog(logging.getLogger("poller.tracker"), {"connection": "tw"}).warning(
            "poll failed (%s)", "unavailable")
    finally:
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers
                                        if not getattr(h, "_poller", False)]
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["message"] == "tw: poll failed (unavailable)"
    assert line["connection"] == "tw" and line["level"] == "WARNING"
