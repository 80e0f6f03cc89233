"""The schema steps on real SQLite files: each applies in order, ``user_version`` follows,
and a database left at any older version is migrated forward with its rows intact."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from poller.errors import StoreError
from poller.migrations import MIGRATIONS
from poller.models import OrderSnapshot, OrderStatus, SceneType, iso
from poller.samples import sample_event
from poller.store import Store

#: What each step adds: new tables and indexes, and new columns of existing tables.
STEPS: list[tuple[set[str], dict[str, set[str]]]] = [
    ({"orders", "accounts", "events", "outbox", "events_order", "outbox_due"}, {}),
    ({"watched"}, {}),
    (set(), {"outbox": {"held"}}),
    ({"actions", "actions_state"}, {}),
    ({"meta"}, {}),
    ({"outbox_latest"}, {}),
    ({"instances", "leases"}, {"outbox": {"claimed_by", "claimed_until"}}),
]

T0 = datetime(2026, 5, 20, 3, 24, 30, 125000, tzinfo=UTC)
SNAPSHOT = OrderSnapshot(
    broker="tw", broker_kind="shioaji", account_id="A1", order_id="O1",
    status=OrderStatus.PARTIAL_FILLED, broker_status="PartFilled", symbol="2890", side="BUY",
    qty=Decimal(1000), price=Decimal("27.1"), filled_qty=Decimal(400),
    avg_fill_price=Decimal("27.05"), updated_at=T0)
EVENT = sample_event(SceneType.FILLED, broker="tw")


def objects(conn: sqlite3.Connection) -> set[str]:
    """Tables and indexes we created (not SQLite's own)."""
    return {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))
    finally:
        conn.close()


def build(path: Path, upto: int) -> sqlite3.Connection:
    """A database as an older poller left it: the first ``upto`` steps applied."""
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:upto], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.commit()
    return conn


def test_every_step_is_described_here() -> None:
    """A new step must get its row in STEPS (and so a test of what it adds)."""
    assert len(MIGRATIONS) == len(STEPS)


@pytest.mark.parametrize("number", range(1, len(STEPS) + 1))
def test_each_step_applies_in_order(tmp_path: Path, number: int) -> None:
    conn = build(tmp_path / "p.db", number - 1)
    before = objects(conn)
    before_columns = {table: columns(conn, table) for table in before}
    conn.executescript(MIGRATIONS[number - 1])
    added, new_columns = STEPS[number - 1]
    assert objects(conn) - before == added
    for table, old in before_columns.items():
        assert columns(conn, table) - old == new_columns.get(table, set())
    conn.close()


@pytest.mark.parametrize("number", range(1, len(MIGRATIONS) + 1))
def test_each_step_splits_into_whole_statements(number: int) -> None:
    """The runner executes a step statement by statement, split at ``;``: no step may hold
    a ``;`` inside a literal, or manage the transaction or the version itself."""
    statements = [s for s in MIGRATIONS[number - 1].split(";") if s.strip()]
    assert statements
    for statement in statements:
        assert sqlite3.complete_statement(statement + ";"), statement
        words = statement.split()
        assert words[0].upper() not in ("BEGIN", "COMMIT", "END", "ROLLBACK"), statement
        assert "user_version" not in statement.lower()


def test_a_new_database_is_at_the_last_version(tmp_path: Path) -> None:
    Store.open(tmp_path / "p.db").close()
    assert version(tmp_path / "p.db") == len(MIGRATIONS)
    assert schema(tmp_path / "p.db") == schema(migrated_from_scratch(tmp_path))


def migrated_from_scratch(tmp_path: Path) -> Path:
    """The schema the steps give when applied one by one by hand."""
    path = tmp_path / "by-hand.db"
    build(path, len(MIGRATIONS)).close()
    return path


