"""The SQLite file under the store: connect with the durability pragmas, check integrity,
migrate the schema, take the one-daemon lock, and sort every fault into one clear line.

A fault is not corruption: a locked, full, read-only or failing database gives a
:class:`~poller.errors.StoreError` with its ``reason`` and leaves the file alone. Only a file
SQLite itself calls damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed ``quick_check``)
is moved aside, and only by the process holding the daemon lock. The database, its WAL and
SHM files (SQLite gives them the database file's mode) and the lock file are private: 0600.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from poller.errors import StoreError
from poller.migrations import MIGRATIONS
from poller.models import iso, utcnow

logger = logging.getLogger(__name__)

REQUIRED_PRAGMAS = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1}
#: How long a statement waits for another process's lock before it gives up (milliseconds).
BUSY_TIMEOUT_MS = 5000
PRIVATE = 0o600

# SQLite's primary result codes (the low byte of an extended code).
_REASONS = {
    3: "readonly",  # SQLITE_PERM
    5: "locked",  # SQLITE_BUSY
    6: "locked",  # SQLITE_LOCKED
    8: "readonly",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL
    14: "readonly",  # SQLITE_CANTOPEN: the file or its folder cannot be opened for writing
    23: "readonly",  # SQLITE_AUTH
    26: "corrupt",  # SQLITE_NOTADB
}


class Damaged(sqlite3.DatabaseError):
    """``quick_check`` found the file damaged (SQLite raised nothing by itself)."""


def reason_of(err: BaseException) -> str:
    """What kind of fault a sqlite3 (or OS) error is (see :class:`StoreError`)."""
    if isinstance(err, Damaged):
        return "corrupt"
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        return _REASONS.get(code & 0xFF, "other")
    if isinstance(err, OSError):
        if err.errno == errno.ENOSPC:
            return "full"
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "readonly"
        return "io"
    return "other"


def fault(err: BaseException, path: Path, doing: str) -> StoreError:
    """One line for a person: what happened to which file, and what to do about it."""
    reason = reason_of(err)
    detail = getattr(err, "strerror", None) or str(err)
    text = {
        "locked": f"database {path} is locked by another process (waited "
                  f"{BUSY_TIMEOUT_MS // 1000} s); it is not damaged — try again, or stop the "
                  "process that holds it",
        "full": f"cannot {doing} {path}: no space left (free disk space, or raise "
                "daemon.max_database_mb)",
        "readonly": f"cannot {doing} {path}: the file, its folder or its mount is not "
                    f"writable ({detail})",
        "io": f"cannot {doing} {path}: I/O error ({detail}); check the disk",
        "corrupt": f"database {path} is damaged ({detail}); `poller run` moves it aside and "
                   "starts from a silent baseline",
    }.get(reason, f"cannot {doing} {path}: {detail}")
    return StoreError(text, reason=reason)


def make_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; tighten it if it is ours."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, PRIVATE)
    except FileExistsError:
        info = path.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
        return
    os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the durability pragmas set and then asserted.

    :raises sqlite3.Error: the file cannot be opened or is not a database (sort it with
        :func:`fault`).
    """
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so Python's
    # implicit transactions never split what must be one transaction.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        for name, wanted in REQUIRED_PRAGMAS.items():
            actual = conn.execute(f"PRAGMA {name}").fetchone()[0]
            if actual != wanted:
                raise StoreError(f"database {path}: PRAGMA {name} is {actual!r}, need "
                                 f"{wanted!r}")
    except BaseException:
        conn.close()
        raise
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting (up to the busy timeout) for another process.

    SQLite does not call its busy handler for a journal-mode change: two processes opening a
    new file at once (the API thread and a CLI command, say) would see ``SQLITE_BUSY`` at
    once. Retry it for as long as any other statement would wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if reason_of(err) != "locked" or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # back off: the other opener holds the lock for milliseconds
        pause = min(pause * 2, 0.1)


