"""The PostgreSQL store against a real server: schema steps, error translation, reconnects,
and what only a shared database has — leases, fencing and outbox claims between instances.

Every behaviour it shares with SQLite is in test_storecontract.py. Waits for an expiry are
loops that re-check a condition until a deadline, never a bare sleep.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import psycopg
import pytest

from poller.databaseurl import DatabaseUrl
from poller.errors import StoreError
from poller.events import OrderEvent, system_event
from poller.models import OrderSnapshot, OrderStatus, SystemScene
from poller.pgmigrations import PG_MIGRATIONS
from poller.pgstore import PgStore, reason_of
from poller.records import Batch, InstanceInfo, LeaseRound
from poller.statestore import StateStore
from tests.pgserver import PgServer

NOW = datetime(2026, 5, 20, 3, 24, 30, tzinfo=UTC)
CANARY = "canary-Zq9"
T = TypeVar("T")


def snapshot(order_id: str = "O1", *, broker: str = "c1") -> OrderSnapshot:
    return OrderSnapshot(broker=broker, broker_kind="shioaji", account_id="A",
                         order_id=order_id, status=OrderStatus.SUBMITTED,
                         broker_status="Submitted", qty=Decimal("2"), price=Decimal("27.1"))


def event(event_id: str, order_id: str = "O1", *, broker: str = "c1") -> OrderEvent:
    return OrderEvent(id=event_id, event_type="TRADE", scene="PLACED", timestamp=NOW,
                      broker=broker, account_id="A", order_id=order_id,
                      payload={"scene_type": "PLACED", "broker": broker, "account_id": "A",
                               "order_id": order_id})


def routed(events: Sequence[OrderEvent], *notifiers: str) -> Batch:
    return Batch(events=list(events), routes={e.id: notifiers for e in events})


def open_pg(url: str, *, lock: bool = False, password: str | None = None,
            claim_seconds: float = 60.0) -> PgStore:
    return PgStore.open(DatabaseUrl.parse(url), lock=lock, password=password,
                        claim_seconds=claim_seconds)


def wait_for(check: Callable[[], T | None], *, within: float = 5.0, what: str = "") -> T:
    """Re-check ``check`` every 50 ms until it gives something, or fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)


class Member:
    """One ``poller run`` of a cluster: its store, and the leases it believes it holds (it
    renews them with the epochs it was given, as the daemon does)."""

    def __init__(self, url: str, name: str, *, ttl: float = 15.0,
                 claim_seconds: float = 60.0) -> None:
        self.store = open_pg(url, lock=True, claim_seconds=claim_seconds)
        self.info = InstanceInfo(name, f"host-{name}", 4000 + len(name),
                                 "2026-05-20T03:24:30.000Z")
        self.ttl = ttl
        self.mine: dict[str, int] = {}
        self.surplus: list[str] = []

    @property
    def name(self) -> str:
        return self.info.id

    def round(self, connections: Sequence[str], *, budgets: dict[str, str] | None = None,
              release: Sequence[str] = ()) -> LeaseRound:
        result = self.store.lease_round(self.info, connections, ttl=self.ttl, mine=self.mine,
                                        budgets=budgets or {}, release=release)
        self.mine = {c: lease.epoch for c, lease in result.held.items()}
        return result

    def balance(self, connections: Sequence[str]) -> LeaseRound:
        """A round that hands back what the last one held beyond its fair share."""
        result = self.round(connections, release=self.surplus)
        self.surplus = sorted(result.held)[result.target:]
        return result


@pytest.fixture
def members(pg_url: str) -> Iterator[Callable[..., Member]]:
    """Make cluster members on one fresh database (all closed afterwards)."""
    made: list[Member] = []

    def make(name: str, **options: float) -> Member:
        member = Member(pg_url, name, **options)
        made.append(member)
        return member

    yield make
    for member in made:
        member.store.close()


def sql(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement on its own connection (what another process would do)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement.encode(), args or None)
        return cur.fetchall() if cur.description else []


# -- schema ---------------------------------------------------------------------------------


def test_the_schema_version_is_recorded_once_and_kept(pg_url: str) -> None:
    store = open_pg(pg_url)
    store.commit(Batch(snapshots=[snapshot()]))
    store.close()
    again = open_pg(pg_url)  # a second open finds the schema current: nothing re-applied
    assert list(again.load_orders("c1")) == [("c1", "A", "O1")]
    again.close()
    assert sql(pg_url, "SELECT version FROM schema_version") == [(len(PG_MIGRATIONS),)]


