"""The durable state in a PostgreSQL database, shared by several ``poller run`` instances.

:class:`PgStore` is the PostgreSQL implementation of :class:`poller.statestore.StateStore`:
every method behaves as the method of the same name of :class:`poller.store.Store` (the shared
contract suite runs against both), with three additions for more than one box (issue 16):

* **leases** (:meth:`PgStore.lease_round`): each broker connection is polled by the one
  instance holding its lease row; a lease carries an epoch raised at every change of holder,
  and expires unless renewed. Expiry times are the database's clock, so instances never
  compare their own clocks.
* **fencing** (:meth:`PgStore.commit`): a cluster member's commit checks, in its own
  transaction and with the lease rows share-locked, that it still holds every connection it
  writes about at the epoch it was given; otherwise nothing is written.
* **claims** (:meth:`PgStore.due`): a cluster member claims the outbox rows it returns
  (``FOR UPDATE SKIP LOCKED``), so one row is sent by one instance at a time, and a row
  another instance claimed holds back the later rows of its order.

One connection per store (the daemon calls the store from one thread, as with SQLite),
autocommit with explicit transactions for writes. Every psycopg error becomes one
:class:`~poller.errors.StoreError` line naming the database by host/port/name, never the
password; a broken connection is replaced at the next call, so a server restart never needs
a daemon restart.

Over 400 lines: every SQL statement the daemon runs on PostgreSQL is here, one short method
each, mirroring ``store.py``, so the two engines' queries can be read side by side.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from poller.databaseurl import DatabaseUrl
from poller.errors import StoreError
from poller.events import OrderEvent
from poller.models import OrderSnapshot, iso, utcnow
from poller.pgmigrations import PG_MIGRATIONS
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
Connection = psycopg.Connection[TupleRow]

#: Seconds to wait for the server to answer a new connection.
CONNECT_TIMEOUT = 5
#: How long the server lets a session sit inside a transaction between two statements before
#: it ends the session (and its locks). A commit here runs its statements back to back in
#: milliseconds; a session idle inside one is a holder paused (SIGSTOP, a long GC) or cut
#: off mid-commit, and its share locks on lease rows would otherwise keep every other
#: instance from taking its connections over until it woke, or for hours on a dead network.
IDLE_IN_TRANSACTION_MS = 2000
#: The advisory lock every schema step is applied under ("poller" in ASCII): two instances
#: opening a new database at once must not both apply a step.
MIGRATION_LOCK = 0x706F6C6C6572
#: The database's clock, in epoch seconds, for every lease and claim expiry.
_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"

#: SQLSTATE codes (exact first, then their two-character class) and the fault each one is.
_SQLSTATE_REASONS: dict[str, str] = {
    "53100": "full",  # disk_full
    "25006": "readonly",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "42501": "readonly",  # insufficient_privilege
    "40001": "locked",  # serialization_failure
    "40P01": "locked",  # deadlock_detected
    "55P03": "locked",  # lock_not_available (lock_timeout)
    "57014": "locked",  # query_canceled (statement_timeout)
    "57P01": "unreachable",  # admin_shutdown (a restart, pg_terminate_backend)
    "57P02": "unreachable",  # crash_shutdown
    "57P03": "unreachable",  # cannot_connect_now (starting up, shutting down)
    "53300": "unreachable",  # too_many_connections: the server is there, but not for us yet
    "08": "unreachable",  # connection_exception
}
#: A connection the server itself refused in words that mean "later", not "never".
_TRANSIENT_REFUSALS = ("starting up", "shutting down", "in recovery", "too many clients",
                       "remaining connection slots")


def reason_of(err: BaseException, *, broken: bool = False) -> str:
    """What kind of fault a psycopg error is (see :class:`~poller.errors.StoreError`).

    :param broken: the connection is unusable after the error (then it is ``unreachable``
        whatever the error says: the next call opens a new one).
    """
    code = getattr(err, "sqlstate", None)
    if isinstance(code, str):
        found = _SQLSTATE_REASONS.get(code) or _SQLSTATE_REASONS.get(code[:2])
        if found:
            return found
    if broken or isinstance(err, psycopg.errors.ConnectionTimeout):
        return "unreachable"
    if isinstance(err, psycopg.OperationalError) and code is None:
        # A failed connect has no SQLSTATE. "FATAL:" is the server answering (unknown
        # database, role or password): reachable, and retrying will not help. Anything
        # else (refused, timed out, no route, closed) is the network or a server that is
        # not there.
        text = str(err)
        if "FATAL:" in text and not any(words in text for words in _TRANSIENT_REFUSALS):
            return "other"
        return "unreachable"
    if isinstance(err, psycopg.InterfaceError):
        return "unreachable"  # "the connection is closed": the next call reconnects
    return "other"


def fault(err: BaseException, url: DatabaseUrl, doing: str, *, password: str | None = None,
          broken: bool = False) -> StoreError:
    """One line for a person: what happened to which database and what to do about it.

    The line names the database by ``url.where`` and never holds the password (psycopg's
    messages do not carry it; it is scrubbed anyway), nor a traceback or a newline.
    """
    reason = reason_of(err, broken=broken)
    detail = " ".join(str(err).split()) or type(err).__name__
    if password:
        detail = detail.replace(password, "***")
    where = url.where
    text = {
        "unreachable": f"cannot reach the database {where}: {detail} (check that the server "
                       "runs and accepts this host; a running daemon keeps polling and "
                       "retries)",
        "full": f"cannot {doing} the database {where}: the server has no space left "
                f"({detail}); free disk space on the database server",
        "readonly": f"cannot {doing} the database {where}: it refuses writes ({detail}); "
                    "check the role's privileges and that the server is not a read-only "
                    "standby",
        "locked": f"cannot {doing} the database {where}: it is busy ({detail}); it is not "
                  "damaged — try again",
    }.get(reason, f"cannot {doing} the database {where}: {detail}")
    return StoreError(text, reason=reason)


def guarded(doing: str) -> Callable[[F], F]:
    """Turn any psycopg error of a PgStore method into one :class:`StoreError` line."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def call(self: PgStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except psycopg.Error as err:
                raise self.fault(err, doing) from err
        return cast(F, call)
    return wrap


