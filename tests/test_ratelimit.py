"""Rate budgets: the sliding-window guarantee, proved on a fake clock for random schedules."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Coroutine
from typing import Any

import pytest
from aiolimiter import AsyncLimiter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.ratelimit import (
    PRIORITY,
    PRIORITY_ROUTINE,
    PRIORITY_URGENT,
    Jitter,
    LimitGroup,
    LimitSpec,
    RateBudget,
)


class FakeTime:
    """A discrete-event clock: ``sleep`` parks the caller until the driver advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = self.now + max(0.0, delay)
        if delay > 0 and due <= self.now:
            # A delay below the clock's resolution must still move time forward (a real
            # monotonic clock always has), or a sub-ulp wait would be retried for ever.
            due = math.nextafter(self.now, math.inf)
        heapq.heappush(self._timers, (due, next(self._seq), future))
        await future

    async def run(self, tasks: list[asyncio.Task[Any]],
                  cancels: list[tuple[float, asyncio.Task[Any]]]) -> None:
        """Advance time from timer to timer until every task is done."""
        cancels = sorted(cancels, key=lambda c: c[0])
        for _ in range(1_000_000):  # bounded: a scheduling bug fails instead of hanging
            if all(t.done() for t in tasks):
                return
            for _ in range(5):  # let ready tasks run up to their next sleep
                await asyncio.sleep(0)
            if not self._timers:
                await asyncio.sleep(0)
                continue
            due, _, future = heapq.heappop(self._timers)
            while cancels and cancels[0][0] <= due:
                at, task = cancels.pop(0)
                self.now = max(self.now, at)
                task.cancel()
                await asyncio.sleep(0)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
        raise AssertionError(f"tasks still waiting after a million steps at t={self.now}")


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


SPECS = [LimitSpec(30, 2.0), LimitSpec(1, 1.0), LimitSpec(30, 30.0, spacing=0.02),
         LimitSpec(250, 10.0), LimitSpec(2, 2.0), LimitSpec(300, 1.0)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec_a=st.sampled_from(SPECS),
    spec_b=st.sampled_from(SPECS),
    share=st.sampled_from([0.5, 0.8, 1.0]),
    arrivals=st.lists(st.tuples(st.floats(0, 20), st.sampled_from(["a", "b", "ab"]),
                                st.one_of(st.none(), st.floats(0, 25)),
                                st.integers(-1, 2)),
                      min_size=1, max_size=120),
    pause=st.one_of(st.none(), st.tuples(st.floats(0, 20), st.floats(0.1, 10))),
)
def test_no_window_ever_holds_more_than_the_share(
        spec_a: LimitSpec, spec_b: LimitSpec, share: float,
        arrivals: list[tuple[float, str, float | None, int]],
        pause: tuple[float, float] | None) -> None:
    fake = FakeTime()
    groups = [LimitGroup("a", spec_a, share=share), LimitGroup("b", spec_b, share=share)]
    budget = RateBudget(groups, clock=fake.clock, sleep=fake.sleep)
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    paused: list[tuple[float, float]] = []

    async def request(at: float, names: str, priority: int) -> None:
        await fake.sleep(at)
        when = await budget.acquire(*names, priority=priority)
        for name in names:
            admitted[name].append(when)

    async def pauser(at: float, seconds: float) -> None:
        await fake.sleep(at)
        budget.pause(["a"], seconds)
        paused.append((fake.now, fake.now + seconds))

    async def main() -> None:
        coros: list[Coroutine[Any, Any, None]] = [
            request(at, names, priority) for at, names, _, priority in arrivals]
        if pause:
            coros.append(pauser(*pause))
        tasks = [asyncio.ensure_future(c) for c in coros]
        cancels = [(at, tasks[i]) for i, (_, _, at, _) in enumerate(arrivals) if at is not None]
        await fake.run(tasks, cancels)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    for group in groups:
        times = admitted[group.name]
        allowed = math.floor(share * group.spec.count)
        if allowed >= 1:
            assert max_in_window(times, group.spec.window) <= allowed
        else:  # fewer than one request per window: the window is stretched instead
            assert max_in_window(times, group.spec.window / share) <= 1
        if group.spec.spacing:
            ordered = sorted(times)
            assert all(b - a >= group.spec.spacing - 1e-9 for a, b in zip(ordered, ordered[1:],
                                                                          strict=False))
    for start, end in paused:
        assert not [t for t in admitted["a"] if start < t < end - 1e-9]


