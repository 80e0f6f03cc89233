"""A store fault is not corruption, and a failed commit loses nothing — with real processes:
a lock held by another process, a read-only mount, files deleted or replaced under a running
daemon, a full database, and private file modes."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from poller.cli import main
from poller.errors import StoreError
from poller.records import Batch
from poller.simulator.shioaji import ShioajiSim
from poller.store import Store
from tests.conftest import Receiver, daemon_config, running_app
from tests.test_daemon import _toml
from tests.test_lifecycle import FakeSystemd

HOLD_LOCK = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE meta SET value = value")
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
""")


def config_file(tmp_path: Path, receiver_url: str | None = None, **daemon: object) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(_toml(daemon_config(tmp_path, {}, receiver_url, **daemon)))
    return path


def test_a_locked_database_is_reported_and_never_moved_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path)
    database = tmp_path / "poller.db"
    Store.open(database, lock=True).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(database)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert main(["orders", "-c", str(path)]) == 74
    finally:
        holder.communicate("")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is locked by another process" in err[0]
    assert "it is not damaged" in err[0]
    assert not list(tmp_path.glob("poller.db.corrupt-*"))  # nothing moved aside
    assert main(["orders", "-c", str(path)]) == 0  # lock released: all is still there


def test_a_damaged_file_is_left_alone_by_read_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path)
    (tmp_path / "poller.db").write_bytes(b"not a database at all" * 200)
    assert main(["events", "-c", str(path)]) == 74
    assert "is damaged" in capsys.readouterr().err
    assert (tmp_path / "poller.db").read_bytes().startswith(b"not a database")


