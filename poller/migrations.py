"""The database schema, one numbered step per version. Append steps; never edit old ones."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: orders, events and the outbox (issue 2).
    """
    CREATE TABLE orders (
        broker       TEXT NOT NULL,
        account_id   TEXT NOT NULL,
        order_id     TEXT NOT NULL,
        status       TEXT NOT NULL,
        final        INTEGER NOT NULL,
        snapshot     TEXT NOT NULL,
        first_seen   TEXT NOT NULL,
        last_seen    TEXT NOT NULL,
        last_changed TEXT NOT NULL,
        missing      INTEGER NOT NULL DEFAULT 0,
        stale        INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (broker, account_id, order_id)
    );
    CREATE TABLE accounts (
        broker      TEXT NOT NULL,
        account_id  TEXT NOT NULL,
        baseline_at TEXT NOT NULL,
        PRIMARY KEY (broker, account_id)
    );
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        scene      TEXT NOT NULL,
        broker     TEXT NOT NULL,
        account_id TEXT NOT NULL,
        order_id   TEXT NOT NULL,
        created_at TEXT NOT NULL,
        body       TEXT NOT NULL
    );
    CREATE INDEX events_order ON events (broker, account_id, order_id, seq);
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq       INTEGER NOT NULL REFERENCES events (seq),
        notifier        TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT NOT NULL DEFAULT '',
        created_at      TEXT NOT NULL,
        sent_at         TEXT,
        UNIQUE (event_seq, notifier)
    );
    CREATE INDEX outbox_due ON outbox (notifier, state, next_attempt_at, id);
    """,
    # 2: order ids added by hand (`poller watch`) that no list call discovers (issue 3).
    """
    CREATE TABLE watched (
        broker     TEXT NOT NULL,
        account_id TEXT NOT NULL,
        order_id   TEXT NOT NULL,
        added_at   TEXT NOT NULL,
        PRIMARY KEY (broker, order_id)
    );
    """,
    # 3: deliveries held by a notifier's quiet hours, sent as one digest at the end (issue 5).
    """
    ALTER TABLE outbox ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: order actions queued by `poller replace/cancel` or the local API (issue 7).
    """
    CREATE TABLE actions (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        broker     TEXT NOT NULL,
        account_id TEXT NOT NULL,
        order_id   TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('replace', 'cancel')),
        qty        TEXT,
        price      TEXT,
        state      TEXT NOT NULL
                   CHECK (state IN ('queued', 'sending', 'sent', 'succeeded', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        outcome    TEXT NOT NULL DEFAULT '',
        message    TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX actions_state ON actions (state, broker);
    """,
    # 5: facts about the file itself; the daemon writes "opened_at" at every start, which
    # proves the file writable before READY=1 (issue 11).
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 6: each notifier's newest rows by state, for the outbox summary read every 5 s (issue
    # 15): without it the newest error and delivery were found by sorting every row.
    """
    CREATE INDEX outbox_latest ON outbox (notifier, state, id);
    """,
    # 7: more than one box (issue 16). Instances sharing a PostgreSQL database, the lease of
    # each connection (holder, fencing epoch, expiry, the budget's recent request times),
    # and outbox claims, so one row is sent by one instance at a time. SQLite has the same
    # tables (one version number for both engines); there the one daemon holds everything.
    """
    CREATE TABLE instances (
        id         TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        seen_at    TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE leases (
        connection  TEXT PRIMARY KEY,
        holder      TEXT NOT NULL DEFAULT '',
        epoch       INTEGER NOT NULL DEFAULT 0,
        expires_at  REAL NOT NULL DEFAULT 0,
        acquired_at TEXT,
        budget      TEXT NOT NULL DEFAULT '{}'
    );
    ALTER TABLE outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN claimed_until REAL NOT NULL DEFAULT 0;
    """,
]
