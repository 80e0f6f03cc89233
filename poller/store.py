"""The durable state: last snapshot per order, events and the outbox, in one SQLite file.

Everything the daemon must not forget goes through :meth:`Store.commit`, which writes the
new snapshots, the new events and one outbox row per (event, notifier) in ONE transaction,
so a crash can never leave a transition recorded without its deliveries (or the reverse).

Over 400 lines: every SQL statement the daemon runs is here, one short method each, so the
schema (``migrations.py``) and the queries that depend on it are read in one place.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from poller.dbfile import (
    REQUIRED_PRAGMAS,
    Identity,
    fault,
    limit_size,
    lock_path_of,
    open_file,
    take_lock,
)
from poller.events import OrderEvent
from poller.models import OrderSnapshot, iso, utcnow
from poller.records import (
    ActionRow,
    Batch,
    Delivery,
    InstanceInfo,
    InstanceRow,
    Lease,
    LeaseRound,
    OutboxRow,
    OutboxSummary,
    StoredOrder,
)

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])



def guarded(doing: str) -> Callable[[F], F]:
    """Turn any sqlite3 error of a Store method into one :class:`StoreError` line."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def call(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as err:
                raise fault(err, self.path, doing) from err
        return cast(F, call)
    return wrap


class Store:
    """The SQLite state database. Open with :meth:`open`; one instance per process."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock: IO[bytes] | None) -> None:
        self._conn = conn
        self.path = path
        self._lock = lock
        self.recovered_from: Path | None = None
        self._identity = Identity.of(path)
        self._lock_identity = Identity.of(lock_path_of(path)) if lock is not None else None

    @classmethod
    def open(cls, path: Path | str, *, lock: bool = False,
             max_mb: float | None = None) -> Store:
        """Open (creating and migrating if needed) the database at ``path``.

        With ``lock=True`` the caller becomes the one daemon allowed on this database (a
        second one gets a :class:`StoreError`), the file must be writable (checked with a
        real write, before the daemon says it is ready), and a file SQLite calls damaged is
        moved aside (``recovered_from`` says where) for a fresh one, so the daemon starts
        from a silent baseline instead of re-announcing everything. Without the lock (the
        read commands) a damaged file is left alone and reported; a locked one is waited
        for a bounded time. Every fault is a :class:`StoreError` naming its ``reason``.

        :param max_mb: cap the file's size (``daemon.max_database_mb``).
        """
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise fault(err, path.parent, "create the folder of") from err
        lock_file = take_lock(path) if lock else None
        try:
            conn, recovered = open_file(path, daemon=lock_file is not None, max_mb=max_mb)
        except BaseException:
            if lock_file is not None:
                lock_file.close()
            raise
        store = cls(conn, path, lock_file)
        store.recovered_from = recovered
        return store

    @property
    def location(self) -> str:
        """The file's path, for people."""
        return str(self.path)

    @property
    def clustered(self) -> bool:
        """Never: a SQLite file has one daemon (the daemon lock), which holds everything."""
        return False

    def size_bytes(self) -> int | None:
        """The file's size with its WAL (None when it cannot be read)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except FileNotFoundError:
                continue
            except OSError:
                return None
        return total

    def close(self) -> None:
        """Close the database and release the daemon lock."""
        self._conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def pragmas(self) -> dict[str, Any]:
        """The durability settings in force on this connection (asserted on open)."""
        return {name: self._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in
                (*REQUIRED_PRAGMAS, "busy_timeout")}

    @guarded("limit the size of")
    def set_size_limit(self, max_mb: float | None) -> None:
        """Change the size cap (``daemon.max_database_mb``, on reload)."""
        limit_size(self._conn, max_mb)

    def identity_problem(self) -> str | None:
        """Why the files this store opened are not the ones at their paths any more, or None.

        A database or lock file deleted or replaced while the daemon runs would let a second
        daemon start beside this one (on a new lock file) or write to a file nobody reads.
        """
        checks = [(self.path, self._identity)]
        if self._lock is not None:
            checks.append((lock_path_of(self.path), self._lock_identity))
        for where, opened in checks:
            now = Identity.of(where)
            if now is None:
                return f"{where} was deleted while poller was using it"
            if now != opened:
                return f"{where} was replaced by another file while poller was using it"
        return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            # A failed statement may have ended the transaction already (SQLite rolls back
            # by itself after some I/O errors): never let the rollback hide the cause.
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- orders -------------------------------------------------------------------------

    @guarded("read")
    def load_orders(self, broker: str) -> dict[tuple[str, str, str], OrderSnapshot]:
        """Every stored snapshot of one connection, keyed by (broker, account, order id)."""
        rows = self._conn.execute(
            "SELECT snapshot FROM orders WHERE broker = ?", (broker,)
        ).fetchall()
        result: dict[tuple[str, str, str], OrderSnapshot] = {}
        for (text,) in rows:
            snap = OrderSnapshot.from_json(json.loads(text))
            result[snap.key] = snap
        return result

    @guarded("read")
    def missing_counts(self, broker: str) -> dict[tuple[str, str, str], int]:
        """How many polls in a row each non-final order of a connection was absent."""
        rows = self._conn.execute(
            "SELECT account_id, order_id, missing FROM orders "
            "WHERE broker = ? AND missing > 0", (broker,)
        ).fetchall()
        return {(broker, a, o): n for a, o, n in rows}

    @guarded("read")
    def known_accounts(self, broker: str) -> set[str]:
        """Accounts of a connection whose baseline has been recorded."""
        rows = self._conn.execute(
            "SELECT account_id FROM accounts WHERE broker = ?", (broker,)
        ).fetchall()
        return {a for (a,) in rows}

    @guarded("read")
    def list_orders(self, broker: str | None = None, *, include_final: bool = True) -> list[
        StoredOrder
    ]:
        """Tracked orders, newest change first, for ``poller orders``."""
        sql = "SELECT snapshot, first_seen, last_seen, last_changed, missing, stale FROM orders"
        clauses, args = [], []
        if broker:
            clauses.append("broker = ?")
            args.append(broker)
        if not include_final:
            clauses.append("final = 0")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY last_changed DESC, order_id"
        return [
            StoredOrder(OrderSnapshot.from_json(json.loads(s)), fs, ls, lc, m, bool(st))
            for s, fs, ls, lc, m, st in self._conn.execute(sql, args).fetchall()
        ]

    # -- the one write path --------------------------------------------------------------

    @guarded("write to")
    def commit(self, batch: Batch) -> list[OrderEvent]:
        """Write a poll's snapshots, events and outbox rows in one transaction.

        Each new event gets one outbox row per notifier ``batch.routes`` names for it.

        :returns: the events that were new (an event id already stored is a replay of a
            known fact and is neither stored nor routed again).
        """
        now = iso(utcnow())
        epoch = time.time()
        fresh: list[OrderEvent] = []
        with self._transaction() as db:
            for broker, account in batch.baselined:
                db.execute(
                    "INSERT OR IGNORE INTO accounts (broker, account_id, baseline_at) "
                    "VALUES (?, ?, ?)", (broker, account, now),
                )
            for snap in batch.snapshots:
                db.execute(
                    "INSERT INTO orders (broker, account_id, order_id, status, final, "
                    "snapshot, first_seen, last_seen, last_changed, missing, stale) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0) "
                    "ON CONFLICT (broker, account_id, order_id) DO UPDATE SET "
                    "status = excluded.status, final = excluded.final, "
                    "snapshot = excluded.snapshot, last_seen = excluded.last_seen, "
                    "last_changed = excluded.last_changed, missing = 0, stale = 0",
                    (*snap.key, snap.status.value, int(snap.final),
                     json.dumps(snap.to_json(), separators=(",", ":")), now, now, now),
                )
            for key in batch.seen:
                db.execute(
                    "UPDATE orders SET last_seen = ?, missing = 0 WHERE broker = ? "
                    "AND account_id = ? AND order_id = ?", (now, *key),
                )
            for key, count in batch.missing.items():
                db.execute(
                    "UPDATE orders SET missing = ? WHERE broker = ? AND account_id = ? "
                    "AND order_id = ?", (count, *key),
                )
            for key in batch.stale:
                db.execute(
                    "UPDATE orders SET stale = 1 WHERE broker = ? AND account_id = ? "
                    "AND order_id = ?", key,
                )
            for event in batch.events:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (id, event_type, scene, broker, "
                    "account_id, order_id, created_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.id, event.event_type, event.scene, event.broker,
                     event.account_id, event.order_id, now,
                     json.dumps(event.to_json(), separators=(",", ":"))),
                )
                if cursor.rowcount != 1:
                    continue
                fresh.append(event)
                for notifier in batch.routes.get(event.id, ()):
                    db.execute(
                        "INSERT INTO outbox (event_seq, notifier, state, next_attempt_at, "
                        "created_at) VALUES (?, ?, 'pending', ?, ?)",
                        (cursor.lastrowid, notifier, epoch, now),
                    )
        return fresh

    # -- outbox ---------------------------------------------------------------------------

    @guarded("read")
    def due(self, notifier: str, *, now: float | None = None, limit: int = 50) -> list[OutboxRow]:
        """Pending deliveries of one notifier whose time has come, oldest event first.

        Per-order ordering: a row waiting for its retry holds back the later rows of the same
        order (other orders go on). Rows held for quiet hours hold back nothing.
        """
        now = time.time() if now is None else now
        rows = self._conn.execute(
            "SELECT o.id, o.attempts, o.created_at, e.body, o.held, o.next_attempt_at, "
            "e.broker, e.account_id, e.order_id, e.event_type, e.id FROM outbox o "
            "JOIN events e ON e.seq = o.event_seq "
            "WHERE o.notifier = ? AND o.state = 'pending' ORDER BY e.seq LIMIT ?",
            (notifier, max(limit * 20, 1000)),
        ).fetchall()
        result: list[OutboxRow] = []
        blocked: set[tuple[str, ...]] = set()
        for (row_id, attempts, created, body, held, next_at, broker, account, order_id,
             event_type, event_id) in rows:
            key = (broker, account, order_id) if event_type == "TRADE" else (event_id,)
            if key in blocked:
                continue
            if next_at > now:
                if not held:
                    blocked.add(key)
                continue
            result.append(OutboxRow(
                row_id, notifier, OrderEvent.from_json(json.loads(body)), attempts,
                datetime.fromisoformat(created.replace("Z", "+00:00")), bool(held)))
            if len(result) >= limit:
                break
        return result

    @guarded("write to")
    def hold(self, row_id: int, *, until: float) -> None:
        """Hold a delivery for quiet hours; it is sent in a digest at ``until``."""
        with self._transaction() as db:
            db.execute("UPDATE outbox SET held = 1, next_attempt_at = ? WHERE id = ?",
                       (until, row_id))

    @guarded("read")
    def next_attempt(self, notifier: str) -> float | None:
        """When the earliest pending delivery of a notifier becomes due (epoch seconds)."""
        row = self._conn.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE notifier = ? AND state = 'pending'",
            (notifier,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    @guarded("write to")
    def mark_sent(self, row_id: int) -> None:
        """Record that the service accepted a delivery (only ever after it did)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                "last_error = '', held = 0 WHERE id = ?", (iso(utcnow()), row_id),
            )

    @guarded("write to")
    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None:
        """Record a failed attempt and when to try again."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE id = ?", (next_attempt_at, error, row_id),
            )

    @guarded("write to")
    def mark_dead(self, row_id: int, *, error: str) -> None:
        """Give up on a delivery (dead letter); ``requeue_dead`` brings it back."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ? "
                "WHERE id = ?", (error, row_id),
            )

    @guarded("write to")
    def requeue_dead(self, notifier: str | None = None) -> int:
        """Put dead-lettered deliveries back in the queue; returns how many."""
        sql = "UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE state = 'dead'"
        args: list[Any] = [time.time()]
        if notifier:
            sql += " AND notifier = ?"
            args.append(notifier)
        with self._transaction() as db:
            return db.execute(sql, args).rowcount

    @guarded("read")
    def backlog(self) -> dict[str, int]:
        """Pending deliveries per notifier."""
        rows = self._conn.execute(
            "SELECT notifier, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY notifier"
        ).fetchall()
        return {n: c for n, c in rows}

    @guarded("read")
    def outbox_summary(self, notifiers: Iterable[str] | None = None
                       ) -> dict[str, OutboxSummary]:
        """Per notifier: pending count and the oldest pending row's age, dead letters, the
        newest error and the last delivery (for health, status and operator reminders).

        ``notifiers`` names the ones to report (a running daemon knows them: no scan of the
        whole outbox for the names); default, every notifier the outbox has rows for.
        """
        names = list(notifiers) if notifiers is not None else self._notifier_names()
        result: dict[str, OutboxSummary] = {}
        for notifier in names:
            # Index searches only (outbox_latest): the waiting and dead rows are few, and the
            # newest error and delivery are read from the end of their ranges.
            counts = {state: self._conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE notifier = ? AND state = ?",
                (notifier, state)).fetchone() for state in ("pending", "dead")}
            error = self._conn.execute(
                "SELECT last_error FROM outbox WHERE notifier = ? AND state IN "
                "('pending', 'dead') AND last_error != '' ORDER BY id DESC LIMIT 1",
                (notifier,)).fetchone()
            sent = self._conn.execute(
                "SELECT sent_at FROM outbox WHERE notifier = ? AND state = 'sent' "
                "ORDER BY id DESC LIMIT 1", (notifier,)).fetchone()
            result[notifier] = OutboxSummary(
                notifier, counts["pending"][0], _when(counts["pending"][1]), counts["dead"][0],
                error[0] if error else "", _when(sent[0] if sent else None))
        return result

    @guarded("read")
    def connection_orders(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Per connection: open orders, stale ones among them, and when an order was last
        seen; connections with a baseline but no orders are there with zeros."""
        found = {broker: (int(open_ or 0), int(stale or 0), _when(seen))
                 for broker, open_, stale, seen in self._conn.execute(
                     "SELECT broker, SUM(final = 0), SUM(final = 0 AND stale != 0), "
                     "MAX(last_seen) FROM orders GROUP BY broker")}
        for (broker,) in self._conn.execute("SELECT DISTINCT broker FROM accounts"):
            found.setdefault(broker, (0, 0, None))
        return found

    @guarded("read")
    def recent_operator_events(self, recent: int) -> list[tuple[str, str, str, str]]:
        """(connection, scene, created_at, body) of the operator events about a connection
        among the newest ``recent`` events, newest first."""
        return [tuple(row) for row in self._conn.execute(
            "SELECT broker, scene, created_at, body FROM (SELECT * FROM events "
            "ORDER BY seq DESC LIMIT ?) WHERE event_type = 'SYSTEM' AND broker != '' "
            "ORDER BY seq DESC", (recent,))]

    def _notifier_names(self) -> list[str]:
        """Every notifier the outbox has rows for, one index seek each (not a scan)."""
        names: list[str] = []
        while True:
            row = self._conn.execute("SELECT MIN(notifier) FROM outbox WHERE notifier > ?",
                                     (names[-1] if names else "",)).fetchone()
            if row[0] is None:
                return names
            names.append(row[0])

    @guarded("read")
    def recent_events(
        self, limit: int = 50, *, broker: str | None = None
    ) -> list[tuple[OrderEvent, list[Delivery]]]:
        """The newest events (oldest first) with their delivery state at each notifier."""
        sql = "SELECT seq, body FROM events"
        args: list[Any] = []
        if broker:
            sql += " WHERE broker = ?"
            args.append(broker)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = list(reversed(self._conn.execute(sql, args).fetchall()))
        result = []
        for seq, body in rows:
            deliveries = [
                Delivery(n, st, a, err, sent)
                for n, st, a, err, sent in self._conn.execute(
                    "SELECT notifier, state, attempts, last_error, sent_at FROM outbox "
                    "WHERE event_seq = ? ORDER BY notifier", (seq,),
                ).fetchall()
            ]
            result.append((OrderEvent.from_json(json.loads(body)), deliveries))
        return result

    # -- order actions ----------------------------------------------------------------------

    _ACTION_COLUMNS = ("id, broker, account_id, order_id, kind, qty, price, state, attempts, "
                       "outcome, message, created_at, updated_at")

    @guarded("write to")
    def add_action(self, broker: str, account_id: str, order_id: str, kind: str, *,
                   qty: str | None = None, price: str | None = None) -> int:
        """Queue a replace or cancel for the daemon; returns the action id."""
        now = iso(utcnow())
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO actions (broker, account_id, order_id, kind, qty, price, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (broker, account_id, order_id, kind, qty, price, now, now))
            return int(cursor.lastrowid or 0)

    @guarded("read")
    def action(self, action_id: int) -> ActionRow | None:
        """One action by id."""
        row = self._conn.execute(
            f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE id = ?", (action_id,)).fetchone()
        return ActionRow(*row) if row else None

    @guarded("read")
    def open_actions(self, broker: str | None = None) -> list[ActionRow]:
        """Actions not finished yet (queued, or interrupted while sending/verifying)."""
        sql = f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE state IN " \
              "('queued', 'sending', 'sent')"
        args: list[Any] = []
        if broker:
            sql += " AND broker = ?"
            args.append(broker)
        return [ActionRow(*r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    @guarded("read")
    def list_actions(self, *, include_done: bool = False, limit: int = 100
                     ) -> list[ActionRow]:
        """Actions, newest first: those not finished (or all, with ``include_done``)."""
        sql = f"SELECT {self._ACTION_COLUMNS} FROM actions"
        if not include_done:
            sql += " WHERE state IN ('queued', 'sending', 'sent')"
        return [ActionRow(*r) for r in self._conn.execute(sql + " ORDER BY id DESC LIMIT ?",
                                                           (limit,))]

    @guarded("write to")
    def drop_action(self, action_id: int, *, reason: str) -> bool:
        """Take back a queued action before the daemon sends it; False if it is not queued
        (unknown, finished, or already being sent: then it cannot be taken back)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE actions SET state = 'failed', outcome = 'DROPPED', message = ?, "
                "updated_at = ? WHERE id = ? AND state = 'queued'",
                (reason, iso(utcnow()), action_id))
            return cursor.rowcount == 1

    @guarded("write to")
    def expire_actions(self, queued_before: datetime) -> list[ActionRow]:
        """Give up queued actions older than ``queued_before``: sent late, a replace or a
        cancel could act on an order the user no longer meant. Returns them."""
        cutoff = iso(queued_before)
        # The runner asks several times a second and there is almost never anything to
        # expire: look without the write lock first, so those asks never contend with the
        # pollers' commits (nor fail on a full disk).
        if self._conn.execute("SELECT 1 FROM actions WHERE state = 'queued' AND "
                              "created_at < ? LIMIT 1", (cutoff,)).fetchone() is None:
            return []
        with self._transaction() as db:
            rows = [ActionRow(*r) for r in db.execute(
                f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE state = 'queued' "
                "AND created_at < ?", (cutoff,))]
            for row in rows:
                db.execute(
                    "UPDATE actions SET state = 'failed', outcome = 'EXPIRED', message = ?, "
                    "updated_at = ? WHERE id = ?",
                    (f"not sent: it waited longer than daemon.action_expiry (queued "
                     f"{row.created_at})", iso(utcnow()), row.id))
        return rows

    @guarded("write to")
    def update_action(self, action_id: int, state: str, *, outcome: str = "",
                      message: str = "", attempt: bool = False) -> None:
        """Move an action to ``state`` (and record its outcome)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE actions SET state = ?, outcome = ?, message = ?, updated_at = ?, "
                "attempts = attempts + ? WHERE id = ?",
                (state, outcome, message, iso(utcnow()), int(attempt), action_id))

    # -- watched orders ---------------------------------------------------------------------

    @guarded("write to")
    def watch(self, broker: str, account_id: str, order_id: str) -> bool:
        """Add an order id no list call discovers; False if it was already watched."""
        with self._transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO watched (broker, account_id, order_id, added_at) "
                "VALUES (?, ?, ?, ?)", (broker, account_id, order_id, iso(utcnow())),
            )
            return cur.rowcount == 1

    @guarded("write to")
    def unwatch(self, broker: str, order_id: str) -> bool:
        """Stop watching an order id; False if it was not watched."""
        with self._transaction() as db:
            cur = db.execute(
                "DELETE FROM watched WHERE broker = ? AND order_id = ?", (broker, order_id)
            )
            return cur.rowcount == 1

    @guarded("read")
    def watched(self, broker: str) -> list[tuple[str, str]]:
        """(account id, order id) pairs watched on one connection."""
        return [
            (a, o) for a, o in self._conn.execute(
                "SELECT account_id, order_id FROM watched WHERE broker = ? ORDER BY added_at",
                (broker,),
            ).fetchall()
        ]


    # -- more than one box: one SQLite daemon holds every connection ------------------------

    def lease_round(self, instance: InstanceInfo, connections: Sequence[str], *, ttl: float,
                    mine: Mapping[str, int], budgets: Mapping[str, str],
                    release: Sequence[str] = ()) -> LeaseRound:
        """The one daemon on a SQLite file (the daemon lock proves it) holds every connection
        for good: nothing to write, nobody to fence."""
        now = time.time()
        held = {c: Lease(c, instance.id, 1, math.inf) for c in connections}
        return LeaseRound(now, held, [c for c in connections if c not in mine], [], [],
                          1, len(connections))

    def leases(self) -> list[Lease]:
        """No lease rows: a SQLite file is never shared by instances."""
        return []

    def instances(self) -> list[InstanceRow]:
        """No instance rows: a SQLite file is never shared by instances."""
        return []

    def leave(self, instance_id: str) -> None:
        """Nothing to hand over: the daemon lock goes with :meth:`close`."""
        logger.debug("instance %s leaves (a SQLite daemon holds no leases)", instance_id)


def _when(text: str | None) -> datetime | None:
    """A stored ISO timestamp (``…Z``) as an aware datetime."""
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
