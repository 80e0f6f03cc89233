"""The daemon end to end: a real `poller run` process, signals, restart, and bad answers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from poller.simulator.configfile import to_toml as _toml
from poller.simulator.httpserver import SimRequest, SimResponse
from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config, running_app


def _start(path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_run_restart_delivers_every_transition_exactly_once(tmp_path: Path,
                                                            receiver: Receiver) -> None:
    sim = ShioajiSim(seed=7)
    sim.start()
    try:
        account = sim.accounts()[0]
        table = sim.broker_config("tw") | {"interval": 0.2}
        config = daemon_config(tmp_path, {"tw": table}, receiver.url, announce_existing=True)
        path = tmp_path / "config.toml"
        path.write_text(_toml(config))
        book = sim.book

        proc = _start(path)
        a = book.place(account, "2890", "BUY", 10, "27.1")
        book.accept(a.order_id)
        book.fill(a.order_id, 4)
        receiver.wait_for(lambda e: len(e) >= 2)
        code, err = _stop(proc)
        assert code == 0, err
        assert "Traceback" not in err

        # While the daemon is down: the first order fills, a second one is placed and cancelled.
        book.fill(a.order_id)
        b = book.place(account, "2330", "SELL", 2, "1085")
        book.accept(b.order_id)
        book.cancel(b.order_id)

        proc = _start(path)
        receiver.wait_for(lambda e: len(e) >= 4)
        c = book.place(account, "0050", "BUY", 1, "195")
        book.reject(c.order_id)
        receiver.wait_for(lambda e: len(e) >= 5)
        code, err = _stop(proc)
        assert code == 0, err

        assert receiver.scenes(a.order_id) == ["PLACED", "FILLED", "FINAL_FILLED"]
        assert receiver.scenes(b.order_id) == ["CANCEL_SUCCESS"]
        assert receiver.scenes(c.order_id) == ["PLACE_FAILED"]
        ids = [e["id"] for e in receiver.events]
        assert len(ids) == len(set(ids)) == 5

        # A third start has nothing new to say.
        proc = _start(path)
        d = book.place(account, "2890", "SELL", 1, "27.2")
        receiver.wait_for(lambda e: len(e) >= 6)
        code, _ = _stop(proc)
        assert code == 0 and receiver.scenes(d.order_id) == ["PLACED"]
        assert len(receiver.events) == 6
    finally:
        sim.stop()


def test_a_second_daemon_on_the_same_database_is_refused(tmp_path: Path) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        path = tmp_path / "config.toml"
        path.write_text(_toml(daemon_config(tmp_path, {"tw": sim.broker_config("tw")})))
        first = _start(path)
        # Wait for the first daemon to hold the lock: its first poll reaches the simulator.
        deadline = 100
        while not sim.server.requests() and deadline:
            deadline -= 1
            try:
                first.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
        second = subprocess.run([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 74
        assert "another poller is already running" in second.stderr
        code, err = _stop(first)
        assert code == 0, err
    finally:
        sim.stop()


@pytest.mark.parametrize(("answer", "category"), [
    (SimResponse(200, raw=b"<html>maintenance</html>", headers={"Content-Type": "text/html"}),
     "malformed"),
    (SimResponse(200, {"unexpected": "shape"}), "malformed"),
    (SimResponse(503, raw=b"<html>down</html>"), "unavailable"),
])
def test_bad_answers_are_logged_once_and_polling_goes_on(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture,
        answer: SimResponse, category: str) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        table = sim.broker_config("tw") | {"interval": 0.1}
        config = daemon_config(tmp_path, {"tw": table}, receiver.url, announce_existing=True)
        bad: list[SimRequest] = []

        def fault(request: SimRequest) -> SimResponse | None:
            if len(bad) < 3:
                bad.append(request)
                return answer
            return None

        async def scenario() -> None:
            async with running_app(config) as app:
                sim.server.fault = fault
                order = sim.book.place(account, "2890", "BUY", 1, "27.1")
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                assert sim.book.get(order.order_id)
                assert app.trackers["tw"].errors == {category: 3}

        caplog.set_level(logging.INFO)
        asyncio.run(scenario())
        failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert failures[0].getMessage().startswith("tw: poll failed (" + category)
        assert not any(r.exc_info or r.exc_text for r in caplog.records)
    finally:
        sim.stop()


def test_a_damaged_database_is_replaced_with_an_operator_event(tmp_path: Path,
                                                               receiver: Receiver) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        sim.book.accept(sim.book.place(account, "2890", "BUY", 1, "27.1").order_id)
        (tmp_path / "poller.db").write_bytes(b"garbage, not sqlite" * 200)
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url)

        async def scenario() -> None:
            async with running_app(config) as app:
                await asyncio.to_thread(receiver.wait_for, lambda e: len(e) >= 1)
                while not app.trackers["tw"].known_accounts:  # the baseline poll is done
                    await asyncio.sleep(0.05)
                later = sim.book.place(account, "2330", "SELL", 1, "1085")
                await asyncio.to_thread(receiver.wait_for,
                                        lambda e: bool(receiver.scenes(later.order_id)))

        asyncio.run(scenario())
    finally:
        sim.stop()
    first = receiver.events[0]["payload"]
    assert first["scene_type"] == "DATABASE_RECOVERED" and "moved to" in first["message"]
    # The existing order was taken as the silent baseline; only the new one is announced.
    assert [e["payload"]["scene_type"] for e in receiver.events[1:]] == ["PLACED"]
    assert list(tmp_path.glob("poller.db.corrupt-*"))


def test_sigterm_does_not_wait_out_a_rate_limit_pause(tmp_path: Path, receiver: Receiver) -> None:
    """A 429 pauses the group past the broker's penalty (65 s for Shioaji); SIGTERM then
    cancels the polls waiting for budget instead of sleeping through the pause."""
    import time

    from tests.test_lifecycle import FakeSystemd

    sim = ShioajiSim()
    sim.start()
    limited: list[float] = []

    def slow_down(request: SimRequest) -> SimResponse | None:
        if request.path == "/api/v1/order/update_status" and not limited:
            limited.append(request.arrived)
            return SimResponse(429, {"code": 429, "message": "slow down", "details": None},
                               headers={"Retry-After": "999999"})
        return None

    sim.server.fault = slow_down
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url)
        path = tmp_path / "config.toml"
        path.write_text(_toml(config))
        env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                stderr=subprocess.PIPE, text=True, env=env)
        systemd.wait_for("READY=1")
        receiver.wait_for(lambda e: any(x["payload"]["scene_type"] == "BROKER_RATE_LIMITED"
                                        for x in e))
        # The main loop's first tick (5 s on): by then the next list poll, due every 0.2 s,
        # has long been waiting for the paused group.
        systemd.wait_for("STATUS=")
        started = time.monotonic()
        code, err = _stop(proc)
        took = time.monotonic() - started
    finally:
        systemd.close()
        sim.stop()
    assert code == 0, err
    assert "request(s) waiting for the rate budget cancelled" in err
    assert took < 30  # bounded by the shutdown grace, not by the 65 s pause
    assert "Traceback" not in err


def test_idle_clients_of_the_local_servers_do_not_hold_up_sigterm(
        tmp_path: Path, receiver: Receiver) -> None:
    import socket

    from tests.test_lifecycle import FakeSystemd, free_port

    health, api = free_port(), free_port()
    config = daemon_config(tmp_path, {}, receiver.url, health_listen=f"127.0.0.1:{health}",
                           api_listen=f"127.0.0.1:{api}", api_token="t0ken-for-the-local-api")
    path = tmp_path / "config.toml"
    path.write_text(_toml(config))
    systemd = FakeSystemd(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                            stderr=subprocess.PIPE, text=True, env=env)
    idle: list[socket.socket] = []
    try:
        systemd.wait_for("READY=1")
        for port in (health, api, health, api):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost:")  # and then nothing more
            idle.append(sock)
        code, err = _stop(proc)  # communicate(timeout=10): a hang fails the test
    finally:
        for sock in idle:
            sock.close()
        systemd.close()
    assert code == 0, err
    assert "Traceback" not in err


def test_the_start_up_line_and_status_show_the_backlog_left_from_before(
        tmp_path: Path) -> None:
    """Three messages were still waiting when poller last stopped (the receiver is down):
    the start-up line and systemd's STATUS= say so, not "0 waiting"."""
    from datetime import UTC, datetime

    from poller.events import OrderEvent
    from poller.records import Batch
    from poller.store import Store
    from tests.test_lifecycle import FakeSystemd, free_port

    now = datetime.now(UTC)
    events = [OrderEvent(id=f"e{n}", event_type="TRADE", scene="PLACED", timestamp=now,
                         broker="tw", account_id="A", order_id=f"O{n}",
                         payload={"scene_type": "PLACED", "broker": "tw", "account_id": "A",
                                  "order_id": f"O{n}"}) for n in range(3)]
    store = Store.open(tmp_path / "poller.db")
    store.commit(Batch(events=events, routes={e.id: ("hook",) for e in events}))
    store.close()
    sim = ShioajiSim()
    sim.start()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        down = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: stays waiting
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw")}, down)
        path = tmp_path / "config.toml"
        path.write_text(_toml(config))
        env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                stderr=subprocess.PIPE, text=True, env=env)
        ready = systemd.wait_for("READY=1")
        code, err = _stop(proc)
    finally:
        systemd.close()
        sim.stop()
    status = next(f for f in ready if f.startswith("STATUS="))
    assert "3 waiting notification(s), oldest" in status, ready
    line = next(x for x in err.splitlines() if "poller running:" in x)
    assert "3 waiting notification(s)" in line, err
    assert code == 0, err