def test_a_database_newer_than_this_poller_is_refused(pg_url: str) -> None:
    open_pg(pg_url).close()
    sql(pg_url, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreError, match="newer than this poller") as caught:
        open_pg(pg_url)
    assert f"schema version {len(PG_MIGRATIONS) + 1}" in str(caught.value)


def test_instances_opening_a_new_database_at_once_apply_each_step_once(pg_url: str) -> None:
    start = threading.Barrier(4)
    opened: list[PgStore] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(open_pg(pg_url, lock=True))
        except BaseException as err:  # reported below, with the thread's own error
            failures.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for store in opened:
        store.close()
    assert failures == [] and len(opened) == 4
    assert sql(pg_url, "SELECT version FROM schema_version") == [(len(PG_MIGRATIONS),)]


def test_the_daemon_proves_the_database_writable_at_open(pg_url: str) -> None:
    open_pg(pg_url, lock=True).close()
    assert [key for (key,) in sql(pg_url, "SELECT key FROM meta")] == ["opened_at"]
    ((name,),) = sql(pg_url, "SELECT current_database()")
    sql(pg_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with pytest.raises(StoreError) as caught:
        open_pg(pg_url, lock=True)
    assert caught.value.reason == "readonly" and "refuses writes" in str(caught.value)
    reader = open_pg(pg_url)  # a read command opens and reads a read-only database
    assert reader.list_orders() == []
    with pytest.raises(StoreError) as refused:
        reader.commit(Batch(snapshots=[snapshot()]))
    assert refused.value.reason == "readonly" and not refused.value.transient
    reader.close()


def test_what_the_protocol_asks_of_a_postgresql_store(pg_url: str) -> None:
    store = open_pg(pg_url, password=CANARY)  # trusted socket: the password is not needed
    assert store.location == pg_url and CANARY not in store.location
    assert store.identity_problem() is None and store.recovered_from is None
    assert not store.clustered
    store.set_size_limit(0.001)  # no-op: the commit below is not refused as "full"
    store.commit(Batch(snapshots=[snapshot()]))
    ((size,),) = sql(pg_url, "SELECT pg_database_size(current_database())")
    measured = store.size_bytes()
    assert isinstance(size, int) and measured is not None and abs(measured - size) < 1 << 20
    typed: StateStore = store  # mypy checks PgStore against the protocol here
    assert typed.load_orders("c1") != {}
    store.close()


# -- errors ---------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        open_pg("postgresql://postgres@127.0.0.1:1/x", password=CANARY)
    message = str(caught.value)
    assert caught.value.reason == "unreachable" and caught.value.transient
    assert message.startswith("cannot reach the database 127.0.0.1:1/x: ")
    assert message.endswith("a running daemon keeps polling and retries)")
    assert CANARY not in message and "\n" not in message and "Traceback" not in message
    assert time.monotonic() - started < 10  # connect_timeout bounds it


def test_a_server_that_answers_no_is_not_unreachable(pg_server: PgServer) -> None:
    with pytest.raises(StoreError) as caught:
        open_pg(pg_server.url("no_such_database"), password=CANARY)
    assert caught.value.reason == "other" and not caught.value.transient
    assert "no_such_database" in str(caught.value) and CANARY not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("error", "reason"), [
    (psycopg.errors.DiskFull, "full"),
    (psycopg.errors.ReadOnlySqlTransaction, "readonly"),
    (psycopg.errors.InsufficientPrivilege, "readonly"),
    (psycopg.errors.SerializationFailure, "locked"),
    (psycopg.errors.DeadlockDetected, "locked"),
    (psycopg.errors.LockNotAvailable, "locked"),
    (psycopg.errors.QueryCanceled, "locked"),
    (psycopg.errors.AdminShutdown, "unreachable"),
    (psycopg.errors.CannotConnectNow, "unreachable"),
    (psycopg.errors.ConnectionFailure, "unreachable"),
    (psycopg.errors.UniqueViolation, "other"),
])
def test_the_error_table(error: type[psycopg.Error], reason: str) -> None:
    assert reason_of(error("boom")) == reason


