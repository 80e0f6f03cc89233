"""The command line: orders, events (and requeue), plugins, watch, test-notify, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
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
    assert main(["watch", "-c", str(config), "nope", "1"]) == 2


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


# --- A CLI that behaves like a Unix tool: one table, every item of the first-run issue. ---

ROOT = Path(__file__).resolve().parent.parent

#: argv (CONFIG is replaced by the fixture's file), exit code, a part of what stderr says.
USAGE_CASES = [
    (["replace", "-c", "CONFIG", "nosuch", "1", "--price", "1"], 2, "no connection 'nosuch'"),
    (["cancel", "-c", "CONFIG", "l", "1"], 2, "no connection 'l'"),
    (["orders", "-c", "CONFIG", "--broker", "nosuch"], 2, "no connection 'nosuch'"),
    (["events", "-c", "CONFIG", "--broker", "lpp"], 2, "did you mean 'lp'?"),
    (["events", "-c", "CONFIG", "--requeue", "hok"], 2, "no notifier 'hok'; did you mean"),
    (["test-notify", "-c", "CONFIG", "hokk"], 2, "no notifier 'hokk'; did you mean 'hook'?"),
    (["unwatch", "-c", "CONFIG", "nosuch", "1"], 2, "no connection 'nosuch'"),
    (["events", "-c", "CONFIG", "--limit", "0"], 2, "must be at least 1, got 0"),
    (["orders", "-c", "CONFIG", "--open", "--utc", "--json", "--broker"], 2, "expected one"),
    (["actions", "-c", "CONFIG", "--limit", "-3"], 2, "must be at least 1, got -3"),
    (["actions", "-c", "CONFIG", "--drop", "x"], 2, "not a whole number: 'x'"),
    (["watch", "-c", "CONFIG", "lp", ""], 2, "an order id must not be empty"),
    (["cancel", "-c", "CONFIG", "lp", "   "], 2, "an order id must not be empty"),
    (["replace", "-c", "CONFIG", "lp", "7", "--timeout", "nan"], 2, "must be a positive"),
    (["demo", "--duration", "0"], 2, "must be a positive number, got 0"),
    (["test-notify", "-c", "CONFIG", "--scene", "FILED"], 2, "invalid choice: 'FILED'"),
    (["orders", "--database", "/nonexistent/x.db"], 2, "--database: no such file"),
    (["nosuch"], 2, "invalid choice: 'nosuch'"),
]


@pytest.mark.parametrize(("argv", "code", "says"), USAGE_CASES,
                         ids=[" ".join(c[0]).replace("CONFIG", "") for c in USAGE_CASES])
def test_usage_errors_exit_2_with_one_clear_line(config: Path, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], code: int, says: str) -> None:
    argv = [str(config) if part == "CONFIG" else part for part in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err


def test_every_help_has_examples_and_lists_choices(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "demo", "check-config", "orders", "events", "actions", "plugins",
                    "test-notify", "watch", "unwatch", "replace", "cancel", "status"):
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:\n  poller " + command.split()[0] in out, command
    main(["test-notify", "--help"])
    out = capsys.readouterr().out
    assert "{PLACED,FILLED,FINAL_FILLED," in out and "SYSTEM}" in out


def test_the_readme_lists_every_command_and_flag() -> None:
    import argparse

    from poller.cli import _parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `poller ([a-z-]+)` \|.*$",
                                                         readme, re.M)}
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(rows) == set(sub.choices)
    for name, parser in sub.choices.items():
        for action in parser._actions:
            long = [o for o in action.option_strings if o.startswith("--")]
            if not long or long[0] in ("--help", "--config"):
                continue
            assert f"`{long[0]}" in rows[name], f"README lacks poller {name} {long[0]}"
    assert "poller demo --print-config" not in readme


def _closed_pipe() -> int:
    """A pipe's write end whose reader is already gone (``| head`` that finished)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("argv", [["orders"], ["events"], ["actions", "--all"],
                                  ["check-config"], ["demo", "--duration", "30"]],
                         ids=lambda a: a[0])
def test_a_closed_pipe_ends_the_command_quietly(config: Path, argv: list[str]) -> None:
    write = _closed_pipe()
    try:
        done = subprocess.run([sys.executable, "-m", "poller", *argv],
                              env={**os.environ, "POLLER_CONFIG": str(config)},
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_demo_stops_when_its_reader_goes_away(tmp_path: Path) -> None:
    """``poller demo | head -3``: the demo notices the reader left and stops by itself."""
    proc = subprocess.Popen([sys.executable, "-m", "poller", "demo", "--seed", "3",
                             "--keep-db", str(tmp_path / "demo.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    assert lines[0].startswith("poller demo: simulators")
    proc.stdout.close()
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    # The kept database can be explored afterwards.
    assert main(["orders", "--database", str(tmp_path / "demo.db"), "-c", "/dev/null"]) == 0


def test_times_say_their_zone(config: Path, capsys: pytest.CaptureFixture[str],
                              local_zone: Callable[[str], None]) -> None:
    assert main(["events", "-c", str(config)]) == 0
    assert "2026-05-20 00:00:00+00:00" in capsys.readouterr().out
    assert main(["events", "-c", str(config), "--utc"]) == 0
    assert "2026-05-20 00:00:00Z" in capsys.readouterr().out
    local_zone("Asia/Taipei")
    assert main(["events", "-c", str(config)]) == 0
    assert "2026-05-20 08:00:00+08:00" in capsys.readouterr().out


def test_orders_open_marks_provisional_states(config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings_db = config.parent / "poller.db"
    store = Store.open(settings_db)
    snap = OrderSnapshot(broker="lp", broker_kind="longport", account_id="acc", order_id="702",
                         status=OrderStatus.EXPIRED, broker_status="ExpiredStatus",
                         symbol="MSFT.US", side="SELL", qty=Decimal(5), price=Decimal("400"),
                         filled_qty=Decimal(0), provisional=True)
    store.commit(Batch(snapshots=[snap]))
    store.close()
    assert main(["orders", "-c", str(config), "--open"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if " 702 " in row)
    assert "EXPIRED (provisional: may still change)" in line


def test_actions_lists_and_drops_queued_ones(config: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cancel", "-c", str(config), "lp", "701", "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "queued as action 1" in out and "expires unsent after 300 s" in out
    assert main(["actions", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["ID", "QUEUED", "BROKER", "ORDER", "ACTION", "STATE"]
    assert out[1].split()[0] == "1" and " cancel " in out[1] and "queued" in out[1]
    assert main(["actions", "-c", str(config), "--drop", "1"]) == 0
    assert capsys.readouterr().out.strip() == "action 1 dropped; it will not be sent"
    assert main(["actions", "-c", str(config)]) == 0
    assert capsys.readouterr().out.strip().endswith("no queued actions")
    assert main(["actions", "-c", str(config), "--all", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["state"], row["outcome"]) == ("failed", "DROPPED")
    assert main(["actions", "-c", str(config), "--drop", "1"]) == 1
    assert "cannot be dropped: it is failed" in capsys.readouterr().out


def test_test_notify_marks_the_sample_as_a_test(config: Path, receiver: Receiver,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-notify", "-c", str(config), "hook", "--scene", "FINAL_FILLED"]) == 0
    assert "(marked as a test)" in capsys.readouterr().out
    payload = receiver.events[0]["payload"]
    assert payload["test"] is True and payload["message"].startswith("[test]")
    # Its broker status agrees with its state.
    assert (payload["order_status"], payload["broker_status"]) == ("FILLED", "Filled")
