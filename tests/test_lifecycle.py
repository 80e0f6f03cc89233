"""Running it for real: `poller run` under a fake systemd, reload, stop, health and metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from poller.simulator.shioaji import ShioajiSim
from tests.conftest import Receiver, daemon_config
from tests.test_daemon import _toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeSystemd:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[set[str]] = []

    def wait_for(self, field: str, timeout: float = 15.0) -> set[str]:
        """Block until a datagram containing ``field`` arrives; return it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {field} from the daemon; got {self.messages}")
            self.sock.settimeout(remaining)
            fields = set(self.sock.recv(65536).decode().split("\n"))
            self.messages.append(fields)
            if field in fields or any(f.startswith(field) for f in fields):
                return fields

    def close(self) -> None:
        self.sock.close()


def test_notify_watchdog_reload_stop_and_restart(tmp_path: Path, receiver: Receiver) -> None:
    sim = ShioajiSim(seed=11)
    sim.start()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    port = free_port()
    try:
        account = sim.accounts()[0]
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True,
                               health_listen=f"127.0.0.1:{port}")
        path = tmp_path / "config.toml"
        good = _toml(config)
        path.write_text(good)
        env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000",
               "PYTHONUNBUFFERED": "1"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        ready = systemd.wait_for("READY=1")
        assert f"MAINPID={proc.pid}" in ready
        systemd.wait_for("WATCHDOG=1")
        systemd.wait_for("WATCHDOG=1")

        a = sim.book.place(account, "2890", "BUY", 4, "27.1")
        receiver.wait_for(lambda e: len(e) >= 1)

        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                   timeout=5).read())
        assert health["status"] == "ok" and health["connections"]["tw"]["last_success"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                         timeout=5).read().decode()
        assert 'poller_polls_total{call="list",connection="tw"}' in metrics
        assert 'poller_events_total{scene="PLACED"} 1.0' in metrics
        assert 'poller_deliveries_total{notifier="hook",outcome="delivered"}' in metrics

        # A broken config on SIGHUP: refused with one clear line, the old one keeps working.
        path.write_text(good.replace("[brokers.tw]", "[brokers.tw]\nbogus_key = 1"))
        proc.send_signal(signal.SIGHUP)
        systemd.wait_for("RELOADING=1")
        systemd.wait_for("READY=1")
        sim.book.accept(a.order_id)
        sim.book.fill(a.order_id, 1)
        receiver.wait_for(lambda e: len(e) >= 2)

        # A valid change on SIGHUP is taken: a second notifier appears.
        second = Receiver()
        second.server.start()
        config["notifiers"]["second"] = {"kind": "webhook", "url": second.url}
        path.write_text(_toml(config))
        proc.send_signal(signal.SIGHUP)
        systemd.wait_for("RELOADING=1")
        systemd.wait_for("READY=1")
        sim.book.fill(a.order_id, 1)
        second.wait_for(lambda e: len(e) >= 1)
        second.server.stop()

        proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1")
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "brokers.tw.bogus_key: unknown key" in err
        assert "Traceback" not in err

        # While stopped, the order fills; after a restart that is announced, once.
        sim.book.fill(a.order_id)
        path.write_text(good)
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        receiver.wait_for(lambda e: "FINAL_FILLED" in receiver.scenes())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert receiver.scenes(a.order_id) == ["PLACED", "FILLED", "FILLED", "FINAL_FILLED"]
        ids = [e["id"] for e in receiver.events]
        assert len(ids) == len(set(ids))
    finally:
        systemd.close()
        sim.stop()


def test_health_listen_must_be_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    from poller.cli import main

    config = daemon_config(tmp_path, {}, None, health_listen="0.0.0.0:9108")
    path = tmp_path / "c.toml"
    path.write_text(_toml(config))
    assert main(["check-config", "-c", str(path)]) == 78
    assert "daemon.health_listen: 0.0.0.0 is not a loopback address" in capsys.readouterr().err