def test_a_lock_timeout_is_locked_and_passes(pg_url: str) -> None:
    store = open_pg(pg_url + "&options=-c%20lock_timeout%3D200")
    store.commit(routed([event("e1")], "hook"))
    (row,) = store.due("hook")
    with psycopg.connect(pg_url) as other:  # another process holds the table
        other.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreError) as caught:
            store.mark_sent(row.id)
        assert caught.value.reason == "locked" and caught.value.transient
        assert "not damaged" in str(caught.value)
    store.mark_sent(row.id)  # the lock is gone: the same call works
    assert store.backlog() == {}
    store.close()


def test_a_terminated_connection_is_replaced_at_the_next_call(pg_url: str) -> None:
    store = open_pg(pg_url)
    store.commit(Batch(snapshots=[snapshot()]))
    killed = sql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert killed == [(True,)]
    try:
        answer = store.load_orders("c1")  # transparently reconnected, or "unreachable"
        assert list(answer) == [("c1", "A", "O1")]
    except StoreError as err:
        assert err.reason == "unreachable" and "keeps polling and retries" in str(err)
    assert list(store.load_orders("c1")) == [("c1", "A", "O1")]
    # The same inside a write transaction: that commit is lost as a whole, the next works.
    sql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(StoreError) as caught:
        store.commit(Batch(snapshots=[snapshot("O2")]))
    assert caught.value.reason == "unreachable"
    store.commit(Batch(snapshots=[snapshot("O3")]))
    assert sorted(store.load_orders("c1")) == [("c1", "A", "O1"), ("c1", "A", "O3")]
    store.close()


# -- leases -------------------------------------------------------------------------------


def test_connections_spread_over_live_instances(members: Callable[..., Member]) -> None:
    connections = [f"k{n:02}" for n in range(12)]
    cluster = [members("a"), members("b"), members("c")]
    first = cluster[0].balance(connections)
    assert len(first.held) == 12 and first.instances == 1 and first.target == 12
    assert cluster[0].store.clustered and not cluster[1].store.clustered
    rounds: list[LeaseRound] = []
    for _ in range(4):
        for member in cluster:
            rounds.append(member.balance(connections))
            held = [set(m.mine) for m in cluster]
            # Never one connection believed held by two instances.
            assert sum(len(h) for h in held) == len(set().union(*held))
    assert [(r.instances, r.target) for r in rounds[-3:]] == [(3, 4)] * 3
    assert [len(m.mine) for m in cluster] == [4, 4, 4]
    assert all(r.lost == [] for r in rounds)  # handed over by release, never taken away
    holders = {lease.connection: lease.holder for lease in cluster[0].store.leases()}
    assert holders == {c: m.name for m in cluster for c in m.mine}
    assert sorted(holders) == connections
    assert {row.id for row in cluster[0].store.instances() if row.alive} == {"a", "b", "c"}


def take_over(members: Callable[..., Member]) -> tuple[Member, Member, LeaseRound]:
    """``a`` holds c1 with a short lease and lets it expire; ``b`` takes it (checked never
    before the expiry). Returns both and b's round that took it."""
    a, b = members("a", ttl=0.3), members("b")
    (lease,) = a.round(["c1"]).held.values()
    assert lease.holder == "a" and lease.epoch == 1
    assert a.store.commit(Batch(snapshots=[snapshot("O0")])) == []  # a holds it: allowed

    def round_of_b() -> LeaseRound | None:
        result = b.round(["c1"])
        if "c1" in result.taken:
            return result
        assert result.now < lease.expires_at and result.held == {}  # not yet expired
        return None

    took = wait_for(round_of_b, what="b takes c1 after a's lease expired")
    assert took.now >= lease.expires_at
    return a, b, took


def test_a_lease_is_taken_over_only_after_it_expired(members: Callable[..., Member]) -> None:
    a, b, took = take_over(members)
    assert took.held["c1"].holder == "b" and took.held["c1"].epoch == 2  # epoch raised
    (row,) = b.store.leases()
    assert (row.connection, row.holder, row.epoch) == ("c1", "b", 2)
    again = a.round(["c1"])  # a comes back: it lost the lease and cannot take it back
    assert again.lost == ["c1"] and again.held == {} and again.taken == []