def test_saturated_demand_uses_the_allowed_rate() -> None:
    """With more work than budget, admissions run at the allowed rate (utilisation)."""
    fake = FakeTime()
    group = LimitGroup("g", LimitSpec(30, 2.0), share=0.8)
    budget = RateBudget([group], clock=fake.clock, sleep=fake.sleep)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(600):
            times.append(await budget.acquire("g"))

    async def main() -> None:
        task = asyncio.ensure_future(worker())
        await fake.run([task], [])

    asyncio.run(main())
    achieved = (len(times) - 1) / (times[-1] - times[0])
    allowed = 24 / 2.0
    assert achieved / allowed >= 0.95
    assert max_in_window(times, 2.0) == 24


def run_over_a_network(group: LimitGroup, delays: list[tuple[float, float | None]],
                       in_flight: int, routine: bool = False) -> tuple[list[float], list[float]]:
    """Saturated demand through ``group`` over a simulated network: request i reaches the
    broker ``delays[i][0]`` after it leaves and is answered ``delays[i][1]`` after that
    (None: never, a timeout), the budget told of each answer. ``in_flight`` workers send
    one request at a time each. Returns (send times, arrival times)."""
    fake = FakeTime()
    budget = RateBudget([group], clock=fake.clock, sleep=fake.sleep)
    sends: list[float] = []
    arrivals: list[float] = []
    jobs = iter(delays)

    async def worker() -> None:
        if routine:
            PRIORITY.set(PRIORITY_ROUTINE)
        for forward, back in jobs:
            admitted = await budget.acquire("g")
            sends.append(admitted)
            await fake.sleep(forward)
            arrivals.append(fake.now)
            if back is None:
                continue  # no answer: the budget hears nothing
            await fake.sleep(back)
            budget.answered(["g"], admitted)

    async def main() -> None:
        tasks = [asyncio.ensure_future(worker()) for _ in range(in_flight)]
        await fake.run(tasks, [])

    asyncio.run(main())
    return sends, arrivals


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(SPECS),
    share=st.sampled_from([0.8, 1.0]),
    base=st.one_of(st.just(0.0), st.floats(0, 0.5)),
    jitter=st.floats(0.0, 0.5),
    shape=st.lists(st.tuples(st.floats(0, 1), st.one_of(st.none(), st.just(0.0),
                                                         st.floats(0, 0.6))),
                   min_size=5, max_size=300),
    in_flight=st.integers(1, 8),
    routine=st.booleans(),
)
def test_no_window_at_the_broker_ever_holds_more_than_the_share(
        spec: LimitSpec, share: float, base: float, jitter: float,
        shape: list[tuple[float, float | None]], in_flight: int, routine: bool) -> None:
    """By *arrival* time, with transit times anywhere in [base, base + J] and the window
    padded by J: answered requests free their slot from their answer on, unanswered ones
    from send + J, and still no window of W at the broker holds more than the share."""
    group = LimitGroup("g", spec, share=share, pad=max(jitter, 1e-6))
    delays = [(base + jitter * f, back) for f, back in shape]
    sends, arrivals = run_over_a_network(group, delays, in_flight, routine)
    allowed = math.floor(share * spec.count)
    window = spec.window if allowed >= 1 else spec.window / share
    assert max_in_window(arrivals, window) <= max(allowed, 1)
    assert max_in_window(sends, window) <= max(allowed, 1)  # and by send time too