def test_a_read_only_database_is_refused_before_ready(tmp_path: Path) -> None:
    """A read-only mount (a tmpfs remounted ro in a private mount namespace, which needs no
    real root): the daemon exits 74 with one line and never says READY=1."""
    assert shutil.which("unshare"), "util-linux unshare is needed for this test"
    mount = tmp_path / "ro"
    mount.mkdir()
    config = config_file(tmp_path)
    text = config.read_text().replace(str(tmp_path / "poller.db"), str(mount / "poller.db"))
    config.write_text(text)
    create = f'from poller.store import Store; Store.open("{mount}/poller.db", lock=True).close()'
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs none {mount}
        {sys.executable} -c '{create}'
        mount -o remount,ro {mount}
        exec {sys.executable} -m poller run -c {config}
    """)
    systemd = FakeSystemd(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           script], capture_output=True, text=True, env=env, timeout=60)
    messages = pending_datagrams(systemd)
    systemd.close()
    assert done.returncode == 74, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not writable" in lines[0], done.stderr
    assert not any("READY=1" in m for m in messages)


def pending_datagrams(systemd: FakeSystemd) -> list[str]:
    """Every notify message already sent to ``systemd`` (without waiting for more)."""
    systemd.sock.setblocking(False)
    found = []
    while True:
        try:
            found.append(systemd.sock.recv(65536).decode())
        except BlockingIOError:
            return found


def test_the_daemon_stops_when_its_database_is_deleted_or_replaced(
        tmp_path: Path, receiver: Receiver) -> None:
    sim = ShioajiSim()
    sim.start()
    try:
        for victim in ("poller.db", "poller.db.lock"):
            folder = tmp_path / victim
            folder.mkdir()
            path = folder / "config.toml"
            path.write_text(_toml(daemon_config(
                folder, {"tw": sim.broker_config("tw") | {"interval": 0.2}}, receiver.url)))
            systemd = FakeSystemd(folder / "notify.sock")
            env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "poller", "run", "-c", str(path)],
                                    env=env, stderr=subprocess.PIPE, text=True)
            systemd.wait_for("READY=1")
            target = folder / victim
            if victim.endswith(".lock"):
                target.unlink()  # a second daemon could now lock a new file
                target.write_bytes(b"")
            else:
                target.rename(folder / "elsewhere.db")
            _, err = proc.communicate(timeout=30)
            systemd.close()
            assert proc.returncode == 74, err
            assert "stopping, since another poller could now start beside this one" in err
    finally:
        sim.stop()


def test_files_are_private(tmp_path: Path, receiver: Receiver) -> None:
    config = daemon_config(tmp_path, {}, receiver.url)
    old = os.umask(0o022)
    try:
        async def run() -> None:
            async with running_app(config) as app:
                await app.commit(Batch())

        asyncio.run(run())
    finally:
        os.umask(old)
    for name in ("poller.db", "poller.db-wal", "poller.db-shm", "poller.db.lock"):
        path = tmp_path / name
        if path.exists():  # the WAL and SHM are gone after a clean close
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "poller.db").stat().st_mode) == 0o600


def test_a_full_database_loses_nothing_and_recovers(tmp_path: Path, receiver: Receiver) -> None:
    """Disk full (max_page_count): fills seen meanwhile are announced once space is back;
    memory never runs ahead of the disk; the status line says why; the operator hears once
    when it starts and once when it ends."""
    sim = ShioajiSim()
    sim.start()
    try:
        account = sim.accounts()[0]
        order = sim.book.place(account, "2890", "BUY", 1000, "27.1")
        sim.book.accept(order.order_id)
        config = daemon_config(tmp_path, {"tw": sim.broker_config("tw") | {"interval": 0.1}},
                               receiver.url)

        async def run() -> tuple[str, str, bool, int]:
            async with running_app(config) as app:
                tracker = app.trackers["tw"]
                while not tracker.known:
                    await asyncio.sleep(0.05)
                await app.db(app.store._conn.execute, "VACUUM")
                await app.db(app.store.set_size_limit, 0.001)  # full from now on
                filled = 0
                while app.store_health.ok and filled < 900:  # until a commit needs a page
                    filled += 1
                    sim.book.fill(order.order_id, 1)
                    seen = tracker.polls
                    while tracker.polls < seen + 2:
                        await asyncio.sleep(0.02)
                sim.book.fill(order.order_id, 5)  # and one more while it is full
                total = filled + 5
                seen = tracker.polls
                while tracker.polls < seen + 2:
                    await asyncio.sleep(0.02)
                key = next(iter(tracker.known))
                in_memory = str(tracker.known[key].filled_qty)
                status = app.status_line()
                await asyncio.to_thread(receiver.wait_for, lambda e: any(
                    x["payload"]["scene_type"] == "STORE_FAILING" for x in e))
                # An interval later (the last announcement moved back by one), the next
                # failed commit reminds people once; the one after it does not.
                interval = app.settings.daemon.alert_repeat_interval
                app.store_health._announced -= timedelta(seconds=interval)  # type: ignore
                for qty in (2, 3):
                    total += qty
                    sim.book.fill(order.order_id, qty)
                    seen = tracker.polls
                    while tracker.polls < seen + 2:
                        await asyncio.sleep(0.02)
                await asyncio.to_thread(receiver.wait_for, lambda e: any(
                    x["payload"].get("phase") == "reminder" for x in e))
                await app.db(app.store.set_size_limit, None)  # space is back
                await asyncio.to_thread(receiver.wait_for, lambda e: any(
                    x["payload"]["scene_type"] == "STORE_RECOVERED" for x in e))
                return in_memory, status, app.store_health.ok, total

        in_memory, status, ok, total = asyncio.run(run())
    finally:
        sim.stop()
    assert int(in_memory) < total  # memory did not run ahead of the disk
    assert "store cannot commit since" in status and "(full)" in status
    receiver.wait_for(lambda e: any(x["payload"].get("filled_qty") == str(total)
                                    for x in e if x["payload"]["scene_type"] == "FILLED"))
    assert ok
    assert [s for s in receiver.scenes() if s.startswith("STORE_")] == [
        "STORE_FAILING", "STORE_FAILING", "STORE_RECOVERED"]
    phases = [e["payload"].get("phase") for e in receiver.events
              if e["payload"]["scene_type"] == "STORE_FAILING"]
    assert phases == ["started", "reminder"]


def test_every_fault_is_one_store_error_with_its_reason(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "p.db", lock=True)
    try:
        store.set_size_limit(0.001)
        store._conn.execute("VACUUM")
        with pytest.raises(StoreError) as caught:
            for n in range(200):
                store.watch("tw", "A", f"order-{n:04d}-" + "x" * 500)
        assert caught.value.reason == "full" and caught.value.transient
        assert "no space left" in str(caught.value) and "sqlite" not in str(caught.value)
    finally:
        store.close()
    first = Store.open(tmp_path / "q.db", lock=True)
    try:
        with pytest.raises(StoreError, match="already running") as busy:
            Store.open(tmp_path / "q.db", lock=True)
        assert busy.value.reason == "busy" and not busy.value.transient
    finally:
        first.close()