def test_fencing_refuses_the_old_holders_commit(members: Callable[..., Member]) -> None:
    a, b, _ = take_over(members)
    late = Batch(snapshots=[snapshot("O1")], events=[event("e1")], baselined=[("c1", "A")],
                 routes={"e1": ("hook",)})
    with pytest.raises(StoreError) as caught:
        a.store.commit(late)
    assert caught.value.reason == "fenced" and not caught.value.transient
    assert ("this instance no longer holds the lease of connection c1 (epoch 1, now 2 held "
            "by b); another instance polls it now") in str(caught.value)
    # Nothing of the refused batch was written.
    assert list(b.store.load_orders("c1")) == [("c1", "A", "O0")]
    assert b.store.recent_events() == [] and b.store.backlog() == {}
    assert b.store.known_accounts("c1") == set()
    # Every kind of write about c1 is fenced, a lone operator event about it too.
    for batch in (Batch(seen=[("c1", "A", "O0")]), Batch(missing={("c1", "A", "O0"): 1}),
                  Batch(stale=[("c1", "A", "O0")]), Batch(baselined=[("c1", "B")]),
                  Batch(events=[system_event(SystemScene.BROKER_UNREACHABLE, broker="c1",
                                             detected_at=NOW, discriminator="x",
                                             message="c1: no answer")])):
        with pytest.raises(StoreError, match="no longer holds the lease of connection c1"):
            a.store.commit(batch)
    # An event about no connection is nobody's lease: not fenced.
    general = system_event(SystemScene.BROKER_UNREACHABLE, detected_at=NOW,
                           discriminator="y", message="about the whole daemon")
    assert a.store.commit(Batch(events=[general])) == [general]
    # The holder writes.
    assert b.store.commit(late) == [event("e1")]
    assert b.store.backlog() == {"hook": 1}


def test_a_commit_in_flight_holds_off_a_takeover(pg_url: str,
                                                 members: Callable[..., Member]) -> None:
    a, b = members("a", ttl=0.3), members("b")
    (lease,) = a.round(["c1"]).held.values()
    with psycopg.connect(pg_url) as committing:
        # What a's commit does first: the lease row share-locked until it ends.
        committing.execute("SELECT holder FROM leases WHERE connection = 'c1' FOR SHARE")
        wait_for(lambda: True if b.store.leases()[0].expires_at < b.round([]).now else None,
                 what="a's lease expires")
        started = time.monotonic()
        result = b.round(["c1"])
        assert result.taken == [] and result.held == {}  # skipped, not waited for
        assert time.monotonic() - started < 2
    assert b.round(["c1"]).taken == ["c1"]  # once the commit ended
    assert b.store.leases()[0].epoch == lease.epoch + 1


def test_a_holder_paused_inside_its_commit_holds_off_a_takeover_only_briefly(
        members: Callable[..., Member]) -> None:
    a, b = members("a", ttl=0.3), members("b")
    (lease,) = a.round(["c1"]).held.values()
    # a's own session as a commit leaves it when the process is paused (SIGSTOP, a network
    # cut) between two statements: inside a transaction, the lease row share-locked.
    db = a.store._db()
    db.execute("BEGIN")
    db.execute("SELECT holder FROM leases WHERE connection = 'c1' FOR SHARE")
    # The server ends that session (pgstore.IDLE_IN_TRANSACTION_MS), so b takes c1 although
    # a never woke.
    took = wait_for(lambda: r if "c1" in (r := b.round(["c1"])).taken else None,
                    within=8,  # a's lease (0.3 s) plus the server's limit, with room
                    what="b takes c1 although a's commit never ended")
    assert took.held["c1"].epoch == lease.epoch + 1
    # a wakes: its session is gone (one transient error), and then it is fenced.
    reasons = []
    for _ in range(2):
        with pytest.raises(StoreError) as caught:
            a.store.commit(Batch(snapshots=[snapshot("O9")]))
        reasons.append(caught.value.reason)
    assert reasons[-1] == "fenced" and set(reasons) <= {"unreachable", "fenced"}
    assert list(b.store.load_orders("c1")) == []