class PgStore:
    """The PostgreSQL state database. Open with :meth:`open`; one per process."""

    def __init__(self, url: DatabaseUrl, *, password: str | None = None,
                 claim_seconds: float = 60.0) -> None:
        self.url = url
        self.claim_seconds = claim_seconds
        #: Never set: a PostgreSQL database is not a file poller moves aside.
        self.recovered_from: Path | None = None
        self._password = password
        self._conn: Connection | None = None
        #: This instance's id once it took part in a lease round (a cluster member), and
        #: the epoch of every lease it got in its last round (what its commits are fenced by).
        self._me: str | None = None
        self._epochs: dict[str, int] = {}

    @classmethod
    def open(cls, url: DatabaseUrl, *, lock: bool = False, password: str | None = None,
             claim_seconds: float = 60.0) -> PgStore:
        """Connect to the database at ``url`` and bring its schema up to date.

        With ``lock=True`` the caller is a daemon (one instance of a cluster): the database
        must take writes, checked with a real write before the daemon says it is ready (a
        full disk is let through with a warning: space may come back). Several daemons may
        open one database; leases (:meth:`lease_round`) share the connections out.

        :param password: the role's password, given to the driver apart from the URL (so it
            is never in a URL or a message).
        :param claim_seconds: how long an outbox row this instance took stays its own before
            another instance may send it (a crashed sender's rows come back after this).
        :raises StoreError: any fault, in one line naming the database.
        """
        store = cls(url, password=password, claim_seconds=claim_seconds)
        try:
            store._start(probe=lock)
        except BaseException:
            store.close()
            raise
        return store

    @guarded("open")
    def _start(self, *, probe: bool) -> None:
        db = self._db()
        self._migrate(db)
        if probe:
            self._probe(db)

    def fault(self, err: BaseException, doing: str) -> StoreError:
        """The one-line :class:`StoreError` for a psycopg error of this store."""
        conn = self._conn
        broken = conn is not None and (conn.broken or conn.closed)
        return fault(err, self.url, doing, password=self._password, broken=broken)

    # -- the connection ---------------------------------------------------------------------

    def _connect(self) -> Connection:
        params: dict[str, Any] = conninfo_to_dict(self.url.url)
        # Bounded waits on a dead network (libpq ignores these on a Unix socket). The URL
        # wins where it says otherwise.
        defaults: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT, "application_name": "poller",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3}
        for key, value in defaults.items():
            params.setdefault(key, value)
        extra: dict[str, Any] = {}
        if self._password is not None:
            extra["password"] = self._password
        conn = psycopg.connect(make_conninfo(**params), autocommit=True, **extra)
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                     (str(IDLE_IN_TRANSACTION_MS),))
        return conn

    def _db(self) -> Connection:
        """The live connection, opened again if the last one broke (a restarted server, a
        terminated backend, a network cut)."""
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        if conn is not None:
            conn.close()
            self._conn = None
            logger.info("reconnecting to the database %s", self.url.where)
        self._conn = self._connect()
        return self._conn

    def _migrate(self, db: Connection) -> None:
        """Apply every schema step the database lacks, each in one transaction under the
        migration advisory lock; the version is read again under the lock, so two instances
        opening a new database at once never apply a step twice."""
        target = len(PG_MIGRATIONS)
        while (version := self._schema_version(db)) is None or version < target:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS schema_version "
                           "(version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    db.execute("INSERT INTO schema_version (version) VALUES (0)")
                current = 0 if row is None else int(row[0])
                if current < target:
                    for statement in PG_MIGRATIONS[current].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("UPDATE schema_version SET version = %s", (current + 1,))
                    logger.debug("database %s migrated to schema version %d",
                                 self.url.where, current + 1)
        if version > target:
            raise StoreError(f"database {self.url.where}: schema version {version} is newer "
                             f"than this poller ({target})")

    @staticmethod
    def _schema_version(db: Connection) -> int | None:
        """The applied schema version; None when the database has no schema yet."""
        row = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return None
        found = db.execute("SELECT max(version) FROM schema_version").fetchone()
        return None if found is None or found[0] is None else int(found[0])

    def _probe(self, db: Connection) -> None:
        """The daemon's start-up write: a read-only database refuses it; a full one is let
        through (space may come back; commits are retried), with a warning."""
        try:
            with db.transaction():
                db.execute("INSERT INTO meta (key, value) VALUES ('opened_at', %s) "
                           "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                           (iso(utcnow()),))
        except psycopg.Error as err:
            if reason_of(err) != "full":
                raise
            logger.warning("%s", self.fault(err, "write to"))

    @staticmethod
    def _clock(db: Connection) -> float:
        """The database's clock (epoch seconds): every instance reads the same one."""
        row = db.execute(_CLOCK).fetchone()
        return float(row[0]) if row is not None else time.time()

    # -- what the protocol asks of any store ---------------------------------------------------

    @property
    def location(self) -> str:
        """The URL, for people (it never holds a password: :class:`DatabaseUrl` refuses one)."""
        return self.url.url

    @property
    def clustered(self) -> bool:
        """Whether this store is a cluster member (it took part in a lease round): then its
        commits are fenced and its ``due`` claims rows."""
        return self._me is not None

    def close(self) -> None:
        """Close the connection (leases are handed over by :meth:`leave`, or expire)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def set_size_limit(self, max_mb: float | None) -> None:
        """Nothing to do: a PostgreSQL database's size is its administrator's business
        (quotas, tablespaces); ``daemon.max_database_mb`` applies to SQLite files only."""
        if max_mb is not None:
            logger.debug("daemon.max_database_mb is ignored for PostgreSQL (%s)",
                         self.url.where)

    def identity_problem(self) -> str | None:
        """Never: a URL names a database, not a file that could be deleted or swapped."""
        return None

    def size_bytes(self) -> int | None:
        """``pg_database_size`` of the database (None when it cannot be read, as for a
        SQLite file whose size cannot be read: a status line, not a fault)."""
        try:
            row = self._db().execute(
                "SELECT pg_database_size(current_database())").fetchone()
        except psycopg.Error as err:
            logger.debug("%s", self.fault(err, "measure"))
            return None
        return None if row is None else int(row[0])

    # -- orders ---------------------------------------------------------------------------

    @guarded("read")
    def load_orders(self, broker: str) -> dict[tuple[str, str, str], OrderSnapshot]:
        """Every stored snapshot of one connection, keyed by (broker, account, order id)."""
        result: dict[tuple[str, str, str], OrderSnapshot] = {}
        for (text,) in self._db().execute(
                "SELECT snapshot FROM orders WHERE broker = %s", (broker,)).fetchall():
            snap = OrderSnapshot.from_json(json.loads(text))
            result[snap.key] = snap
        return result

    @guarded("read")
    def missing_counts(self, broker: str) -> dict[tuple[str, str, str], int]:
        """How many polls in a row each non-final order of a connection was absent."""
        rows = self._db().execute(
            "SELECT account_id, order_id, missing FROM orders "
            "WHERE broker = %s AND missing > 0", (broker,)).fetchall()
        return {(broker, a, o): int(n) for a, o, n in rows}

    @guarded("read")
    def known_accounts(self, broker: str) -> set[str]:
        """Accounts of a connection whose baseline has been recorded."""
        rows = self._db().execute(
            "SELECT account_id FROM accounts WHERE broker = %s", (broker,)).fetchall()
        return {a for (a,) in rows}

    @guarded("read")
    def list_orders(self, broker: str | None = None, *, include_final: bool = True
                    ) -> list[StoredOrder]:
        """Tracked orders, newest change first, for ``poller orders``."""
        sql = "SELECT snapshot, first_seen, last_seen, last_changed, missing, stale FROM orders"
        clauses, args = [], []
        if broker:
            clauses.append("broker = %s")
            args.append(broker)
        if not include_final:
            clauses.append("final = 0")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        # COLLATE "C": byte order, as SQLite sorts text, whatever the database's locale.
        sql += ' ORDER BY last_changed COLLATE "C" DESC, order_id COLLATE "C"'
        return [
            StoredOrder(OrderSnapshot.from_json(json.loads(s)), fs, ls, lc, int(m), bool(st))
            for s, fs, ls, lc, m, st in self._db().execute(sql, args).fetchall()
        ]

    # -- the one write path ------------------------------------------------------------------

    @guarded("write to")
    def commit(self, batch: Batch) -> list[OrderEvent]:
        """Write a poll's snapshots, events and outbox rows in one transaction.

        Each new event gets one outbox row per notifier ``batch.routes`` names for it.

        :returns: the events that were new (an event id already stored is a replay of a
            known fact and is neither stored nor routed again).
        :raises StoreError: ``reason="fenced"`` when this cluster member no longer holds
            the lease (at its epoch) of a connection the batch is about; nothing is written.
        """
        now = iso(utcnow())
        epoch = time.time()
        fresh: list[OrderEvent] = []
        db = self._db()
        with db.transaction(), db.cursor() as cur:
            self._fence(cur, batch)
            if batch.baselined:
                cur.executemany(
                    "INSERT INTO accounts (broker, account_id, baseline_at) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [(broker, account, now) for broker, account in batch.baselined])
            if batch.snapshots:
                cur.executemany(
                    "INSERT INTO orders (broker, account_id, order_id, status, final, "
                    "snapshot, first_seen, last_seen, last_changed, missing, stale) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0, 0) "
                    "ON CONFLICT (broker, account_id, order_id) DO UPDATE SET "
                    "status = EXCLUDED.status, final = EXCLUDED.final, "
                    "snapshot = EXCLUDED.snapshot, last_seen = EXCLUDED.last_seen, "
                    "last_changed = EXCLUDED.last_changed, missing = 0, stale = 0",
                    [(*snap.key, snap.status.value, int(snap.final),
                      json.dumps(snap.to_json(), separators=(",", ":")), now, now, now)
                     for snap in batch.snapshots])
            if batch.seen:
                cur.executemany(
                    "UPDATE orders SET last_seen = %s, missing = 0 WHERE broker = %s "
                    "AND account_id = %s AND order_id = %s",
                    [(now, *key) for key in batch.seen])
            if batch.missing:
                cur.executemany(
                    "UPDATE orders SET missing = %s WHERE broker = %s AND account_id = %s "
                    "AND order_id = %s", [(count, *key) for key, count in batch.missing.items()])
            if batch.stale:
                cur.executemany(
                    "UPDATE orders SET stale = 1 WHERE broker = %s AND account_id = %s "
                    "AND order_id = %s", list(batch.stale))
            outbox: list[tuple[int, str, float, str | None]] = []
            for event in batch.events:
                row = cur.execute(
                    "INSERT INTO events (id, event_type, scene, broker, account_id, order_id, "
                    "created_at, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING RETURNING seq",
                    (event.id, event.event_type, event.scene, event.broker, event.account_id,
                     event.order_id, now, json.dumps(event.to_json(), separators=(",", ":"))),
                ).fetchone()
                if row is None:
                    continue
                fresh.append(event)
                outbox.extend((int(row[0]), notifier, epoch, now)
                              for notifier in batch.routes.get(event.id, ()))
            if outbox:
                cur.executemany(
                    "INSERT INTO outbox (event_seq, notifier, state, next_attempt_at, "
                    "created_at) VALUES (%s, %s, 'pending', %s, %s)", outbox)
        return fresh

    def _fence(self, cur: psycopg.Cursor[TupleRow], batch: Batch) -> None:
        """Refuse (``fenced``) a cluster member's batch about a connection whose lease it
        does not hold at the epoch of its last round.

        The lease rows stay share-locked until the commit ends: a takeover (an UPDATE of
        the row) waits for this commit, or this commit sees the new holder; never both.
        """
        if self._me is None:
            return
        names = ({snap.key[0] for snap in batch.snapshots} | {key[0] for key in batch.seen}
                 | {key[0] for key in batch.missing} | {key[0] for key in batch.stale}
                 | {broker for broker, _ in batch.baselined}
                 | {event.broker for event in batch.events if event.broker})
        if not names:
            return
        rows = {name: (holder, int(epoch)) for name, holder, epoch in cur.execute(
            "SELECT connection, holder, epoch FROM leases WHERE connection = ANY(%s) "
            "ORDER BY connection FOR SHARE", (sorted(names),)).fetchall()}
        for name in sorted(names):
            mine = self._epochs.get(name, 0)
            holder, current = rows.get(name, ("", 0))
            if holder != self._me or current != mine:
                raise StoreError(
                    f"cannot write to the database {self.url.where}: this instance no longer "
                    f"holds the lease of connection {name} (epoch {mine}, now {current} held "
                    f"by {holder or 'nobody'}); another instance polls it now",
                    reason="fenced")

    # -- outbox -------------------------------------------------------------------------------

    @guarded("read")
    def due(self, notifier: str, *, now: float | None = None, limit: int = 50) -> list[OutboxRow]:
        """Pending deliveries of one notifier whose time has come, oldest event first.

        Per-order ordering: a row waiting for its retry holds back the later rows of the same
        order (other orders go on). Rows held for quiet hours hold back nothing. A cluster
        member also claims what it returns (for ``claim_seconds``); a row another instance
        claimed is not returned and holds back the later rows of its order.
        """
        now = time.time() if now is None else now
        db = self._db()
        # A claim counts while its instance lives: one killed mid-send holds its rows only
        # until its registration expires (a lease's length), not for the whole claim.
        sql = ("SELECT o.id, o.attempts, o.created_at, e.body, o.held, o.next_attempt_at, "
               "e.broker, e.account_id, e.order_id, e.event_type, e.id, o.claimed_by, "
               "LEAST(o.claimed_until, COALESCE(i.expires_at, 0)) FROM outbox o "
               "JOIN events e ON e.seq = o.event_seq "
               "LEFT JOIN instances i ON i.id = o.claimed_by AND o.claimed_by != '' "
               "WHERE o.notifier = %s AND o.state = 'pending' ORDER BY e.seq LIMIT %s")
        args = (notifier, max(limit * 20, 1000))
        if self._me is None:
            return [row for row, _ in _pick(db.execute(sql, args).fetchall(), notifier, now,
                                            limit, None, 0.0)]
        me = self._me
        with db.transaction():
            clock = self._clock(db)
            chosen = _pick(db.execute(sql, args).fetchall(), notifier, now, limit, me, clock)
            if not chosen:
                return []
            # Rows another instance locked, claimed, sent or put off since the read above are
            # left out, and hold back the later rows of their order.
            locked: dict[int, int] = dict(db.execute(
                "SELECT id, attempts FROM outbox o WHERE id = ANY(%s) AND state = 'pending' "
                "AND next_attempt_at <= %s AND (claimed_by IN ('', %s) OR claimed_until <= %s "
                "OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = o.claimed_by "
                "AND i.expires_at > %s)) FOR UPDATE OF o SKIP LOCKED",
                ([row.id for row, _ in chosen], now, me, clock, clock)).fetchall())
            result: list[OutboxRow] = []
            blocked: set[tuple[str, ...]] = set()
            for row, key in chosen:
                if key in blocked:
                    continue
                if row.id not in locked:
                    blocked.add(key)
                    continue
                result.append(replace(row, attempts=int(locked[row.id])))
            if result:
                db.execute("UPDATE outbox SET claimed_by = %s, claimed_until = %s "
                           "WHERE id = ANY(%s)",
                           (me, clock + self.claim_seconds, [row.id for row in result]))
        return result

    @guarded("write to")
    def hold(self, row_id: int, *, until: float) -> None:
        """Hold a delivery for quiet hours; it is sent in a digest at ``until``."""
        with self._db().transaction() as tx:
            tx.connection.execute(
                "UPDATE outbox SET held = 1, next_attempt_at = %s, claimed_by = '', "
                "claimed_until = 0 WHERE id = %s", (until, row_id))

    @guarded("read")
    def next_attempt(self, notifier: str) -> float | None:
        """When the earliest pending delivery of a notifier becomes due (epoch seconds)."""
        row = self._db().execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE notifier = %s AND state = 'pending'",
            (notifier,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @guarded("write to")
    def mark_sent(self, row_id: int) -> None:
        """Record that the service accepted a delivery (only ever after it did)."""
        with self._db().transaction() as tx:
            tx.connection.execute(
                "UPDATE outbox SET state = 'sent', sent_at = %s, attempts = attempts + 1, "
                "last_error = '', held = 0, claimed_by = '', claimed_until = 0 WHERE id = %s",
                (iso(utcnow()), row_id))

    @guarded("write to")
    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None:
        """Record a failed attempt and when to try again."""
        with self._db().transaction() as tx:
            tx.connection.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = %s, "
                "last_error = %s, claimed_by = '', claimed_until = 0 WHERE id = %s",
                (next_attempt_at, error, row_id))

    @guarded("write to")
    def mark_dead(self, row_id: int, *, error: str) -> None:
        """Give up on a delivery (dead letter); ``requeue_dead`` brings it back."""
        with self._db().transaction() as tx:
            tx.connection.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = %s, "
                "claimed_by = '', claimed_until = 0 WHERE id = %s", (error, row_id))

    @guarded("write to")
    def requeue_dead(self, notifier: str | None = None) -> int:
        """Put dead-lettered deliveries back in the queue; returns how many."""
        sql = "UPDATE outbox SET state = 'pending', next_attempt_at = %s WHERE state = 'dead'"
        args: list[Any] = [time.time()]
        if notifier:
            sql += " AND notifier = %s"
            args.append(notifier)
        with self._db().transaction() as tx:
            return tx.connection.execute(sql, args).rowcount

    @guarded("read")
    def backlog(self) -> dict[str, int]:
        """Pending deliveries per notifier."""
        rows = self._db().execute(
            "SELECT notifier, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY notifier"
        ).fetchall()
        return {n: int(c) for n, c in rows}

    @guarded("read")
    def outbox_summary(self, notifiers: Iterable[str] | None = None
                       ) -> dict[str, OutboxSummary]:
        """Per notifier: pending count and the oldest pending row's age, dead letters, the
        newest error and the last delivery (for health, status and operator reminders).

        ``notifiers`` names the ones to report; default, every notifier the outbox has rows
        for (in byte order, as SQLite gives them).
        """
        db = self._db()
        names = list(notifiers) if notifiers is not None else self._notifier_names(db)
        result: dict[str, OutboxSummary] = {}
        for notifier in names:
            counts = {state: db.execute(
                "SELECT COUNT(*), MIN(created_at COLLATE \"C\") FROM outbox "
                "WHERE notifier = %s AND state = %s", (notifier, state)).fetchone()
                for state in ("pending", "dead")}
            error = db.execute(
                "SELECT last_error FROM outbox WHERE notifier = %s AND state IN "
                "('pending', 'dead') AND last_error != '' ORDER BY id DESC LIMIT 1",
                (notifier,)).fetchone()
            sent = db.execute(
                "SELECT sent_at FROM outbox WHERE notifier = %s AND state = 'sent' "
                "ORDER BY id DESC LIMIT 1", (notifier,)).fetchone()
            pending, dead = counts["pending"] or (0, None), counts["dead"] or (0, None)
            result[notifier] = OutboxSummary(
                notifier, int(pending[0]), _when(pending[1]), int(dead[0]),
                error[0] if error else "", _when(sent[0] if sent else None))
        return result

    @staticmethod
    def _notifier_names(db: Connection) -> list[str]:
        """Every notifier the outbox has rows for, one index seek each (not a scan), in
        byte order (the seeks follow the database's collation; the sort makes it SQLite's)."""
        names: list[str] = []
        while True:
            row = db.execute("SELECT MIN(notifier) FROM outbox WHERE notifier > %s",
                             (names[-1] if names else "",)).fetchone()
            if row is None or row[0] is None:
                return sorted(names)
            names.append(row[0])

    @guarded("read")
    def connection_orders(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Per connection: open orders, stale ones among them, and when an order was last
        seen; connections with a baseline but no orders are there with zeros."""
        db = self._db()
        found = {broker: (int(open_ or 0), int(stale or 0), _when(seen))
                 for broker, open_, stale, seen in db.execute(
                     "SELECT broker, SUM(CASE WHEN final = 0 THEN 1 ELSE 0 END), "
                     "SUM(CASE WHEN final = 0 AND stale != 0 THEN 1 ELSE 0 END), "
                     "MAX(last_seen COLLATE \"C\") FROM orders GROUP BY broker "
                     "ORDER BY broker COLLATE \"C\"").fetchall()}
        for (broker,) in db.execute("SELECT DISTINCT broker FROM accounts").fetchall():
            found.setdefault(broker, (0, 0, None))
        return found

    @guarded("read")
    def recent_operator_events(self, recent: int) -> list[tuple[str, str, str, str]]:
        """(connection, scene, created_at, body) of the operator events about a connection
        among the newest ``recent`` events, newest first."""
        return [(str(b), str(s), str(c), str(body)) for b, s, c, body in self._db().execute(
            "SELECT broker, scene, created_at, body FROM (SELECT * FROM events "
            "ORDER BY seq DESC LIMIT %s) AS newest WHERE event_type = 'SYSTEM' "
            "AND broker != '' ORDER BY seq DESC", (recent,)).fetchall()]

    @guarded("read")
    def recent_events(self, limit: int = 50, *, broker: str | None = None
                      ) -> list[tuple[OrderEvent, list[Delivery]]]:
        """The newest events (oldest first) with their delivery state at each notifier."""
        db = self._db()
        sql = "SELECT seq, body FROM events"
        args: list[Any] = []
        if broker:
            sql += " WHERE broker = %s"
            args.append(broker)
        sql += " ORDER BY seq DESC LIMIT %s"
        args.append(limit)
        rows = list(reversed(db.execute(sql, args).fetchall()))
        result = []
        for seq, body in rows:
            deliveries = [
                Delivery(n, st, int(a), err, sent)
                for n, st, a, err, sent in db.execute(
                    "SELECT notifier, state, attempts, last_error, sent_at FROM outbox "
                    "WHERE event_seq = %s ORDER BY notifier COLLATE \"C\"", (seq,)).fetchall()
            ]
            result.append((OrderEvent.from_json(json.loads(body)), deliveries))
        return result

    # -- order actions -------------------------------------------------------------------------

    _ACTION_COLUMNS = ("id, broker, account_id, order_id, kind, qty, price, state, attempts, "
                       "outcome, message, created_at, updated_at")

    @guarded("write to")
    def add_action(self, broker: str, account_id: str, order_id: str, kind: str, *,
                   qty: str | None = None, price: str | None = None) -> int:
        """Queue a replace or cancel for the daemon; returns the action id."""
        now = iso(utcnow())
        with self._db().transaction() as tx:
            row = tx.connection.execute(
                "INSERT INTO actions (broker, account_id, order_id, kind, qty, price, state, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'queued', %s, %s) "
                "RETURNING id", (broker, account_id, order_id, kind, qty, price, now, now),
            ).fetchone()
        return int(row[0]) if row is not None else 0

    @guarded("read")
    def action(self, action_id: int) -> ActionRow | None:
        """One action by id."""
        row = self._db().execute(
            f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE id = %s",
            (action_id,)).fetchone()
        return ActionRow(*row) if row else None

    @guarded("read")
    def open_actions(self, broker: str | None = None) -> list[ActionRow]:
        """Actions not finished yet (queued, or interrupted while sending/verifying)."""
        sql = f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE state IN " \
              "('queued', 'sending', 'sent')"
        args: list[Any] = []
        if broker:
            sql += " AND broker = %s"
            args.append(broker)
        return [ActionRow(*r) for r in self._db().execute(sql + " ORDER BY id",
                                                          args).fetchall()]

    @guarded("read")
    def list_actions(self, *, include_done: bool = False, limit: int = 100
                     ) -> list[ActionRow]:
        """Actions, newest first: those not finished (or all, with ``include_done``)."""
        sql = f"SELECT {self._ACTION_COLUMNS} FROM actions"
        if not include_done:
            sql += " WHERE state IN ('queued', 'sending', 'sent')"
        return [ActionRow(*r) for r in self._db().execute(
            sql + " ORDER BY id DESC LIMIT %s", (limit,)).fetchall()]

    @guarded("write to")
    def drop_action(self, action_id: int, *, reason: str) -> bool:
        """Take back a queued action before the daemon sends it; False if it is not queued
        (unknown, finished, or already being sent: then it cannot be taken back)."""
        with self._db().transaction() as tx:
            cursor = tx.connection.execute(
                "UPDATE actions SET state = 'failed', outcome = 'DROPPED', message = %s, "
                "updated_at = %s WHERE id = %s AND state = 'queued'",
                (reason, iso(utcnow()), action_id))
            return cursor.rowcount == 1

    @guarded("write to")
    def expire_actions(self, queued_before: datetime) -> list[ActionRow]:
        """Give up queued actions older than ``queued_before``: sent late, a replace or a
        cancel could act on an order the user no longer meant. Returns them."""
        cutoff = iso(queued_before)
        db = self._db()
        # Asked several times a second with almost never anything to expire: look before
        # opening a write transaction.
        if db.execute("SELECT 1 FROM actions WHERE state = 'queued' AND "
                      "created_at COLLATE \"C\" < %s LIMIT 1", (cutoff,)).fetchone() is None:
            return []
        with db.transaction():
            # FOR UPDATE: two instances expiring at once report each action once.
            rows = [ActionRow(*r) for r in db.execute(
                f"SELECT {self._ACTION_COLUMNS} FROM actions WHERE state = 'queued' "
                f"AND created_at COLLATE \"C\" < %s ORDER BY id FOR UPDATE",
                (cutoff,)).fetchall()]
            for row in rows:
                db.execute(
                    "UPDATE actions SET state = 'failed', outcome = 'EXPIRED', message = %s, "
                    "updated_at = %s WHERE id = %s",
                    (f"not sent: it waited longer than daemon.action_expiry (queued "
                     f"{row.created_at})", iso(utcnow()), row.id))
        return rows

    @guarded("write to")
    def update_action(self, action_id: int, state: str, *, outcome: str = "",
                      message: str = "", attempt: bool = False) -> None:
        """Move an action to ``state`` (and record its outcome)."""
        with self._db().transaction() as tx:
            tx.connection.execute(
                "UPDATE actions SET state = %s, outcome = %s, message = %s, updated_at = %s, "
                "attempts = attempts + %s WHERE id = %s",
                (state, outcome, message, iso(utcnow()), int(attempt), action_id))

    # -- watched orders ------------------------------------------------------------------------

    @guarded("write to")
    def watch(self, broker: str, account_id: str, order_id: str) -> bool:
        """Add an order id no list call discovers; False if it was already watched."""
        with self._db().transaction() as tx:
            cur = tx.connection.execute(
                "INSERT INTO watched (broker, account_id, order_id, added_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (broker, account_id, order_id, iso(utcnow())))
            return cur.rowcount == 1

    @guarded("write to")
    def unwatch(self, broker: str, order_id: str) -> bool:
        """Stop watching an order id; False if it was not watched."""
        with self._db().transaction() as tx:
            cur = tx.connection.execute(
                "DELETE FROM watched WHERE broker = %s AND order_id = %s", (broker, order_id))
            return cur.rowcount == 1

    @guarded("read")
    def watched(self, broker: str) -> list[tuple[str, str]]:
        """(account id, order id) pairs watched on one connection, oldest first."""
        return [(a, o) for a, o in self._db().execute(
            "SELECT account_id, order_id FROM watched WHERE broker = %s "
            "ORDER BY added_at COLLATE \"C\", order_id COLLATE \"C\"", (broker,)).fetchall()]

    # -- more than one box: leases, instances ------------------------------------------------

    @guarded("renew the leases in")
    def lease_round(self, instance: InstanceInfo, connections: Sequence[str], *, ttl: float,
                    mine: Mapping[str, int], budgets: Mapping[str, str],
                    release: Sequence[str] = ()) -> LeaseRound:
        """One round of leases for ``instance``, in one transaction, on the database's clock.

        Registers (or refreshes) the instance for ``ttl`` seconds; renews every lease of
        ``mine`` (connection → the epoch it was given) that it still holds at that epoch,
        storing ``budgets[c]`` (JSON text: the rate budget's recent request times) with the
        time; releases those of ``release`` (at once free for another instance); then takes
        free or expired leases among ``connections`` until it holds ⌈C / live instances⌉,
        raising their epoch. It never takes a lease another holder has not let expire.
        From now on this store is a cluster member: commits are fenced by these epochs.

        :raises ValueError: a budget that is not JSON text (a bug of the caller).
        """
        me = instance.id
        names = sorted(set(connections))
        db = self._db()
        with db.transaction():
            now = self._clock(db)
            stamp = _stamp(now)
            db.execute(
                "INSERT INTO instances (id, host, pid, started_at, seen_at, expires_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                "host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, "
                "seen_at = EXCLUDED.seen_at, expires_at = EXCLUDED.expires_at",
                (me, instance.host, instance.pid, instance.started_at, stamp, now + ttl))
            if names:
                db.execute("INSERT INTO leases (connection) SELECT unnest(%s::text[]) "
                           "ON CONFLICT DO NOTHING", (names,))
            held: dict[str, Lease] = {}
            lost: list[str] = []
            released: list[str] = []
            # One pass in name order (the order a commit share-locks lease rows in): a
            # late commit of a fenced instance and this round never wait for each other
            # in a circle.
            leaving = set(release)
            for name in sorted(set(mine) | leaving):
                budget = _budget(now, budgets.get(name))
                if name in leaving:
                    row = db.execute(
                        "UPDATE leases SET holder = '', expires_at = 0, "
                        "budget = COALESCE(%s, budget) WHERE connection = %s AND holder = %s "
                        "RETURNING connection, holder, epoch, expires_at, budget",
                        (budget, name, me)).fetchone()
                    if row is not None:
                        released.append(name)
                    elif name in mine:
                        lost.append(name)
                    continue
                row = db.execute(
                    "UPDATE leases SET expires_at = %s, budget = COALESCE(%s, budget) "
                    "WHERE connection = %s AND holder = %s AND epoch = %s "
                    "RETURNING connection, holder, epoch, expires_at, budget",
                    (now + ttl, budget, name, me, mine[name])).fetchone()
                if row is None:
                    lost.append(name)
                else:
                    held[name] = _lease(*row)
            live_row = db.execute("SELECT COUNT(*) FROM instances WHERE expires_at > %s",
                                  (now,)).fetchone()
            live = max(1, int(live_row[0]) if live_row is not None else 1)
            target = math.ceil(len(names) / live)
            taken: list[str] = []
            while (want := target - len(held)) > 0:
                free = [name for (name,) in db.execute(
                    "SELECT connection FROM leases WHERE connection = ANY(%s) "
                    "AND NOT (connection = ANY(%s)) AND (holder = '' OR expires_at <= %s) "
                    "ORDER BY connection FOR UPDATE SKIP LOCKED LIMIT %s",
                    (names, [*held, *released], now, want)).fetchall()]
                if not free:
                    break
                for row in db.execute(
                        "UPDATE leases SET holder = %s, epoch = epoch + 1, expires_at = %s, "
                        "acquired_at = %s WHERE connection = ANY(%s) "
                        "RETURNING connection, holder, epoch, expires_at, budget",
                        (me, now + ttl, stamp, free)).fetchall():
                    lease = _lease(*row)
                    held[lease.connection] = lease
                    taken.append(lease.connection)
                if len(free) < want:
                    break  # the rest are held by live instances (or being committed about)
        self._me = me
        self._epochs = {name: lease.epoch for name, lease in held.items()}
        return LeaseRound(now, held, sorted(taken), lost, released, live, target)

    @guarded("read the leases in")
    def leases(self) -> list[Lease]:
        """Every lease row (holder ``''``: free), by connection name."""
        return [_lease(*row) for row in self._db().execute(
            "SELECT connection, holder, epoch, expires_at, budget FROM leases "
            "ORDER BY connection COLLATE \"C\"").fetchall()]

    @guarded("read the instances in")
    def instances(self) -> list[InstanceRow]:
        """Every instance row; ``alive`` while its registration has not expired (database
        clock)."""
        return [InstanceRow(str(i), str(h), int(p), str(s), str(seen), bool(alive))
                for i, h, p, s, seen, alive in self._db().execute(
                    f"SELECT id, host, pid, started_at, seen_at, expires_at > ({_CLOCK}) "
                    "FROM instances ORDER BY id COLLATE \"C\"").fetchall()]

    @guarded("hand over the leases in")
    def leave(self, instance_id: str) -> None:
        """A clean shutdown: free every lease and outbox claim of ``instance_id`` and delete
        its instance row, so the other instances take over at their next round (no wait for
        an expiry). This store's commits are refused from then on (it holds nothing)."""
        with self._db().transaction() as tx:
            db = tx.connection
            # Locked in name order first, as a commit and a lease round lock them.
            db.execute("UPDATE leases SET holder = '', expires_at = 0 WHERE connection IN "
                       "(SELECT connection FROM leases WHERE holder = %s ORDER BY connection "
                       "FOR UPDATE)", (instance_id,))
            db.execute("UPDATE outbox SET claimed_by = '', claimed_until = 0 "
                       "WHERE claimed_by = %s", (instance_id,))
            db.execute("DELETE FROM instances WHERE id = %s", (instance_id,))
        if instance_id == self._me:
            self._epochs = {}


def _pick(rows: Sequence[TupleRow], notifier: str, now: float, limit: int, me: str | None,
          clock: float) -> list[tuple[OutboxRow, tuple[str, ...]]]:
    """The due rows among ``rows`` (pending, oldest event first), with their ordering key,
    under the per-order rule of :meth:`PgStore.due`; ``me`` set: rows claimed by another
    instance until after ``clock`` are not due and hold back their order."""
    result: list[tuple[OutboxRow, tuple[str, ...]]] = []
    blocked: set[tuple[str, ...]] = set()
    for (row_id, attempts, created, body, held, next_at, broker, account, order_id,
         event_type, event_id, claimed_by, claimed_until) in rows:
        key = (broker, account, order_id) if event_type == "TRADE" else (event_id,)
        if key in blocked:
            continue
        if me is not None and claimed_by not in ("", me) and claimed_until > clock:
            blocked.add(key)  # being sent by another instance: what follows waits for it
            continue
        if next_at > now:
            if not held:
                blocked.add(key)
            continue
        result.append((OutboxRow(
            int(row_id), notifier, OrderEvent.from_json(json.loads(body)), int(attempts),
            datetime.fromisoformat(created.replace("Z", "+00:00")), bool(held)), key))
        if len(result) >= limit:
            break
    return result


def _budget(now: float, text: str | None) -> str | None:
    """The stored form of a rate budget (``{"at": now, "data": …}``); None: keep the old."""
    if text is None:
        return None
    return json.dumps({"at": now, "data": json.loads(text)}, separators=(",", ":"))


def _lease(connection: str, holder: str, epoch: int, expires_at: float, budget: str) -> Lease:
    """A lease row as a :class:`Lease`: the budget's ``data`` as text and its ``at``."""
    try:
        stored = json.loads(budget)
    except ValueError:
        stored = None
    if isinstance(stored, dict) and "data" in stored:
        return Lease(connection, holder, int(epoch), float(expires_at),
                     json.dumps(stored["data"], separators=(",", ":")),
                     float(stored.get("at") or 0.0))
    return Lease(connection, holder, int(epoch), float(expires_at), budget)


def _stamp(epoch: float) -> str:
    """Epoch seconds as the stored ISO text (``…Z``, milliseconds)."""
    return iso(datetime.fromtimestamp(epoch, UTC)) or ""


def _when(text: str | None) -> datetime | None:
    """A stored ISO timestamp (``…Z``) as an aware datetime."""
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