def fill(conn: sqlite3.Connection, upto: int) -> None:
    """Rows an older poller wrote, in the tables its schema had."""
    now = iso(T0)
    conn.execute(
        "INSERT INTO orders (broker, account_id, order_id, status, final, snapshot, first_seen,"
        " last_seen, last_changed, missing) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, 2)",
        (*SNAPSHOT.key, SNAPSHOT.status.value, json.dumps(SNAPSHOT.to_json()), now, now, now))
    conn.execute("INSERT INTO accounts VALUES ('tw', 'A1', ?)", (now,))
    conn.execute(
        "INSERT INTO events (id, event_type, scene, broker, account_id, order_id, created_at,"
        " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (EVENT.id, EVENT.event_type, EVENT.scene, EVENT.broker, EVENT.account_id,
         EVENT.order_id, now, json.dumps(EVENT.to_json())))
    conn.execute("INSERT INTO outbox (event_seq, notifier, state, next_attempt_at, created_at)"
                 " VALUES (1, 'hook', 'pending', 0, ?)", (now,))
    if upto >= 2:
        conn.execute("INSERT INTO watched VALUES ('tw', 'A1', 'W9', ?)", (now,))
    if upto >= 4:
        conn.execute("INSERT INTO actions (broker, account_id, order_id, kind, qty, state, "
                     "created_at, updated_at) VALUES ('tw', 'A1', 'O1', 'replace', '600', "
                     "'queued', ?, ?)", (now, now))
    conn.commit()


@pytest.mark.parametrize("upto", range(1, len(MIGRATIONS)))
def test_an_older_database_is_migrated_forward_keeping_its_rows(tmp_path: Path,
                                                                 upto: int) -> None:
    path = tmp_path / "p.db"
    conn = build(path, upto)
    fill(conn, upto)
    conn.close()
    assert version(path) == upto

    store = Store.open(path)
    try:
        assert store.load_orders("tw") == {SNAPSHOT.key: SNAPSHOT}
        assert store.missing_counts("tw") == {SNAPSHOT.key: 2}
        assert store.known_accounts("tw") == {"A1"}
        [row] = store.due("hook", now=1.0)
        assert (row.event.id, row.event.payload, row.held, row.attempts) == (
            EVENT.id, EVENT.payload, False, 0)
        assert store.watched("tw") == ([("A1", "W9")] if upto >= 2 else [])
        queued = [("O1", "replace", "600")] if upto >= 4 else []
        assert [(a.order_id, a.kind, a.qty) for a in store.open_actions()] == queued
        # The tables and columns the migration added are usable at once.
        assert store.watch("tw", "A1", "W10")
        action = store.action(store.add_action("tw", "A1", "O2", "cancel"))
        assert action is not None and (action.kind, action.state) == ("cancel", "queued")
        store.hold(row.id, until=5.0)
        assert store.due("hook", now=1.0) == [] and store.due("hook", now=6.0)[0].held
    finally:
        store.close()
    assert version(path) == len(MIGRATIONS)
    assert schema(path) == schema(migrated_from_scratch(tmp_path))


def test_the_last_version_keeps_every_row_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    conn = build(path, len(MIGRATIONS))
    fill(conn, len(MIGRATIONS))
    conn.close()
    for _ in range(2):
        store = Store.open(path)
        try:
            assert store.load_orders("tw") == {SNAPSHOT.key: SNAPSHOT}
            assert store.watched("tw") == [("A1", "W9")]
            assert [(a.order_id, a.kind, a.qty, a.state) for a in store.open_actions()] == [
                ("O1", "replace", "600", "queued")]
        finally:
            store.close()
    assert version(path) == len(MIGRATIONS)


def test_a_failing_step_is_rolled_back_whole(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A step is one transaction: when its second statement fails, its first is undone and
    the version stays where it was."""
    path = tmp_path / "p.db"
    Store.open(path).close()
    broken = "CREATE TABLE half_done (a INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr("poller.dbfile.MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(StoreError, match="no such table: no_such_table"):
        Store.open(path)
    assert version(path) == len(MIGRATIONS)
    conn = sqlite3.connect(path)
    assert "half_done" not in objects(conn)
    conn.close()
    monkeypatch.undo()
    Store.open(path).close()
