"""The SQLite file: durability pragmas asserted, a damaged file moved aside whole, one lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from poller.dbfile import BUSY_TIMEOUT_MS, REQUIRED_PRAGMAS, check, connect, move_aside, take_lock
from poller.errors import StoreError
from poller.store import Store


def test_connect_sets_and_asserts_the_durability_pragmas(tmp_path: Path) -> None:
    conn = connect(tmp_path / "p.db")
    try:
        for name, wanted in REQUIRED_PRAGMAS.items():
            assert conn.execute(f"PRAGMA {name}").fetchone()[0] == wanted
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
        check(conn)
    finally:
        conn.close()


def test_move_aside_takes_the_wal_and_shm_along(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).write_bytes(b"junk" + suffix.encode())
    target = move_aside(path, "quick_check failed")
    assert not path.exists() and target.name.startswith("p.db.corrupt-")
    for suffix in ("", "-wal", "-shm"):
        assert Path(str(target) + suffix).read_bytes() == b"junk" + suffix.encode()


def test_one_lock_per_database(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first = take_lock(path)
    with pytest.raises(StoreError, match="another poller is already running"):
        take_lock(path)
    first.close()
    take_lock(path).close()


def test_check_reports_damage(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(str(i) * 100,) for i in range(500)])
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    # Scribble over the b-tree header of the table's first page.
    data[4096:4096 + 12] = b"\x0d\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            check(conn)
    finally:
        conn.close()


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # SQLite answers a concurrent switch to WAL with SQLITE_BUSY without waiting; CI once
    # caught the API thread refused this way (about 1 fresh file in 30 with three openers).
    failures: list[str] = []

    def open_and_migrate(path: Path) -> None:
        try:
            Store.open(path).close()
        except StoreError as err:
            failures.append(str(err))

    for round_ in range(120):
        path = tmp_path / f"{round_}.db"
        openers = [threading.Thread(target=open_and_migrate, args=(path,)) for _ in range(3)]
        for thread in openers:
            thread.start()
        for thread in openers:
            thread.join()
    assert failures == []
