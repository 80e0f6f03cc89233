"""The SQLite store: durability settings, one-transaction commits, dedupe, outbox, recovery."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from poller.errors import StoreError
from poller.events import OrderEvent, system_event
from poller.migrations import MIGRATIONS
from poller.models import OrderSnapshot, OrderStatus, SystemScene
from poller.records import Batch
from poller.store import Store

NOW = datetime(2026, 5, 20, 3, 24, 30, tzinfo=UTC)


def snapshot(order_id: str = "O1", status: OrderStatus = OrderStatus.SUBMITTED) -> OrderSnapshot:
    return OrderSnapshot(broker="tw", broker_kind="shioaji", account_id="A", order_id=order_id,
                         status=status, broker_status=status.value, qty=Decimal("2"),
                         price=Decimal("27.1"))


def event(event_id: str, order_id: str = "O1") -> OrderEvent:
    return OrderEvent(id=event_id, event_type="TRADE", scene="PLACED", timestamp=NOW,
                      broker="tw", account_id="A", order_id=order_id,
                      payload={"scene_type": "PLACED", "broker": "tw", "order_id": order_id})


def test_durability_settings_are_asserted(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1,
                               "busy_timeout": 5000}
    store.close()


def routed(batch: Batch, *notifiers: str) -> Batch:
    """Route every event of ``batch`` to ``notifiers``."""
    batch.routes.update({e.id: notifiers for e in batch.events})
    return batch


def test_schema_is_versioned(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this poller"):
        Store.open(tmp_path / "s.db")


def test_commit_writes_snapshot_events_and_outbox_together(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    fresh = store.commit(routed(Batch(snapshots=[snapshot()], events=[event("e1"), event("e2")],
                                      baselined=[("tw", "A")]), "hook", "mail"))
    assert [e.id for e in fresh] == ["e1", "e2"]
    assert store.load_orders("tw")[("tw", "A", "O1")] == snapshot()
    assert store.known_accounts("tw") == {"A"}
    assert [r.event.id for r in store.due("hook")] == ["e1", "e2"]
    assert store.backlog() == {"hook": 2, "mail": 2}
    store.close()


def test_a_replayed_event_is_neither_stored_nor_routed_again(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.commit(routed(Batch(events=[event("e1")]), "hook"))
    again = store.commit(routed(Batch(events=[event("e1"), event("e3")]), "hook"))
    assert [e.id for e in again] == ["e3"]
    assert [r.event.id for r in store.due("hook")] == ["e1", "e3"]
    store.close()


def test_a_failed_commit_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")

    # The same notifier twice breaks the outbox's uniqueness after the snapshot and the
    # event were written: the whole transaction must roll back.
    batch = Batch(snapshots=[snapshot()], events=[event("e1")], routes={"e1": ("hook", "hook")})
    with pytest.raises(StoreError, match="UNIQUE"):
        store.commit(batch)
    assert store.load_orders("tw") == {} and store.recent_events() == []
    store.close()


def test_outbox_retry_dead_and_requeue(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2"), event("e3")]), "hook"))
    first, second, third = store.due("hook")
    store.mark_retry(first.id, next_attempt_at=time.time() + 60, error="HTTP 503")
    # e3 belongs to the same order as e1, which is waiting: it waits too; O2 goes on.
    assert [r.event.id for r in store.due("hook")] == ["e2"]
    assert store.next_attempt("hook") is not None
    store.mark_dead(second.id, error="HTTP 400")
    store.mark_sent(first.id)
    _, deliveries = store.recent_events()[0]
    assert (deliveries[0].state, deliveries[0].attempts) == ("sent", 2)
    assert [r.event.id for r in store.due("hook")] == ["e3"]
    assert store.requeue_dead("hook") == 1
    assert [r.event.id for r in store.due("hook")] == ["e2", "e3"]
    store.close()


def test_only_one_daemon_per_database(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s.db", lock=True)
    with pytest.raises(StoreError, match="already running"):
        Store.open(tmp_path / "s.db", lock=True)
    reader = Store.open(tmp_path / "s.db")  # CLI commands read without the lock
    reader.close()
    first.close()
    Store.open(tmp_path / "s.db", lock=True).close()


def test_a_damaged_database_is_moved_aside_only_by_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is damaged") as caught:
        Store.open(path)  # a read command: reports, touches nothing
    assert caught.value.reason == "corrupt" and path.read_bytes().startswith(b"this is not")
    store = Store.open(path, lock=True)
    assert store.recovered_from is not None and store.recovered_from.exists()
    assert store.recovered_from.read_bytes().startswith(b"this is not")
    assert store.load_orders("tw") == {} and store.known_accounts("tw") == set()
    store.close()


def test_watched_orders(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    assert store.watch("tw", "A", "O9") and not store.watch("tw", "A", "O9")
    assert store.watched("tw") == [("A", "O9")]
    assert store.unwatch("tw", "O9") and not store.unwatch("tw", "O9")
    store.close()


def test_outbox_summary(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    assert store.outbox_summary() == {}
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2"), event("e3", "O3")]),
                        "hook", "mail"))
    first, second, _ = store.due("hook")
    store.mark_sent(first.id)
    store.mark_dead(second.id, error="HTTP 400")
    summary = store.outbox_summary()
    hook, mail = summary["hook"], summary["mail"]
    assert (hook.pending, hook.dead, hook.last_error) == (1, 1, "HTTP 400")
    assert hook.last_sent is not None and hook.oldest_pending is not None
    assert (mail.pending, mail.dead, mail.last_error, mail.last_sent) == (3, 0, "", None)
    assert list(store.outbox_summary(["mail", "absent"])) == ["mail", "absent"]
    assert store.outbox_summary(["absent"])["absent"].pending == 0
    store.close()


def test_connection_orders_and_recent_operator_events(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    alert = system_event(SystemScene.BROKER_UNREACHABLE, broker="tw", detected_at=NOW,
                         discriminator="x", message="tw: no answer")
    store.commit(Batch(snapshots=[snapshot("O1"), snapshot("O2", OrderStatus.FILLED)],
                       events=[event("e1"), alert], baselined=[("cx", "A")]))
    orders = store.connection_orders()
    assert orders["tw"][:2] == (1, 0) and orders["tw"][2] is not None
    assert orders["cx"] == (0, 0, None)  # a baseline, no orders
    rows = store.recent_operator_events(10)
    assert [(broker, scene) for broker, scene, _, _ in rows] == [("tw", "BROKER_UNREACHABLE")]
    assert store.recent_operator_events(1) == rows  # the newest event is that one
    store.close()