def test_release_hands_a_lease_over_at_once(members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    assert sorted(a.round(["c1", "c2"]).held) == ["c1", "c2"]
    budget = '{"times":[1.5,2.25],"group":"orders"}'
    released = a.round(["c1", "c2"], budgets={"c1": budget}, release=["c1", "c9"])
    assert released.released == ["c1"]  # c9 was never a's: nothing to release
    assert sorted(released.held) == ["c2"] and released.lost == []
    free = next(lease for lease in a.store.leases() if lease.connection == "c1")
    assert (free.holder, free.epoch, free.expires_at) == ("", 1, 0.0)
    took = b.round(["c1", "c2"])  # at once: no expiry to wait for
    assert took.taken == ["c1"] and took.held["c1"].epoch == 2
    assert json.loads(took.held["c1"].budget) == json.loads(budget)
    assert took.held["c1"].budget_at == released.now


def test_the_budget_travels_with_the_lease(members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    a.round(["c1"])
    window = {"requests": [1716175470.25, 1716175471.5], "penalty_until": None}
    renewed = a.round(["c1"], budgets={"c1": json.dumps(window)})
    assert json.loads(renewed.held["c1"].budget) == window
    assert renewed.held["c1"].budget_at == renewed.now
    kept = a.round(["c1"])  # a renewal without a budget keeps the stored one
    assert json.loads(kept.held["c1"].budget) == window
    assert kept.held["c1"].budget_at == renewed.now
    (stored,) = a.store.leases()
    assert json.loads(stored.budget) == window and stored.budget_at == renewed.now
    a.store.leave("a")
    took = b.round(["c1"])
    assert took.taken == ["c1"] and json.loads(took.held["c1"].budget) == window
    assert took.held["c1"].budget_at == renewed.now
    # A lease that never had a budget gives back "{}" from time 0.
    assert b.round(["c1", "c2"]).held["c2"].budget == "{}"


def test_leave_hands_everything_over_at_once(members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b", claim_seconds=60.0)
    names = ["c1", "c2", "c3"]
    assert sorted(a.round(names).held) == names
    a.store.commit(routed([event("e1"), event("e2", "O2")], "hook"))
    assert [r.event.id for r in a.store.due("hook")] == ["e1", "e2"]  # claimed by a
    b.round(names)
    assert b.store.due("hook") == []
    a.store.leave("a")
    assert [row.id for row in b.store.instances()] == ["b"]
    assert all(lease.holder == "" for lease in b.store.leases())
    took = b.round(names)
    assert sorted(took.taken) == names and took.instances == 1
    assert [r.event.id for r in b.store.due("hook")] == ["e1", "e2"]  # claims freed too
    with pytest.raises(StoreError) as caught:
        a.store.commit(Batch(snapshots=[snapshot("O9")]))
    assert caught.value.reason == "fenced"


def test_instances_show_who_is_alive(members: Callable[..., Member]) -> None:
    a, b = members("a", ttl=1.0), members("b")
    a.round([])
    b.round([])
    rows = {row.id: row for row in b.store.instances()}
    assert {name: row.alive for name, row in rows.items()} == {"a": True, "b": True}
    assert (rows["a"].host, rows["a"].pid, rows["a"].started_at) == (
        a.info.host, a.info.pid, a.info.started_at)
    assert rows["a"].seen_at.endswith("Z")
    wait_for(lambda: True if not next(r for r in b.store.instances() if r.id == "a").alive
             else None, what="a's registration expires")
    assert [row.alive for row in b.store.instances()] == [False, True]
    assert b.round([]).instances == 1


# -- outbox claims --------------------------------------------------------------------------


def outbox_claims(url: str) -> list[tuple[object, ...]]:
    return sql(url, "SELECT id, claimed_by FROM outbox ORDER BY id")


def test_a_claimed_row_holds_back_its_order_on_other_instances(
        pg_url: str, members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    a.round(["c1"])
    b.round(["c1"])
    a.store.commit(routed([event("e1"), event("e2"), event("e3", "O2")], "hook"))
    assert [r.event.id for r in a.store.due("hook", limit=1)] == ["e1"]
    # e1 is a's: e2 (same order) waits for it, O2 goes on at b.
    assert [r.event.id for r in b.store.due("hook")] == ["e3"]
    assert [claimed for _, claimed in outbox_claims(pg_url)] == ["a", "", "b"]
    # a's own claims come back to a; b's row does not.
    assert [r.event.id for r in a.store.due("hook")] == ["e1", "e2"]
    first, second = a.store.due("hook")
    a.store.mark_sent(first.id)
    a.store.mark_sent(second.id)
    assert [r.event.id for r in b.store.due("hook")] == ["e3"]
    assert [claimed for _, claimed in outbox_claims(pg_url)] == ["", "", "b"]


def test_a_row_locked_by_another_instance_holds_back_its_order(
        pg_url: str, members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    a.round(["c1"])
    b.round([])
    a.store.commit(routed([event("e1"), event("e2"), event("e3", "O2")], "hook"))
    with psycopg.connect(pg_url) as claiming:
        # Another instance's due between its SELECT … FOR UPDATE and its commit.
        claiming.execute("SELECT id FROM outbox WHERE id = (SELECT min(id) FROM outbox) "
                         "FOR UPDATE")
        assert [r.event.id for r in b.store.due("hook")] == ["e3"]
    assert [r.event.id for r in b.store.due("hook")] == ["e1", "e2", "e3"]


def test_two_instances_never_get_the_same_row(members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    a.round(["c1"])
    b.round([])
    total = 60
    a.store.commit(routed([event(f"e{n}", f"O{n}") for n in range(total)], "hook"))
    got: dict[str, list[str]] = {"a": [], "b": []}
    failures: list[BaseException] = []

    def deliver(member: Member) -> None:
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                rows = member.store.due("hook", limit=4)
                if not rows:
                    if not member.store.backlog():
                        return
                    time.sleep(0.005)  # the other instance holds the rest for now
                    continue
                for row in rows:
                    got[member.name].append(row.event.id)
                    member.store.mark_sent(row.id)
        except BaseException as err:  # reported below
            failures.append(err)

    threads = [threading.Thread(target=deliver, args=(m,)) for m in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    sent = got["a"] + got["b"]
    assert sorted(sent) == sorted(f"e{n}" for n in range(total))  # each row once, none lost
    assert set(got["a"]).isdisjoint(got["b"])


def test_a_crashed_senders_claims_come_back(members: Callable[..., Member]) -> None:
    a, b = members("a", claim_seconds=1.0), members("b")
    a.round(["c1"])
    b.round([])
    a.store.commit(routed([event("e1"), event("e2")], "hook"))
    assert [r.event.id for r in a.store.due("hook")] == ["e1", "e2"]
    assert b.store.due("hook") == []  # a claimed them (and then "crashed")
    rows = wait_for(lambda: b.store.due("hook") or None, what="a's claims expire")
    assert [r.event.id for r in rows] == ["e1", "e2"]
    assert a.store.due("hook") == []  # b's now, for b's claim_seconds


def test_a_dead_instances_claims_end_with_its_registration(
        members: Callable[..., Member]) -> None:
    """kill -9 mid-send: the rows it claimed for a long time come back once its instance
    row expires (a lease's length), not after the whole claim."""
    a, b = members("a", ttl=1.0, claim_seconds=600.0), members("b")
    a.round(["c1"])
    b.round([])
    a.store.commit(routed([event("e1")], "hook"))
    assert [r.event.id for r in a.store.due("hook")] == ["e1"]
    assert b.store.due("hook") == []
    rows = wait_for(lambda: b.store.due("hook") or None, what="a's registration expires")
    assert [r.event.id for r in rows] == ["e1"]


def test_retry_hold_and_dead_give_up_the_claim(pg_url: str,
                                               members: Callable[..., Member]) -> None:
    a, b = members("a"), members("b")
    a.round(["c1"])
    b.round([])
    a.store.commit(routed([event("e1"), event("e2", "O2"), event("e3", "O3")], "hook"))
    first, second, third = a.store.due("hook")
    assert b.store.due("hook") == []
    past = time.time() - 1
    a.store.mark_retry(first.id, next_attempt_at=past, error="HTTP 503")
    a.store.hold(second.id, until=past)
    a.store.mark_dead(third.id, error="HTTP 400")
    assert [claimed for _, claimed in outbox_claims(pg_url)] == ["", "", ""]
    again = b.store.due("hook")
    assert [(r.event.id, r.attempts, r.held) for r in again] == [("e1", 1, False),
                                                                ("e2", 0, True)]


def test_a_store_that_is_not_a_member_claims_nothing(pg_url: str,
                                                     members: Callable[..., Member]) -> None:
    a = members("a")
    a.round(["c1"])
    a.store.commit(routed([event("e1"), event("e2", "O2")], "hook"))
    assert [r.event.id for r in a.store.due("hook", limit=1)] == ["e1"]
    plain = open_pg(pg_url)  # like SQLite: no claims read, none written
    assert [r.event.id for r in plain.due("hook")] == ["e1", "e2"]
    assert [claimed for _, claimed in outbox_claims(pg_url)] == ["a", ""]
    plain.close()
