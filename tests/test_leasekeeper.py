"""Leases on a real PostgreSQL: two keepers (two instances) sharing six connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from poller.databaseurl import DatabaseUrl
from poller.errors import StoreError
from poller.leasekeeper import LeaseKeeper
from poller.pgstore import PgStore
from poller.ratelimit import LimitGroup, LimitSpec, RateBudget
from poller.records import InstanceInfo, LeaseRound

NAMES = [f"c{i}" for i in range(6)]



class Member:
    """One instance: its own store connection, budgets and the connections it runs."""

    def __init__(self, url: str, name: str, running: dict[str, str], ttl: float = 3.0,
                 lease_round: Callable[..., LeaseRound] | None = None) -> None:
        self.store = PgStore.open(DatabaseUrl.parse(url), lock=True)
        self.name = name
        self.running = running
        self.budgets = {n: RateBudget([LimitGroup("g", LimitSpec(10, 2.0))]) for n in NAMES}
        self.keeper = LeaseKeeper(
            db=self.db, lease_round=lease_round or self.store.lease_round,
            leave=self.store.leave, instance=InstanceInfo(name, "box", 1, "2026-12-03T00:00Z"),
            ttl=ttl, connections=lambda: NAMES, budget_of=self.budgets.__getitem__,
            start=self.start, stop=self.stop)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def start(self, connection: str) -> None:
        # Exclusivity, checked where it matters: nobody else runs it when we start it.
        assert connection not in self.running, f"{connection} already runs at " \
                                               f"{self.running[connection]}"
        self.running[connection] = self.name

    async def stop(self, connection: str) -> None:
        if self.running.get(connection) == self.name:
            del self.running[connection]

    def mine(self) -> set[str]:
        return {c for c, who in self.running.items() if who == self.name}


Make = Callable[..., Member]


@pytest.fixture
def member(pg_url: str) -> Iterator[Make]:
    """Make members on the test database; their store connections are closed afterwards."""
    made: list[Member] = []

    def make(name: str, running: dict[str, str], **options: Any) -> Member:
        made.append(Member(pg_url, name, running, **options))
        return made[-1]

    yield make
    for one in made:
        one.store.close()


async def settle(*members: Member, rounds: int = 6) -> None:
    for _ in range(rounds):
        for member in members:
            await member.keeper.run_round()


def test_one_instance_takes_all_then_shares_with_a_second(member: Make) -> None:
    running: dict[str, str] = {}

    async def scenario() -> tuple[set[str], set[str], set[str]]:
        a = member("a", running)
        await settle(a, rounds=2)
        alone = a.mine()
        b = member("b", running)
        await settle(a, b, rounds=8)
        return alone, a.mine(), b.mine()

    alone, mine_a, mine_b = asyncio.run(scenario())
    assert alone == set(NAMES)  # started only after its own budget state was stored
    assert (len(mine_a), len(mine_b)) == (3, 3) and mine_a | mine_b == set(NAMES)


def test_a_dead_instance_is_taken_over_after_expiry_with_its_budget(member: Make) -> None:
    running: dict[str, str] = {}

    async def scenario() -> tuple[int, int, set[str], int]:
        a = member("a", running)
        b = member("b", running)
        await settle(a, b, rounds=8)
        held_a = sorted(a.mine())
        for name in held_a:  # a polled hard just before it died
            for _ in range(3):
                await a.budgets[name].acquire("g")
        await a.keeper.run_round()  # its last renewal stores that window
        # kill -9: no leave, no more rounds; what a ran is gone with it.
        for name in held_a:
            del running[name]
        before = await b.db(b.store.leases)
        deadline = asyncio.get_running_loop().time() + 15
        while not set(held_a) <= b.mine():
            assert asyncio.get_running_loop().time() < deadline, "no take-over"
            await b.keeper.run_round()
            await asyncio.sleep(0.1)
        after = {lease.connection: lease for lease in await b.db(b.store.leases)}
        raised = min(after[n].epoch - next(x.epoch for x in before if x.connection == n)
                     for n in held_a)
        used = b.budgets[held_a[0]].group("g").in_window(b.budgets[held_a[0]].now())
        return len(held_a), raised, b.mine(), used

    count, raised, mine_b, used = asyncio.run(scenario())
    assert count == 3 and mine_b == set(NAMES)
    assert raised == 1  # one change of holder, one epoch
    assert used >= 3  # the 3 requests a made count in b's window (plus its allowance)


def test_a_fenced_commit_writes_nothing(member: Make) -> None:
    from poller.models import SceneType
    from poller.records import Batch
    from poller.samples import sample_event

    running: dict[str, str] = {}

    async def scenario() -> tuple[StoreError, int]:
        a = member("a", running)
        await settle(a, rounds=2)
        b = member("b", running)
        # a pauses (SIGSTOP) past its lease; b takes everything once it expires.
        deadline = asyncio.get_running_loop().time() + 15
        while len(b.mine()) < len(NAMES):
            assert asyncio.get_running_loop().time() < deadline
            for name in list(a.mine()):
                if name in b.store._epochs:
                    running.pop(name)
            await b.keeper.run_round()
            await asyncio.sleep(0.1)
        event = sample_event(SceneType.FILLED, broker="c0")
        with pytest.raises(StoreError) as caught:
            await a.db(a.store.commit, Batch(events=[event]))
        stored = await b.db(b.store.recent_events, 10)
        return caught.value, len(stored)

    err, stored = asyncio.run(scenario())
    assert err.reason == "fenced" and "c0" in str(err)
    assert stored == 0


def test_a_failed_round_keeps_what_it_holds_and_extends_nothing(member: Make) -> None:
    running: dict[str, str] = {}
    fail = {"now": False}

    def flaky(*args: Any, **kwargs: Any) -> LeaseRound:
        if fail["now"]:
            raise StoreError("cannot reach the database db/p: refused", reason="unreachable")
        return one.store.lease_round(*args, **kwargs)

    one = member("a", running, lease_round=flaky)

    async def scenario() -> tuple[float | None, float | None, int]:
        await settle(one, rounds=2)
        budget = one.budgets["c0"]
        before = budget.deadline
        fail["now"] = True
        assert await one.keeper.run_round() is None
        return before, budget.deadline, one.keeper.failures

    before, after, failures = asyncio.run(scenario())
    assert before is not None and after == before and failures == 1
    assert running and set(running) == set(NAMES)  # still ours until the lease ends


def test_a_connection_removed_from_the_config_is_handed_back(member: Make) -> None:
    running: dict[str, str] = {}

    async def scenario() -> dict[str, str]:
        a = member("a", running)
        await settle(a, rounds=2)
        await a.stop("c5")
        a.keeper.drop("c5")
        await a.keeper.run_round()
        leases = {lease.connection: lease.holder for lease in await a.db(a.store.leases)}
        view = a.keeper.view()
        assert "c5" not in view["held"] and view["instance"] == "a"
        assert json.dumps(view)  # plain values, for /healthz
        return leases

    assert asyncio.run(scenario())["c5"] == ""
