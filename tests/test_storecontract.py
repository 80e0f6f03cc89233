"""The store contract: every StateStore method behaves the same on SQLite and PostgreSQL.

The fixture ``store`` opens a fresh store of each engine; every test here runs on both.
The cluster members (leases, instances, fencing, claims) have no SQLite counterpart beyond
"the one daemon holds everything": they are tested against a real server in test_pgstore.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from poller.databaseurl import DatabaseUrl
from poller.errors import StoreError
from poller.events import OrderEvent, system_event
from poller.migrations import MIGRATIONS
from poller.models import OrderSnapshot, OrderStatus, SystemScene
from poller.pgmigrations import PG_MIGRATIONS
from poller.pgstore import PgStore
from poller.records import Batch, OutboxRow
from poller.samples import sample_event
from poller.statestore import StateStore
from poller.store import Store

NOW = datetime(2026, 5, 20, 3, 24, 30, tzinfo=UTC)


def snapshot(order_id: str = "O1", status: OrderStatus = OrderStatus.SUBMITTED, *,
             broker: str = "tw", account: str = "A") -> OrderSnapshot:
    return OrderSnapshot(broker=broker, broker_kind="shioaji", account_id=account,
                         order_id=order_id, status=status, broker_status=status.value,
                         qty=Decimal("2"), price=Decimal("27.1"))


def event(event_id: str, order_id: str = "O1", *, broker: str = "tw") -> OrderEvent:
    return OrderEvent(id=event_id, event_type="TRADE", scene="PLACED", timestamp=NOW,
                      broker=broker, account_id="A", order_id=order_id,
                      payload={"scene_type": "PLACED", "broker": broker, "account_id": "A",
                               "order_id": order_id})


def alert(discriminator: str, *, broker: str = "tw") -> OrderEvent:
    return system_event(SystemScene.BROKER_UNREACHABLE, broker=broker, detected_at=NOW,
                        discriminator=discriminator, message=f"{broker}: no answer")


def routed(batch: Batch, *notifiers: str) -> Batch:
    """Route every event of ``batch`` to ``notifiers``."""
    batch.routes.update({e.id: notifiers for e in batch.events})
    return batch


def ids(rows: list[OutboxRow]) -> list[str]:
    return [row.event.id for row in rows]


def open_engine(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if engine == "sqlite":
        return Store.open(tmp_path / "c.db")
    pg_url: str = request.getfixturevalue("pg_url")
    return PgStore.open(DatabaseUrl.parse(pg_url))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """A fresh store of each engine."""
    opened = open_engine(str(request.param), tmp_path, request)
    yield opened
    opened.close()


# -- commit -------------------------------------------------------------------------------


def test_commit_writes_snapshots_events_and_outbox_together(store: StateStore) -> None:
    fresh = store.commit(routed(Batch(snapshots=[snapshot()], events=[event("e1"), event("e2")],
                                      baselined=[("tw", "A")]), "hook", "mail"))
    assert [e.id for e in fresh] == ["e1", "e2"]
    assert store.load_orders("tw") == {("tw", "A", "O1"): snapshot()}
    assert store.load_orders("other") == {}
    assert store.known_accounts("tw") == {"A"} and store.known_accounts("other") == set()
    assert ids(store.due("hook")) == ["e1", "e2"] and ids(store.due("mail")) == ["e1", "e2"]
    assert store.backlog() == {"hook": 2, "mail": 2}
    (first, deliveries), _ = store.recent_events()
    assert first == event("e1")
    assert [(d.notifier, d.state, d.attempts, d.last_error, d.sent_at) for d in deliveries] \
        == [("hook", "pending", 0, "", None), ("mail", "pending", 0, "", None)]


def test_an_event_without_routes_is_stored_but_sent_nowhere(store: StateStore) -> None:
    fresh = store.commit(Batch(events=[event("e1")]))
    assert [e.id for e in fresh] == ["e1"]
    assert store.backlog() == {} and store.due("hook") == []
    assert [(e.id, d) for e, d in store.recent_events()] == [("e1", [])]


def test_a_replayed_event_is_neither_stored_nor_routed_again(store: StateStore) -> None:
    store.commit(routed(Batch(events=[event("e1")]), "hook"))
    again = store.commit(routed(Batch(events=[event("e1"), event("e3"), event("e3")]),
                                "hook", "mail"))
    assert [e.id for e in again] == ["e3"]  # e1 stored before, the second e3 in this batch
    assert ids(store.due("hook")) == ["e1", "e3"]
    assert ids(store.due("mail")) == ["e3"]  # the replay got no new route either
    assert [e.id for e, _ in store.recent_events()] == ["e1", "e3"]


def test_a_failed_commit_leaves_nothing_behind(store: StateStore) -> None:
    # The same notifier twice breaks the outbox's uniqueness after the snapshot and the
    # event were written: the whole transaction must roll back.
    batch = Batch(snapshots=[snapshot()], events=[event("e1")], baselined=[("tw", "A")],
                  routes={"e1": ("hook", "hook")})
    with pytest.raises(StoreError) as caught:
        store.commit(batch)
    assert caught.value.reason == "other" and "\n" not in str(caught.value)
    assert store.load_orders("tw") == {} and store.recent_events() == []
    assert store.known_accounts("tw") == set() and store.backlog() == {}
    # The store is usable after the failure.
    assert [e.id for e in store.commit(routed(Batch(events=[event("e1")]), "hook"))] == ["e1"]


def test_a_newer_snapshot_replaces_the_stored_one(store: StateStore) -> None:
    store.commit(Batch(snapshots=[snapshot("O1")]))
    filled = snapshot("O1", OrderStatus.FILLED)
    store.commit(Batch(snapshots=[filled]))
    assert store.load_orders("tw") == {("tw", "A", "O1"): filled}
    # The same key twice in one batch: the last one wins, as the batch says.
    cancelled = snapshot("O2", OrderStatus.CANCELLED)
    store.commit(Batch(snapshots=[snapshot("O2"), cancelled]))
    assert store.load_orders("tw")[("tw", "A", "O2")] == cancelled


def test_seen_missing_and_stale_update_the_stored_orders(store: StateStore) -> None:
    store.commit(Batch(snapshots=[snapshot("O1"), snapshot("O2"), snapshot("O3")]))
    before = {o.snapshot.order_id: o for o in store.list_orders("tw")}
    time.sleep(0.002)  # the ISO timestamps have milliseconds: let "seen" be later
    store.commit(Batch(seen=[("tw", "A", "O1")], missing={("tw", "A", "O2"): 2},
                       stale=[("tw", "A", "O3")]))
    assert store.missing_counts("tw") == {("tw", "A", "O2"): 2}
    assert store.missing_counts("other") == {}
    after = {o.snapshot.order_id: o for o in store.list_orders("tw")}
    assert after["O1"].last_seen > before["O1"].last_seen
    assert after["O1"].last_changed == before["O1"].last_changed  # seen is not a change
    assert (after["O2"].missing, after["O2"].stale) == (2, False)
    assert (after["O3"].missing, after["O3"].stale) == (0, True)
    # Seen again after missing polls: the count goes back to zero.
    store.commit(Batch(seen=[("tw", "A", "O2")]))
    assert store.missing_counts("tw") == {}
    # A new snapshot clears both the missing count and the stale flag.
    store.commit(Batch(missing={("tw", "A", "O3"): 1}))
    store.commit(Batch(snapshots=[snapshot("O3", OrderStatus.FILLED)]))
    o3 = next(o for o in store.list_orders("tw") if o.snapshot.order_id == "O3")
    assert (o3.missing, o3.stale, o3.snapshot.status) == (0, False, OrderStatus.FILLED)


def test_baselines_are_recorded_once_per_account(store: StateStore) -> None:
    store.commit(Batch(baselined=[("tw", "A"), ("tw", "B"), ("cx", "A")]))
    store.commit(Batch(baselined=[("tw", "A")]))  # a second baseline is a no-op
    assert store.known_accounts("tw") == {"A", "B"}
    assert store.known_accounts("cx") == {"A"}


# -- orders -------------------------------------------------------------------------------


def test_list_orders_newest_change_first_and_filters(store: StateStore) -> None:
    store.commit(Batch(snapshots=[snapshot("O2"), snapshot("O1")]))
    time.sleep(0.002)
    store.commit(Batch(snapshots=[snapshot("O3", OrderStatus.FILLED),
                                  snapshot("X1", broker="cx")]))
    everything = store.list_orders()
    # Newest change first; orders changed in the same commit by order id.
    assert [o.snapshot.order_id for o in everything] == ["O3", "X1", "O1", "O2"]
    assert [o.snapshot.order_id for o in store.list_orders("tw")] == ["O3", "O1", "O2"]
    assert [o.snapshot.order_id for o in store.list_orders("tw", include_final=False)] \
        == ["O1", "O2"]
    first = everything[0]
    assert first.first_seen == first.last_seen == first.last_changed
    assert first.first_seen.endswith("Z") and (first.missing, first.stale) == (0, False)


# -- outbox -------------------------------------------------------------------------------


def test_a_retrying_row_holds_back_its_order_only(store: StateStore) -> None:
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2"), event("e3")]), "hook"))
    first, second, third = store.due("hook")
    assert (first.attempts, first.held, first.notifier) == (0, False, "hook")
    assert first.created_at.tzinfo is not None
    later = time.time() + 60
    store.mark_retry(first.id, next_attempt_at=later, error="HTTP 503")
    # e3 belongs to the same order as e1, which is waiting: it waits too; O2 goes on.
    assert ids(store.due("hook")) == ["e2"]
    # e2 and e3 have been due since the commit; e1's retry is later.
    soonest = store.next_attempt("hook")
    assert soonest is not None and soonest <= time.time() < later
    assert (second.event.id, third.event.id) == ("e2", "e3")
    # Once the retry's time has come, e1 comes first again, then e3 after it.
    due_later = store.due("hook", now=later + 1)
    assert ids(due_later) == ["e1", "e2", "e3"] and due_later[0].attempts == 1


def test_operator_events_are_not_held_back_by_each_other(store: StateStore) -> None:
    store.commit(routed(Batch(events=[alert("a"), alert("b"), event("e1")]), "hook"))
    first, _, _ = store.due("hook")
    store.mark_retry(first.id, next_attempt_at=time.time() + 60, error="HTTP 503")
    # A SYSTEM event is its own sequence: the other alert about "tw" and the order go on.
    assert ids(store.due("hook")) == [alert("b").id, "e1"]


def test_held_rows_hold_back_nothing(store: StateStore) -> None:
    store.commit(routed(Batch(events=[event("e1"), event("e2"), event("e3", "O2")]), "hook"))
    first, _, _ = store.due("hook")
    until = time.time() + 3600
    store.hold(first.id, until=until)
    # Held for quiet hours: the later row of the same order is not held back by it.
    assert ids(store.due("hook")) == ["e2", "e3"]
    assert store.next_attempt("hook") is not None
    digest = store.due("hook", now=until)
    assert ids(digest) == ["e1", "e2", "e3"] and [r.held for r in digest] == [True, False,
                                                                              False]
    store.mark_sent(first.id)
    _, deliveries = store.recent_events()[0]
    assert (deliveries[0].state, deliveries[0].attempts) == ("sent", 1)
    assert ids(store.due("hook")) == ["e2", "e3"]


def test_due_respects_its_limit_and_its_notifier(store: StateStore) -> None:
    store.commit(routed(Batch(events=[event(f"e{n}", f"O{n}") for n in range(5)]), "hook"))
    store.commit(routed(Batch(events=[event("m1", "M1")]), "mail"))
    assert ids(store.due("hook", limit=2)) == ["e0", "e1"]
    assert ids(store.due("mail")) == ["m1"] and store.due("absent") == []
    assert store.due("hook", now=time.time() - 3600) == []  # nothing due an hour ago


def test_next_attempt_is_the_earliest_pending_time(store: StateStore) -> None:
    assert store.next_attempt("hook") is None
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2")]), "hook"))
    first, second = store.due("hook")
    store.mark_retry(first.id, next_attempt_at=2_000_000_000.5, error="HTTP 503")
    store.mark_retry(second.id, next_attempt_at=1_900_000_000.25, error="HTTP 503")
    assert store.next_attempt("hook") == 1_900_000_000.25
    store.mark_sent(second.id)
    assert store.next_attempt("hook") == 2_000_000_000.5
    store.mark_dead(first.id, error="HTTP 400")
    assert store.next_attempt("hook") is None


def test_outbox_retry_dead_and_requeue(store: StateStore) -> None:
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2"), event("e3")]), "hook"))
    store.commit(routed(Batch(events=[event("m1", "M1")]), "mail"))
    first, second, _ = store.due("hook")
    store.mark_retry(first.id, next_attempt_at=time.time() + 60, error="HTTP 503")
    store.mark_dead(second.id, error="HTTP 400")
    store.mark_dead(store.due("mail")[0].id, error="HTTP 401")
    store.mark_sent(first.id)
    events = {e.id: deliveries for e, deliveries in store.recent_events()}
    (delivered,) = events["e1"]
    assert (delivered.state, delivered.attempts, delivered.last_error) == ("sent", 2, "")
    assert delivered.sent_at is not None and delivered.sent_at.endswith("Z")
    (dead,) = events["e2"]
    assert (dead.state, dead.attempts, dead.last_error) == ("dead", 1, "HTTP 400")
    assert ids(store.due("hook")) == ["e3"]
    assert store.requeue_dead("hook") == 1  # only the hook's dead letter
    assert ids(store.due("hook")) == ["e2", "e3"] and store.due("mail") == []
    assert store.requeue_dead() == 1 and ids(store.due("mail")) == ["m1"]
    assert store.requeue_dead() == 0


def test_backlog_counts_pending_rows_per_notifier(store: StateStore) -> None:
    assert store.backlog() == {}
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2")]), "hook", "mail"))
    store.mark_sent(store.due("mail")[0].id)
    assert store.backlog() == {"hook": 2, "mail": 1}


def test_outbox_summary(store: StateStore) -> None:
    assert store.outbox_summary() == {}
    store.commit(routed(Batch(events=[event("e1"), event("e2", "O2"), event("e3", "O3")]),
                        "hook", "mail", "Zeta"))
    first, second, _ = store.due("hook")
    store.mark_sent(first.id)
    store.mark_dead(second.id, error="HTTP 400")
    summary = store.outbox_summary()
    assert list(summary) == ["Zeta", "hook", "mail"]  # byte order, as SQLite sorts text
    hook, mail = summary["hook"], summary["mail"]
    assert (hook.pending, hook.dead, hook.last_error) == (1, 1, "HTTP 400")
    assert hook.last_sent is not None and hook.oldest_pending is not None
    assert hook.oldest_pending.tzinfo is not None
    assert (mail.pending, mail.dead, mail.last_error, mail.last_sent) == (3, 0, "", None)
    assert list(store.outbox_summary(["mail", "absent"])) == ["mail", "absent"]
    assert store.outbox_summary(["absent"])["absent"] == type(hook)(
        "absent", 0, None, 0, "", None)


def test_connection_orders_and_recent_operator_events(store: StateStore) -> None:
    store.commit(Batch(snapshots=[snapshot("O1"), snapshot("O2", OrderStatus.FILLED),
                                  snapshot("O3")],
                       events=[event("e1"), alert("x")], baselined=[("cx", "A")],
                       stale=[]))
    store.commit(Batch(stale=[("tw", "A", "O3")]))
    orders = store.connection_orders()
    assert orders["tw"][:2] == (2, 1) and orders["tw"][2] is not None
    assert orders["tw"][2].tzinfo is not None
    assert orders["cx"] == (0, 0, None)  # a baseline, no orders
    rows = store.recent_operator_events(10)
    assert [(broker, scene) for broker, scene, _, _ in rows] == [("tw", "BROKER_UNREACHABLE")]
    assert rows[0][2].endswith("Z") and alert("x").id in rows[0][3]
    assert store.recent_operator_events(1) == rows  # the newest event is that one
    store.commit(Batch(events=[event("e2"), system_event(
        SystemScene.BROKER_UNREACHABLE, detected_at=NOW, discriminator="global",
        message="not about a connection")]))
    assert store.recent_operator_events(2) == []  # the alert is older than the newest two
    assert [r[3] for r in store.recent_operator_events(10)] == [rows[0][3]]


def test_recent_events_oldest_first_with_their_deliveries(store: StateStore) -> None:
    real = sample_event("FINAL_FILLED")  # a realistic body, fills and all
    stored = OrderEvent.from_json(json.loads(json.dumps(real.to_json())))
    store.commit(routed(Batch(events=[event("e1"), event("x1", broker="cx"), real]),
                        "mail", "hook"))
    assert [e for e, _ in store.recent_events(2)] == [event("x1", broker="cx"), stored]
    assert [e.id for e, _ in store.recent_events(broker="cx")] == ["x1"]
    assert [e.id for e, _ in store.recent_events(broker="tw")] == ["e1"]
    _, deliveries = store.recent_events(1)[0]
    assert [d.notifier for d in deliveries] == ["hook", "mail"]
    assert store.due("hook")[-1].event == stored


# -- order actions ------------------------------------------------------------------------


def test_actions_queue_drop_update_and_list(store: StateStore) -> None:
    first = store.add_action("tw", "A", "O1", "replace", qty="3", price="27.5")
    second = store.add_action("tw", "A", "O2", "cancel")
    third = store.add_action("cx", "B", "X1", "cancel")
    assert first < second < third
    row = store.action(first)
    assert row is not None and not row.done
    assert (row.broker, row.account_id, row.order_id, row.kind, row.qty, row.price, row.state,
            row.attempts, row.outcome, row.message) == ("tw", "A", "O1", "replace", "3",
                                                       "27.5", "queued", 0, "", "")
    assert row.created_at == row.updated_at and row.created_at.endswith("Z")
    assert store.action(999_999) is None
    assert [a.id for a in store.open_actions()] == [first, second, third]
    assert [a.id for a in store.open_actions("cx")] == [third]
    store.update_action(first, "sending", attempt=True)
    assert not store.drop_action(first, reason="too late")  # being sent: cannot be taken back
    assert store.drop_action(second, reason="changed my mind")
    assert not store.drop_action(second, reason="twice")
    dropped = store.action(second)
    assert dropped is not None and dropped.done
    assert (dropped.state, dropped.outcome, dropped.message) == ("failed", "DROPPED",
                                                                 "changed my mind")
    store.update_action(first, "succeeded", outcome="REPLACED", message="ok", attempt=True)
    done = store.action(first)
    assert done is not None and (done.state, done.attempts, done.outcome) == (
        "succeeded", 2, "REPLACED")
    assert [a.id for a in store.open_actions()] == [third]
    assert [a.id for a in store.list_actions()] == [third]
    assert [a.id for a in store.list_actions(include_done=True)] == [third, second, first]
    assert [a.id for a in store.list_actions(include_done=True, limit=1)] == [third]


def test_expire_actions_gives_up_old_queued_ones(store: StateStore) -> None:
    old = store.add_action("tw", "A", "O1", "cancel")
    sending = store.add_action("tw", "A", "O2", "cancel")
    store.update_action(sending, "sending", attempt=True)
    assert store.expire_actions(datetime.now(UTC) - timedelta(hours=1)) == []
    expired = store.expire_actions(datetime.now(UTC) + timedelta(seconds=1))
    assert [a.id for a in expired] == [old] and expired[0].state == "queued"  # as it was
    row = store.action(old)
    assert row is not None and (row.state, row.outcome) == ("failed", "EXPIRED")
    assert "daemon.action_expiry" in row.message
    assert store.expire_actions(datetime.now(UTC) + timedelta(seconds=1)) == []
    still = store.action(sending)
    assert still is not None and still.state == "sending"


# -- watched orders -----------------------------------------------------------------------


def test_watched_orders(store: StateStore) -> None:
    assert store.watched("tw") == []
    assert store.watch("tw", "A", "O9") and not store.watch("tw", "A", "O9")
    time.sleep(0.002)
    assert store.watch("tw", "B", "O1") and store.watch("cx", "A", "O9")
    assert store.watched("tw") == [("A", "O9"), ("B", "O1")]  # oldest first
    assert store.unwatch("tw", "O9") and not store.unwatch("tw", "O9")
    assert store.watched("tw") == [("B", "O1")] and store.watched("cx") == [("A", "O9")]


# -- the store itself ---------------------------------------------------------------------


def test_a_fresh_store_is_not_a_cluster_member(store: StateStore) -> None:
    assert not store.clustered
    assert store.identity_problem() is None and store.recovered_from is None
    assert store.location and "password" not in store.location
    size = store.size_bytes()
    assert size is not None and size > 0
    store.set_size_limit(None)  # allowed on both (PostgreSQL: the DBA's business)
    store.commit(Batch(snapshots=[snapshot()]))
    assert store.load_orders("tw") != {}


def test_sqlite_holds_every_connection_for_good(tmp_path: Path) -> None:
    """What the cluster members say on SQLite (PostgreSQL's are in test_pgstore.py)."""
    from poller.records import InstanceInfo

    store = Store.open(tmp_path / "c.db")
    info = InstanceInfo("box-1", "box", 1, "2026-05-20T03:24:30.000Z")
    result = store.lease_round(info, ["tw", "cx"], ttl=15.0, mine={}, budgets={})
    assert sorted(result.held) == ["cx", "tw"] and result.lost == []
    assert store.leases() == [] and store.instances() == [] and not store.clustered
    store.leave("box-1")
    store.commit(Batch(snapshots=[snapshot()]))  # never fenced
    assert list(store.load_orders("tw")) == [("tw", "A", "O1")]
    store.close()


def test_both_engines_have_the_same_schema_version_and_tables(tmp_path: Path,
                                                              pg_url: str) -> None:
    Store.open(tmp_path / "c.db").close()
    PgStore.open(DatabaseUrl.parse(pg_url)).close()
    lite = sqlite3.connect(tmp_path / "c.db")
    assert lite.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    lite_columns = {(table, column) for (table,) in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'")
        for (_, column, *_rest) in lite.execute(f"PRAGMA table_info({table})")}
    lite_indexes = {name for (name,) in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    lite.close()
    with psycopg.connect(pg_url) as pg:
        version = pg.execute("SELECT version FROM schema_version").fetchall()
        assert version == [(len(PG_MIGRATIONS),)] and len(PG_MIGRATIONS) == len(MIGRATIONS)
        pg_columns = {(t, c) for t, c in pg.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name != 'schema_version'")}
        pg_indexes = {name for (name,) in pg.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'")}
    assert pg_columns == lite_columns
    assert pg_indexes == lite_indexes


def scenario(store: StateStore, real: OrderEvent) -> dict[str, Any]:
    """The same work on a store; what it answers, without times and ids (which differ)."""
    store.commit(routed(Batch(
        snapshots=[snapshot("O1"), snapshot("O2", OrderStatus.FILLED), snapshot("X1", broker="cx")],
        events=[event("e1"), event("e2", "O2"), event("e3"), real, alert("a")],
        baselined=[("tw", "A"), ("cx", "A")]), "hook", "mail"))
    store.commit(Batch(seen=[("tw", "A", "O1")], missing={("cx", "A", "X1"): 3},
                       stale=[("cx", "A", "X1")]))
    rows = store.due("hook")
    store.mark_retry(rows[0].id, next_attempt_at=time.time() + 60, error="HTTP 503")
    store.mark_dead(rows[1].id, error="HTTP 400")
    store.mark_sent(rows[3].id)
    store.hold(rows[4].id, until=time.time() + 60)
    action = store.add_action("tw", "A", "O1", "cancel")
    store.update_action(action, "sent", outcome="", message="asked", attempt=True)
    store.watch("tw", "A", "O7")
    return {
        "orders": [(o.snapshot, o.missing, o.stale) for o in store.list_orders()],
        "missing": store.missing_counts("cx"),
        "accounts": sorted(store.known_accounts("tw") | store.known_accounts("cx")),
        "due": [(r.event, r.attempts, r.held) for r in store.due("hook")],
        "due_later": [(r.event, r.attempts, r.held) for r in
                      store.due("hook", now=time.time() + 120)],
        "backlog": store.backlog(),
        "summary": {n: (s.pending, s.dead, s.last_error, s.last_sent is not None)
                    for n, s in store.outbox_summary().items()},
        "connections": {c: (o, s, seen is not None)
                        for c, (o, s, seen) in store.connection_orders().items()},
        "operator": [(b, s) for b, s, _, _ in store.recent_operator_events(10)],
        "events": [(e, [(d.notifier, d.state, d.attempts, d.last_error, d.sent_at is None)
                        for d in ds]) for e, ds in store.recent_events()],
        "actions": [(a.kind, a.state, a.attempts, a.message) for a in
                    store.list_actions(include_done=True)],
        "watched": store.watched("tw"),
    }


def test_both_engines_give_the_same_answers(tmp_path: Path, pg_url: str) -> None:
    lite = Store.open(tmp_path / "c.db")
    pg = PgStore.open(DatabaseUrl.parse(pg_url))
    try:
        real = sample_event("FILLED")  # one event (its times are now): the same on both
        on_sqlite, on_postgresql = scenario(lite, real), scenario(pg, real)
    finally:
        lite.close()
        pg.close()
    assert on_sqlite["due_later"] and on_sqlite["orders"] and on_sqlite["events"]
    for part, answer in on_sqlite.items():
        assert on_postgresql[part] == answer, part
