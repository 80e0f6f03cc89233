"""sd_notify with a datagram socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poller.simulator.shioaji import ShioajiSim
from poller.systemd import Notifier, watchdog_interval
from tests.conftest import Receiver, daemon_config
from tests.test_daemon import _toml


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> set[str]:
    return set(sock.recv(4096).decode().split("\n"))


def test_messages(fake_systemd: tuple[socket.socket, str]) -> None:
    sock, path = fake_systemd
    notify = Notifier(path)
    assert notify.enabled
    notify.ready("2 connection(s)")
    assert receive(sock) == {"READY=1", f"MAINPID={os.getpid()}", "STATUS=2 connection(s)"}
    notify.reloading()
    fields = receive(sock)
    assert "RELOADING=1" in fields and any(f.startswith("MONOTONIC_USEC=") for f in fields)
    notify.watchdog()
    assert receive(sock) == {"WATCHDOG=1"}
    notify.status("busy")
    assert receive(sock) == {"STATUS=busy"}
    notify.stopping()
    assert receive(sock) == {"STOPPING=1"}
    notify.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    notify = Notifier("")
    assert not notify.enabled
    notify.ready()
    notify.watchdog()
    notify.close()


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    notify = Notifier(str(tmp_path / "gone.sock"))
    notify.ready()  # logged at debug, not raised
    notify.close()


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("10000000", None, 5.0),
    ("10000000", "self", 5.0),
    ("10000000", "1", None),
    (None, None, None),
    ("garbage", None, None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for key, value in (("WATCHDOG_USEC", usec),
                       ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert watchdog_interval() == expected


def test_a_full_notify_socket_drops_messages_instead_of_blocking(tmp_path: Path) -> None:
    path = str(tmp_path / "unread.sock")
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(path)  # bound, never read: its queue fills after a few datagrams
    notifier = Notifier(path)
    sender = threading.Thread(target=lambda: [notifier.watchdog() for _ in range(500)])
    sender.start()
    sender.join(timeout=30)
    alive = sender.is_alive()
    notifier.close()
    unread.close()
    assert not alive and notifier.dropped > 0


def test_the_daemon_goes_on_while_nobody_reads_the_notify_socket(
        tmp_path: Path, receiver: Receiver) -> None:
    sim = ShioajiSim()
    sim.start()
    path = str(tmp_path / "unread.sock")
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(path)
    lines: list[str] = []
    full = threading.Event()

    def collect(stream: Any) -> None:
        for line in stream:
            lines.append(line)
            if "notify socket is full" in line:
                full.set()

    try:
        account = sim.accounts()[0]
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.2}},
                               receiver.url, announce_existing=True)
        config_path = tmp_path / "config.toml"
        config_path.write_text(_toml(config))
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000",
               "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(config_path)],
                                stderr=subprocess.PIPE, text=True, env=env)
        reader = threading.Thread(target=collect, args=(proc.stderr,), daemon=True)
        reader.start()
        assert full.wait(30), "".join(lines)  # ticks every 50 ms filled the socket
        order = sim.book.place(account, "2890", "BUY", 1, "27.1")
        receiver.wait_for(lambda e: "PLACED" in receiver.scenes(order.order_id))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        reader.join(timeout=5)
        assert proc.stderr is not None
        proc.stderr.close()
    finally:
        unread.close()
        sim.stop()
    assert proc.returncode == 0, "".join(lines)
    assert sum("notify socket is full" in line for line in lines) == 1