def test_an_answer_frees_the_slot_sooner_than_the_pad() -> None:
    """Answers that come back quickly on a jittery network: the window's slots are freed at
    each answer, so the rate beats allowed / (W + pad) while the broker sees at most
    allowed per W; without answers (timeouts) it is allowed / (W + pad) exactly."""
    rng = random.Random(5)
    delays: list[tuple[float, float | None]] = [(rng.uniform(0, 0.3), 0.0) for _ in range(900)]
    padded = LimitGroup("g", LimitSpec(30, 2.0), share=0.8, pad=0.3)
    sends, arrivals = run_over_a_network(padded, delays, in_flight=8)
    rate = (len(sends) - 1) / (sends[-1] - sends[0])
    assert max_in_window(arrivals, 2.0) <= 24
    assert rate > 1.05 * 24 / 2.3  # about 24 / 2.15: the mean hold is half the pad
    assert padded.hold == pytest.approx(0.15, abs=0.03)
    silent = LimitGroup("g", LimitSpec(30, 2.0), share=0.8, pad=0.3)
    sends, arrivals = run_over_a_network(silent, [(f, None) for f, _ in delays], in_flight=8)
    rate = (len(sends) - 1) / (sends[-1] - sends[0])
    assert rate == pytest.approx(24 / 2.3, rel=0.02) and silent.hold == 0.3
    assert max_in_window(arrivals, 2.0) <= 24


def test_a_bare_leaky_bucket_is_not_a_window_limit() -> None:
    """Why we do not use ``AsyncLimiter(N, W)`` alone: it admits about 2N in one window."""
    loop_time = [0.0]

    limiter = AsyncLimiter(30, 2)
    admitted: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        original = loop.time
        loop.time = lambda: loop_time[0]  # type: ignore[method-assign]
        try:
            for step in range(400):
                loop_time[0] = step * 0.01
                while limiter.has_capacity():
                    await limiter.acquire()
                    admitted.append(loop_time[0])
        finally:
            loop.time = original  # type: ignore[method-assign]

    asyncio.run(main())
    assert max_in_window(admitted, 2.0) > 30


@pytest.mark.parametrize(("text", "spec"), [
    ("30/2s", LimitSpec(30, 2.0)), ("1/s", LimitSpec(1, 1.0)), ("250 / 10s", LimitSpec(250, 10)),
    ("600/min", LimitSpec(600, 60.0)), ("5/500ms", LimitSpec(5, 0.5)),
])
def test_limit_spec_parsing(text: str, spec: LimitSpec) -> None:
    assert LimitSpec.parse(text) == spec


@pytest.mark.parametrize("text", ["", "thirty/2s", "0/2s", "30/0s", "30 per 2 s"])
def test_limit_spec_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        LimitSpec.parse(text)


def test_higher_priority_goes_first_then_first_come() -> None:
    fake = FakeTime()
    budget = RateBudget([LimitGroup("g", LimitSpec(1, 1.0), share=1.0, pad=0.0)],
                        clock=fake.clock, sleep=fake.sleep)
    order: list[str] = []

    async def request(name: str, priority: int) -> None:
        await budget.acquire("g", priority=priority)
        order.append(name)

    async def main() -> None:
        await budget.acquire("g")  # the slot is taken: everyone below has to wait
        tasks = [asyncio.ensure_future(request(n, p)) for n, p in
                 [("routine-1", -1), ("list", 0), ("urgent", 1), ("routine-2", -1),
                  ("action", 2), ("list-2", 0)]]
        await fake.run(tasks, [])

    asyncio.run(main())
    assert order == ["action", "urgent", "list", "list-2", "routine-1", "routine-2"]


