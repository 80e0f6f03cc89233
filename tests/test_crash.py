"""kill -9 at random points over >= 1 000 transitions and >= 30 kills, with a receiver that
sometimes fails and a database that is full for a third of the run: 0 lost events, 0 lost
deliveries once space is back, integrity_check ok after every kill, and duplicates no more
than the kills (design.md §6, reliability.md G1.1/G2.2, issue 11)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from poller.simulator.httpserver import SimRequest, SimResponse
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config
from tests.test_daemon import _toml
from tests.test_lifecycle import FakeSystemd

ORDERS = 170
FILLS_PER_ORDER = 5  # with the acceptance: 6 transitions per order, 1 020 in all
KILLS = 30
#: Runs (between kills) in which the database is full: SQLite's max_page_count, set through
#: daemon.max_database_mb, holds the file at its size, so every commit that grows it fails.
FULL = range(10, 20)


def test_kill_nine_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    rng = random.Random(20261123)
    sim = ShioajiSim(seed=5)
    sim.start()
    flaky = random.Random(7)

    def sometimes_fail(request: SimRequest) -> SimResponse | None:
        return SimResponse(503, {"error": "busy"}) if flaky.random() < 0.1 else None

    receiver.server.fault = sometimes_fail
    stop = threading.Event()
    transitions = Counter[str]()

    def trader() -> None:
        """Moves orders one transition at a time, the way a market would."""
        account = sim.accounts()[0]
        live: list[str] = []
        placed = 0
        while not stop.is_set() and (placed < ORDERS or live):
            if placed < ORDERS and (len(live) < 12 or rng.random() < 0.3):
                order = sim.book.place(account, "2890", "BUY", FILLS_PER_ORDER * 100, "27.1")
                live.append(order.order_id)
                placed += 1
            elif live:
                order_id = rng.choice(live)
                order = sim.book.get(order_id)
                if order.status == "PENDING":
                    sim.book.accept(order_id)
                else:
                    sim.book.fill(order_id, 100)
                    if order.terminal:
                        live.remove(order_id)
                transitions["total"] += 1
            # Paced so the orders keep moving through the full-database runs in the middle
            # of the kill loop (~40 s of moves; at 0.01 s they could all be done by then,
            # and a run with nothing to commit never meets its full database).
            stop.wait(0.03)

    config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.1}},
                           receiver.url, announce_existing=True, shutdown_grace=2.0)
    path = tmp_path / "config.toml"
    path.write_text(_toml(config))
    full_path = tmp_path / "full.toml"
    config["daemon"]["max_database_mb"] = 0.001
    full_path.write_text(_toml(config))
    database = tmp_path / "poller.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(config_path: Path = path) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(config_path)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    thread = threading.Thread(target=trader, daemon=True)
    thread.start()
    kills = 0
    try:
        full_failures = 0
        while kills < KILLS:
            full = kills in FULL
            if kills == FULL.start:
                # No free pages left to reuse: from here every commit that grows the file
                # needs a page the cap refuses.
                with sqlite3.connect(database) as conn:
                    conn.execute("VACUUM")
            if full:
                # Started, then killed at a random moment: the run meets its full database
                # however long start-up takes on a busy machine.
                systemd = FakeSystemd(tmp_path / f"notify-{kills}.sock")
                env["NOTIFY_SOCKET"] = systemd.path
            proc = start(full_path if full else path)
            if full:
                systemd.wait_for("READY=1")
                systemd.close()
                del env["NOTIFY_SOCKET"]
            try:
                proc.wait(timeout=rng.uniform(0.6, 1.6))  # a random moment to crash at
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kills += 1
            else:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
            finally:
                if proc.stderr:
                    log = proc.stderr.read().decode()
                    proc.stderr.close()
            if full:
                full_failures += "no space left" in log
                assert "Traceback" not in log, log
            with sqlite3.connect(database) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        thread.join(timeout=120)
        assert not thread.is_alive()
        receiver.server.fault = None
        systemd = FakeSystemd(tmp_path / "notify.sock")
        env["NOTIFY_SOCKET"] = systemd.path
        proc = start()
        systemd.wait_for("READY=1")  # signal handlers are in place from here on
        systemd.close()

        def settled(events: list[dict[str, object]]) -> bool:
            finals = {e["payload"]["order_id"] for e in events  # type: ignore[index]
                      if e["payload"]["scene_type"] == "FINAL_FILLED"}  # type: ignore[index]
            return len(finals) == ORDERS

        receiver.wait_for(settled, timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err.decode()
    finally:
        stop.set()
        sim.stop()

    assert transitions["total"] + ORDERS >= 1000
    with sqlite3.connect(database) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM events WHERE event_type='TRADE'")}
        pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE state != 'sent'").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    delivered = Counter(e["id"] for e in receiver.events)
    # 0 lost deliveries: every event the daemon concluded reached the receiver.
    assert stored <= set(delivered) and pending == 0
    # 0 lost events: every deal of every order was announced (4 FILLED + FINAL_FILLED each).
    fills = Counter(e["payload"]["order_id"] for e in receiver.events
                    if e["payload"]["scene_type"] in ("FILLED", "FINAL_FILLED"))
    assert len(fills) == ORDERS
    per_order = {order: len({e["id"] for e in receiver.events
                             if e["payload"]["order_id"] == order
                             and e["payload"]["scene_type"] in ("FILLED", "FINAL_FILLED")})
                 for order in fills}
    assert set(per_order.values()) == {FILLS_PER_ORDER}
    duplicates = sum(count - 1 for count in delivered.values())
    assert duplicates <= kills
    assert full_failures >= 1  # the full runs did meet a full database
    report = {"transitions": transitions["total"] + ORDERS, "kills": kills,
              "runs on a full database": len(FULL), "of which saw it": full_failures,
              "events": len(stored), "deliveries": sum(delivered.values()),
              "duplicates": duplicates, "lost": 0}
    print("crash test:", json.dumps(report))