def check(conn: sqlite3.Connection) -> None:
    """``quick_check``: :class:`Damaged` when SQLite finds the file inconsistent."""
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise Damaged(f"quick_check: {result}")


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every schema step the file does not have yet, each in one transaction.

    The version is read again inside each step's transaction: two processes opening a new
    file at once (the daemon and a CLI command) must not both apply the same step.
    """
    while True:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < len(MIGRATIONS):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        logger.debug("database migrated to schema version %d", version + 1)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this poller ({len(MIGRATIONS)})"
        )


def probe_write(conn: sqlite3.Connection) -> None:
    """Write one row, so a daemon learns at start, not at its first fill, that it cannot.

    SQLite opens a file it cannot write read-only without a word; this write fails on a
    read-only file, folder or mount (or an immutable file) with ``SQLITE_READONLY``.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (iso(utcnow()),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def limit_size(conn: sqlite3.Connection, max_mb: float | None) -> None:
    """Cap the file at ``max_mb`` MiB (``PRAGMA max_page_count``; ``None``: no cap).

    Past the cap a commit fails exactly as on a full disk (``SQLITE_FULL``). A cap below the
    current size holds the file at its current size.
    """
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = 2**31 - 2 if max_mb is None else max(1, int(max_mb * 1024 * 1024 // page_size))
    conn.execute(f"PRAGMA max_page_count = {pages}")


def move_aside(path: Path, reason: str) -> Path:
    """Move a damaged database (with its WAL and SHM) out of the way; returns where to."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            os.replace(source, Path(str(target) + suffix))
    logger.error("database %s is damaged (%s); moved it to %s and starting a fresh baseline",
                 path, reason, target)
    return target


@dataclass(frozen=True)
class Identity:
    """Which file a path named when it was opened (device and inode)."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> Identity | None:
        """The identity of the file at ``path`` now, or None when there is none."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return cls(info.st_dev, info.st_ino)


def take_lock(path: Path) -> IO[bytes]:
    """Become the one daemon of the database at ``path`` (``flock`` on ``path.lock``).

    :raises StoreError: another daemon holds the lock (``reason="busy"``).
    """
    lock_path = lock_path_of(path)
    try:
        make_private(lock_path)
        handle = open(lock_path, "ab")  # held open (and locked) for the daemon's life
    except OSError as err:
        raise fault(err, lock_path, "create the lock file") from err
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        raise StoreError(
            f"another poller is already running on {path} (lock {lock_path} is held)",
            reason="busy") from err
    return handle


def lock_path_of(path: Path) -> Path:
    """The lock file beside a database."""
    return Path(str(path) + ".lock")


def open_file(path: Path, *, daemon: bool, max_mb: float | None
              ) -> tuple[sqlite3.Connection, Path | None]:
    """Open, check, migrate (and for the daemon: probe) the database at ``path``.

    :param daemon: the caller holds the daemon lock: only it moves a damaged file aside
        (returned as the second value), and it proves the file writable.
    :raises StoreError: any fault, sorted (see :func:`fault`).
    """
    recovered: Path | None = None
    try:
        make_private(path)
    except OSError as err:
        raise fault(err, path, "create") from err
    try:
        conn = _checked(path)
    except sqlite3.Error as err:
        if reason_of(err) != "corrupt" or not daemon:
            raise fault(err, path, "open") from err
        # Damaged, and we are the daemon: nobody else can be using the file.
        recovered = move_aside(path, str(err))
        make_private(path)
        try:
            conn = _checked(path)
        except sqlite3.Error as again:
            raise fault(again, path, "create") from again
    try:
        migrate(conn)
        limit_size(conn, max_mb)
        if daemon:
            _probe(conn, path)
    except BaseException as err:
        conn.close()
        if isinstance(err, sqlite3.Error):
            raise fault(err, path, "write to") from err
        raise
    return conn, recovered


def _checked(path: Path) -> sqlite3.Connection:
    """A connection to a file that passed ``quick_check``."""
    conn = connect(path)
    try:
        check(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _probe(conn: sqlite3.Connection, path: Path) -> None:
    """The daemon's start-up write: a read-only file refuses it; a full one is let through
    (space may come back; commits are retried), with a warning."""
    try:
        probe_write(conn)
    except sqlite3.Error as err:
        if reason_of(err) != "full":
            raise
        logger.warning("%s", fault(err, path, "write to"))