def test_the_window_pad_follows_the_measured_round_trip_spread() -> None:
    group = LimitGroup("g", LimitSpec(30, 2.0), share=1.0)
    budget = RateBudget([group])
    assert (group.pad, group.max_pad) == (0.06, 1.0)
    for n in range(Jitter.EVERY):  # round trips from 10 to 310 ms
        budget.observe_round_trip(0.01 + 0.3 * n / (Jitter.EVERY - 1))
    assert group.pad == pytest.approx(0.3, abs=0.02)
    assert group.window == pytest.approx(2.0 + group.pad)
    assert group.rate == pytest.approx(30 / group.window)
    for _ in range(Jitter.SAMPLES):  # a quiet network: back to the floor
        budget.observe_round_trip(0.002)
    assert group.pad == group.min_pad
    for n in range(Jitter.SAMPLES):  # a terrible one: held at the cap
        budget.observe_round_trip(5.0 * (n % 2))
    assert group.pad == group.max_pad == 1.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(SPECS), share=st.sampled_from([0.8, 1.0]),
       death=st.floats(0.5, 40), ttl=st.sampled_from([3.0, 10.0]))
def test_a_new_lease_holder_continues_the_old_holders_window(
        spec: LimitSpec, share: float, death: float, ttl: float) -> None:
    """Instance A polls at full rate and renews its lease every ttl/3, storing its window;
    it dies at any moment; B takes over when the lease expires and resumes from the stored
    state. Together they never exceed the share in any window."""
    fake = FakeTime()
    renew_every = ttl / 3
    a = RateBudget([LimitGroup("g", spec, share=share)], clock=fake.clock, sleep=fake.sleep)
    b = RateBudget([LimitGroup("g", spec, share=share)], clock=fake.clock, sleep=fake.sleep)
    times: list[float] = []
    stored: list[tuple[float, dict[str, Any]]] = []

    async def worker(budget: RateBudget, until: float) -> None:
        while fake.now < until:
            times.append(await budget.acquire("g"))

    def renew() -> None:
        grant = a.prepare_lease(renew_every)
        stored.append((fake.now, grant.state))
        a.apply_lease(grant, fake.now + ttl - 0.5)

    async def renewer() -> None:
        while True:
            renew()
            await fake.sleep(renew_every)

    async def main() -> None:
        renew()
        tasks = [asyncio.ensure_future(worker(a, math.inf)), asyncio.ensure_future(renewer())]
        waiter = asyncio.ensure_future(fake.sleep(death))
        await fake.run([waiter], [])
        for task in tasks:  # kill -9: no goodbye, no last write
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        written_at, state = stored[-1]
        takeover = written_at + ttl  # the lease's expiry, as the database sees it
        await fake.run([asyncio.ensure_future(fake.sleep(max(0.0, takeover - fake.now)))], [])
        b.resume(state, fake.now - written_at)
        successor = asyncio.ensure_future(worker(b, fake.now + 2 * spec.window + 5))
        await fake.run([successor], [])

    asyncio.run(main())
    allowed = max(1, math.floor(share * spec.count))
    window = spec.window if math.floor(share * spec.count) >= 1 else spec.window / share
    assert max_in_window(times, window) <= allowed


def test_no_request_starts_after_the_lease_deadline_until_it_is_renewed() -> None:
    fake = FakeTime()
    budget = RateBudget([LimitGroup("g", LimitSpec(30, 2.0))], clock=fake.clock,
                        sleep=fake.sleep)
    budget.apply_lease(budget.prepare_lease(1.0), 1.0)
    admitted: list[float] = []

    async def main() -> None:
        await fake.run([asyncio.ensure_future(fake.sleep(1.5))], [])  # a pause: SIGSTOP
        task = asyncio.ensure_future(budget.acquire("g"))

        async def renew_later() -> None:
            await fake.sleep(3.0)
            budget.apply_lease(budget.prepare_lease(1.0), fake.now + 5.0)

        await fake.run([task, asyncio.ensure_future(renew_later())], [])
        admitted.append(task.result())

    asyncio.run(main())
    assert admitted[0] >= 4.5  # held back from 1.5 s until the renewal at 4.5 s


