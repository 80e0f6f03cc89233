"""sd_notify with a datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller.systemd import Notifier, watchdog_interval


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