def test_a_budget_without_a_lease_admits_nothing() -> None:
    fake = FakeTime()
    budget = RateBudget([LimitGroup("g", LimitSpec(30, 2.0))], clock=fake.clock,
                        sleep=fake.sleep)
    budget.shut_lease()
    grant = budget.prepare_lease(1.0)
    assert grant.allowances == {"g": 24} and grant.state["groups"]["g"]["ages"] == []

    async def main() -> float:
        task = asyncio.ensure_future(budget.acquire("g"))

        async def take_over() -> None:
            await fake.sleep(7.0)
            budget.apply_lease(grant, fake.now + 10)

        await fake.run([task, asyncio.ensure_future(take_over())], [])
        return task.result()

    assert asyncio.run(main()) >= 7.0


def test_requests_between_prepare_and_apply_count_against_the_allowance() -> None:
    budget = RateBudget([LimitGroup("g", LimitSpec(10, 30.0))])
    grant = budget.prepare_lease(3.0)
    budget.group("g").record(budget.now())  # started while the renewal was on its way
    budget.apply_lease(grant, budget.now() + 5)
    assert budget.group("g").allowance == grant.allowances["g"] - 1


def test_resume_ignores_a_state_that_is_not_a_budget() -> None:
    budget = RateBudget([LimitGroup("g", LimitSpec(2, 2.0))])
    assert budget.resume({"groups": {"g": "nonsense", "other": {"ages": [0.1]}}}, 0.0) == 0
    assert budget.resume({"groups": {"g": {"ages": [0.5, "x"], "allowance": 1}}}, 0.2) == 2
    assert budget.group("g").wait_time(budget.now()) > 0


def test_round_robin_requests_are_spread_and_an_urgent_one_waits_a_slot_not_a_bunch() -> None:
    """A saturated round-robin (8 always waiting) leaves one request every window/allowed,
    at the full rate, instead of a window's worth at once; an urgent request arriving at any
    moment is admitted within about one such slot."""
    fake = FakeTime()
    group = LimitGroup("g", LimitSpec(30, 2.0), share=0.8)  # 24 per 2.06 s
    budget = RateBudget([group], clock=fake.clock, sleep=fake.sleep)
    slot = group.window / group.allowed
    routine: list[float] = []
    urgent_waits: list[float] = []

    async def round_robin() -> None:
        PRIORITY.set(PRIORITY_ROUTINE)
        while fake.now < 30:
            routine.append(await budget.acquire("g"))

    async def urgent(at: float) -> None:
        await fake.sleep(at)
        PRIORITY.set(PRIORITY_URGENT)
        admitted = await budget.acquire("g")
        urgent_waits.append(admitted - at)
        routine.append(admitted)  # every start, for the spread

    async def main() -> None:
        tasks = [asyncio.ensure_future(round_robin()) for _ in range(8)]
        tasks += [asyncio.ensure_future(urgent(5 + 0.37 * i)) for i in range(40)]
        await fake.run(tasks, [])

    asyncio.run(main())
    steady = sorted(t for t in routine if 3 <= t < 28)
    assert max_in_window(steady, slot * 0.999) <= 2  # no bunch: at most two in one slot
    assert len(steady) >= 0.98 * (25 / slot)  # the full rate is used
    assert max(urgent_waits) <= 2 * slot


def test_admit_in_says_when_acquire_would_admit_without_recording() -> None:
    fake = FakeTime()
    group = LimitGroup("g", LimitSpec(30, 2.0), share=0.8)
    budget = RateBudget([group], clock=fake.clock, sleep=fake.sleep)
    slot = 1 / group.rate
    assert budget.admit_in(["g"], PRIORITY_ROUTINE) == 0.0
    for _ in range(2):  # the spreading tolerates one slot of catching up
        group.record(0.0)
        budget._pace([group], 0.0)
    assert budget.admit_in(["g"], PRIORITY_ROUTINE) == pytest.approx(slot)
    assert budget.admit_in(["g"], PRIORITY_URGENT) == 0.0  # urgent requests are not spread
    for _ in range(22):
        group.record(0.0)
    assert budget.admit_in(["g"], PRIORITY_URGENT) == pytest.approx(group.window)  # full
    assert group.admitted == 24  # asking recorded nothing
    budget.shut_lease()
    assert budget.admit_in(["g"], PRIORITY_URGENT) > 0  # no lease: look again later
