"""Rate budgets: named limit groups with an exact sliding-window guarantee (design.md §4).

A bare ``aiolimiter.AsyncLimiter(N, W)`` is a leaky bucket that admits up to 2N-1 requests in
one window, so it cannot honour "N per W seconds" as a hard contract. Each :class:`LimitGroup`
here keeps the start times of its recent requests (a sliding-window log) and admits a request
only when fewer than ``floor(share * N)`` of them may still arrive in one window ``W`` with
it, and the minimum spacing has passed. A request holds its place for ``W`` after the latest
moment it can have arrived: its send time plus the network's jitter (the pad), or, once it is
answered and that came sooner, its answer (the broker had it by then; see
:meth:`LimitGroup.answered`). A request that consumes several groups (endpoint +
account-wide) waits until all have room and is then recorded in all of them at the same
instant, without awaiting in between.

Over 400 lines: the window log, its admission order, its pacing and its hand-over between
cluster instances are one guarantee, proved and tested together.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_SPEC = re.compile(
    r"^\s*(?P<count>\d+)\s*/\s*(?P<window>\d+(?:\.\d+)?)?\s*(?P<unit>ms|s|m|min)?\s*$"
)


@dataclass(frozen=True)
class LimitSpec:
    """A documented limit: ``count`` requests per ``window`` seconds, ``spacing`` apart."""

    count: int
    window: float
    spacing: float = 0.0

    @classmethod
    def parse(cls, text: str, *, spacing: float = 0.0) -> LimitSpec:
        """Read ``"30/2s"``, ``"1/s"``, ``"250/10s"``, ``"600/min"``."""
        match = _SPEC.match(text)
        if not match:
            raise ValueError(f"not a limit like '30/2s': {text!r}")
        count = int(match["count"])
        window = float(match["window"] or 1)
        unit = match["unit"] or "s"
        window *= {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}[unit]
        if count < 1 or window <= 0:
            raise ValueError(f"a limit needs at least 1 request per positive window: {text!r}")
        return cls(count, window, spacing)

    def __str__(self) -> str:
        window = f"{self.window:g}s"
        spacing = f", >= {self.spacing * 1000:g} ms apart" if self.spacing else ""
        return f"{self.count}/{window}{spacing}"


#: The priority of the requests made in this context (higher goes first; see acquire).
#: Per-order polls of orders that just changed or left a list, and order actions, raise it.
PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("poller_priority", default=0)

#: How long a waiter steps back for a request ahead of it that can start now.
YIELD_TO_AHEAD = 0.001

PRIORITY_ROUTINE = -1  # round-robin refresh of idle orders
PRIORITY_URGENT = 1  # orders that just changed or left a list answer
PRIORITY_ACTION = 2  # a replace or cancel someone asked for
#: Added to an answer's time before it bounds the request's arrival: the broker's limiter
#: may stamp arrivals coarsely (to the millisecond, or to 10) and count a request exactly one
#: window later as still inside; 10 ms is a tenth of a typical round trip's spread.
ANSWER_MARGIN = 0.01
#: Answered requests whose hold (:attr:`LimitGroup.hold`) is averaged.
HOLD_SAMPLES = 200
#: How often a request held back by the lease (no allowance, past the deadline) looks again.
LEASE_RECHECK = 0.05


class LimitGroup:
    """One limit group's sliding-window log.

    :param share: the part of the documented limit we may use (the rest is left for network
        jitter and the user's own programs on the same key).
    :param pad: seconds added to the window (default 3 % of it, between 50 and 250 ms), so
        requests spaced exactly by us cannot arrive compressed into one server-side window.
    """

    def __init__(
        self, name: str, spec: LimitSpec, *, share: float = 0.8, pad: float | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        self.share = share
        self.allowed = math.floor(share * spec.count)
        base = spec.window
        if self.allowed < 1:
            # A share of "1 per second" cannot be a fraction of a request: stretch the window
            # instead (share 0.8 of 1/s is 1 per 1.25 s).
            self.allowed = 1
            base = spec.window / share
        self.base_window = base
        # The pad covers network jitter compressing our spacing at the broker: a log of send
        # times padded by the spread J of the transit times admits at most N arrivals in any
        # window W. It starts at a small floor and follows the measured spread (set_pad).
        self.min_pad = pad if pad is not None else max(0.05, min(0.03 * base, 0.25))
        self.max_pad = max(self.min_pad, min(0.5 * base, 2.0))
        self.pad = self.min_pad
        self.window = base + self.pad
        self.spacing = spec.spacing
        #: [start, answered] of each recent request, by start (answered: inf until then).
        self._log: deque[list[float]] = deque()
        #: Recent holds: how long after its start each answered request stopped counting
        #: against the window's beginning (min(pad, round trip)); see :attr:`hold`.
        self._holds: deque[float] = deque(maxlen=HOLD_SAMPLES)
        self._hold_sum = 0.0
        #: :meth:`_ends`, kept until the log or the pad changes (None: to be computed).
        self._sorted_ends: list[float] | None = None
        self.paused_until = 0.0
        self.admitted = 0
        #: Requests still allowed before the lease holder writes its window log again (None:
        #: no lease, no limit). See :meth:`RateBudget.lease_state`.
        self.allowance: int | None = None

    def _ends(self, now: float) -> list[float]:
        """When each logged request stops counting (its latest possible arrival plus the
        window), sorted; some may be past already.

        Kept between changes of the log: admission asks several times per request (each
        waiter, each group), so recomputing would cost more than the request itself.
        """
        log = self._log
        # Past start + pad + window nothing counts, answered or not.
        pruned = False
        while log and log[0][0] <= now - self.window:
            log.popleft()
            pruned = True
        if self._sorted_ends is None or pruned:
            pad, base = self.pad, self.base_window
            self._sorted_ends = sorted(min(start + pad, answered) + base
                                       for start, answered in log)
        return self._sorted_ends

    def wait_time(self, now: float) -> float:
        """Seconds until one more request may start here (0 when it may start now)."""
        wait = max(0.0, self.paused_until - now)
        log = self._log
        if len(log) >= self.allowed:  # else fewer than allowed can still count
            ends = self._ends(now)
            if len(ends) - bisect.bisect_right(ends, now) >= self.allowed:
                # The allowed-th latest end: once it passes, fewer than allowed count.
                wait = max(wait, ends[len(ends) - self.allowed] - now)
        if self.spacing and log:
            wait = max(wait, log[-1][0] + self.spacing - now)
        if self.allowance is not None and self.allowance <= 0:
            wait = max(wait, LEASE_RECHECK)
        return wait

    def in_window(self, now: float) -> int:
        """Requests that still count against the window (read-only: safe from another
        thread)."""
        pad, base = self.pad, self.base_window
        return sum(1 for start, answered in list(self._log)
                   if min(start + pad, answered) + base > now)

    def record(self, now: float) -> None:
        """Note that a request started at ``now``."""
        self._log.append([now, math.inf])
        if self._sorted_ends is not None:
            # The latest start with the full pad: no end is later, so the order holds.
            self._sorted_ends.append(now + self.pad + self.base_window)
        self.admitted += 1
        if self.allowance is not None:
            self.allowance -= 1

    def answered(self, start: float, at: float) -> None:
        """The request that started at ``start`` was answered at ``at``.

        The broker had it by then, so it cannot arrive later: it counts for the window
        after ``at`` if that is sooner than after ``start`` + pad. This is exact where the
        pad is only an estimate (the spread of the round trips measured so far), and frees
        the slot sooner on a network whose delay varies as much as it lasts. Only a request
        the broker answered may say so: a timeout or a refused connection proves nothing.

        Why the window still holds at the broker. Say transit times lie in [d, d + J] and a
        request j arrives at a_j; its bound is U_j = min(s_j + J, r_j). Take any window
        (x - W, x] of arrivals and m the last of them to be *sent* (at t_m, arriving at
        a_m <= x). Every other j in it was sent before t_m and arrived after x - W >=
        a_m - W >= t_m + d - W; since a_j <= s_j + d + J and a_j <= r_j, both s_j + J and
        r_j exceed t_m - W, so j still counted when m was admitted. Admission needs fewer
        than ``allowed`` counting, so the window holds at most ``allowed``.
        """
        for entry in reversed(self._log):
            if entry[0] == start and entry[1] == math.inf:
                entry[1] = max(at, start) + ANSWER_MARGIN
                self._sorted_ends = None
                if len(self._holds) == HOLD_SAMPLES:
                    self._hold_sum -= self._holds[0]
                hold = min(self.pad, entry[1] - start)
                self._holds.append(hold)
                self._hold_sum += hold
                return
            if entry[0] < start:
                return

    @property
    def hold(self) -> float:
        """Seconds a request holds its slot beyond the window, on average: its round trip
        or the pad, whichever is shorter (the pad before any answer)."""
        if not self._holds:
            return self.pad
        return min(self.pad, self._hold_sum / len(self._holds))

    def ages(self, now: float) -> list[float]:
        """Seconds since each request of the trailing window started (oldest first; a new
        lease holder counts them from their starts, without their answers: the safe side)."""
        return [now - start for start, _ in self._log if start > now - self.window]

    def seed(self, starts: Iterable[float]) -> None:
        """Add requests another process made (times on this group's clock), in order."""
        merged = sorted([*self._log, *([t, math.inf] for t in starts)])
        self._log = deque(merged)
        self._sorted_ends = None

    def set_pad(self, jitter: float) -> None:
        """Pad the window by the measured jitter, kept between ``min_pad`` and ``max_pad``."""
        self.pad = min(self.max_pad, max(self.min_pad, jitter))
        self.window = self.base_window + self.pad
        self._sorted_ends = None

    def pause(self, until: float) -> None:
        """Admit nothing before ``until`` (after the broker said we went too fast)."""
        self.paused_until = max(self.paused_until, until)

    @property
    def rate(self) -> float:
        """Requests per second this group allows us: ``allowed`` per window plus the mean
        hold (at least ``allowed`` per padded window)."""
        return self.allowed / (self.base_window + self.hold)


class Jitter:
    """The spread of recent round-trip times, which sizes the budget's window pad.

    A request's arrival at the broker lies somewhere between its send and its answer, so
    transit times vary at most by the spread of round trips (the 99th percentile minus the
    1st, over the last :data:`SAMPLES` answers: one lost packet's retransmit should not pad
    the window for good).
    """

    SAMPLES = 200
    #: Answers between two recomputations of the pad.
    EVERY = 20

    def __init__(self) -> None:
        self._rtts: deque[float] = deque(maxlen=self.SAMPLES)
        self._since = 0

    def observe(self, rtt: float) -> float | None:
        """Record one round trip; every :data:`EVERY` answers, the new spread (else None)."""
        self._rtts.append(rtt)
        self._since += 1
        if self._since < self.EVERY:
            return None
        self._since = 0
        return self.spread()

    def spread(self) -> float:
        """p99 − p1 of the recent round trips (0 before there are two)."""
        if len(self._rtts) < 2:
            return 0.0
        ordered = sorted(self._rtts)
        last = len(ordered) - 1
        return ordered[round(0.99 * last)] - ordered[round(0.01 * last)]


@dataclass(frozen=True)
class LeaseGrant:
    """A prepared lease renewal: the ``state`` to store with it, and what it allows."""

    state: dict[str, Any]
    allowances: dict[str, int]
    marks: dict[str, int]


class RateBudget:
    """The limit groups of one broker connection; every request passes through :meth:`slot`.

    ``clock`` and ``sleep`` are injectable so property tests can run on a fake clock.
    """

    def __init__(
        self,
        groups: Iterable[LimitGroup],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.groups = {g.name: g for g in groups}
        self._clock = clock
        self._sleep = sleep
        self._waiting: dict[tuple[int, int], list[LimitGroup]] = {}
        self._waiters: dict[tuple[int, int], asyncio.Task[object] | None] = {}
        self._tickets = itertools.count()
        self._closed = False
        #: Per group, when the next round-robin request is due if they are spread evenly
        #: (the theoretical arrival time of a GCRA; see _pace_wait).
        self._paced: dict[str, float] = {}
        self.jitter = Jitter()
        #: Budget-clock time after which no request may start (the lease's end as this
        #: process can be sure of it); None without a lease.
        self.deadline: float | None = None

    def group(self, name: str) -> LimitGroup:
        """The group called ``name`` (KeyError names the group when it does not exist)."""
        return self.groups[name]

    async def acquire(self, *names: str, priority: int | None = None) -> float:
        """Wait until every named group has room, then record the request in all of them.

        When several requests wait for the same group, the one with the highest ``priority``
        goes first, then the one that has waited longest. ``priority`` defaults to the
        context's :data:`PRIORITY` (the tracker raises it for orders that matter now).

        :returns: the (budget clock) time the request was admitted.
        """
        if self._closed:
            raise asyncio.CancelledError("the rate budget is closed (shutting down)")
        groups = [self.groups[n] for n in names]
        rank = PRIORITY.get() if priority is None else priority
        ticket = (-rank, next(self._tickets))
        self._waiting[ticket] = groups
        self._waiters[ticket] = asyncio.current_task()
        try:
            while True:
                now = self._clock()
                if self.deadline is not None and now >= self.deadline:
                    # The lease may have passed to another instance: send nothing until it
                    # is renewed (or the connection is stopped here).
                    await self._sleep(LEASE_RECHECK)
                    continue
                wait = self._wait(groups, rank, now)
                if wait <= 0:
                    if self._someone_ahead(ticket, groups, now):
                        # Let the request ahead take this slot. A short nap, not a bare
                        # yield: it may still be asleep until its own timer fires.
                        await self._sleep(YIELD_TO_AHEAD)
                        continue
                    for g in groups:
                        g.record(now)
                    if rank <= PRIORITY_ROUTINE:
                        self._pace(groups, now)
                    return now
                await self._sleep(wait)
        finally:
            del self._waiting[ticket]
            del self._waiters[ticket]

    def admit_in(self, names: Iterable[str], priority: int) -> float:
        """Seconds until :meth:`acquire` would admit a request of ``priority`` into the
        ``names`` groups, were nobody else waiting (0: now). Records nothing.

        The per-order drain asks before it takes a key and starts a poll, so polls wait
        here one at a time instead of all of a connection's polls waiting in
        :meth:`acquire` at once, each woken at every slot (under cProfile the waiting loop
        ran about 15 times per admission at 8 in flight).
        """
        now = self._clock()
        if self.deadline is not None and now >= self.deadline:
            return LEASE_RECHECK
        return self._wait([self.groups[n] for n in names], priority, now)

    def _wait(self, groups: list[LimitGroup], rank: int, now: float) -> float:
        """Seconds until every group has room for a request of priority ``rank`` (and, for
        the round-robin, its spread slot has come)."""
        wait = max((g.wait_time(now) for g in groups), default=0.0)
        if rank <= PRIORITY_ROUTINE:
            wait = max(wait, self._pace_wait(groups, now))
        return wait

    def _pace_wait(self, groups: list[LimitGroup], now: float) -> float:
        """Seconds until a round-robin request is due if they are spread evenly.

        The window alone lets a full window's worth leave at once, and once the requests
        bunch they stay bunched (each expiry is refilled at once), so a request that became
        urgent waited for the next bunch: a second on average at 24 per 2.3 s. Spreading
        the round-robin over the window (one every 1/rate, a GCRA with one slot of
        tolerance, so a late timer is caught up) leaves a slot free every fraction of a
        second. It only ever delays: the window's guarantee is untouched.
        """
        wait = 0.0
        for g in groups:
            due = self._paced.get(g.name)
            if due is not None:
                wait = max(wait, due - 1 / g.rate - now)
        return wait

    def _pace(self, groups: list[LimitGroup], now: float) -> None:
        for g in groups:
            self._paced[g.name] = max(self._paced.get(g.name, now), now) + 1 / g.rate

    def _someone_ahead(self, ticket: tuple[int, int], groups: list[LimitGroup],
                       now: float) -> bool:
        """Whether a request ahead of ``ticket`` shares a group and could start now too."""
        mine = {id(g) for g in groups}
        for other, their in self._waiting.items():
            if other < ticket and mine & {id(g) for g in their} and max(
                    (g.wait_time(now) for g in their), default=0.0) <= 0:
                return True
        return False

    def answered(self, names: Iterable[str], admitted: float) -> None:
        """The request admitted at ``admitted`` into the ``names`` groups was answered just
        now: it stops counting sooner where that is safe (:meth:`LimitGroup.answered`),
        and its round trip sizes the pad (:meth:`observe_round_trip`)."""
        now = self._clock()
        for name in names:
            self.groups[name].answered(admitted, now)
        self.observe_round_trip(now - admitted)

    def observe_round_trip(self, seconds: float) -> None:
        """An admitted request was answered after ``seconds``: let the pad follow the
        network (every group's window grows or shrinks with the measured jitter)."""
        spread = self.jitter.observe(seconds)
        if spread is not None:
            for group in self.groups.values():
                group.set_pad(spread)

    def close(self) -> int:
        """Shut the budget: cancel every request still waiting for room and every later
        one (shutdown must not wait out a long pause); a request already admitted is not
        touched. Returns how many were waiting."""
        self._closed = True
        tasks = [t for t in self._waiters.values() if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    def pause(self, names: Iterable[str], seconds: float) -> None:
        """Pause the named groups for ``seconds`` from now."""
        until = self._clock() + seconds
        for name in names:
            self.groups[name].pause(until)

    def now(self) -> float:
        """The budget's clock."""
        return self._clock()

    # -- handing the window over between instances (a PostgreSQL cluster) --------------------

    def prepare_lease(self, renew_every: float) -> LeaseGrant:
        """What a lease renewal stores: the ages of each window's requests, and how many
        more each group may start before the next renewal (its allowance).

        Nothing changes here: :meth:`apply_lease` puts the grant in force once the renewal
        is committed. A new holder that finds the state counts every request this one may
        have made after writing it — fencing the budget, not hoping.
        """
        now = self._clock()
        groups: dict[str, Any] = {}
        allowances: dict[str, int] = {}
        marks: dict[str, int] = {}
        for name, group in self.groups.items():
            # Enough for two renewal periods at full rate (a late renewal does not stall
            # polling at once), never more than the window allows anyway.
            allowances[name] = min(group.allowed, math.ceil(
                group.allowed * 2 * renew_every / group.window) + 1)
            marks[name] = group.admitted
            groups[name] = {"ages": [round(a, 4) for a in group.ages(now)],
                            "allowance": allowances[name]}
        return LeaseGrant({"groups": groups}, allowances, marks)

    def apply_lease(self, grant: LeaseGrant, deadline: float) -> None:
        """The renewal carrying ``grant`` is committed: requests may start until
        ``deadline`` (budget clock), within the allowance — less what started since the
        grant was prepared, which the stored ages do not hold."""
        self.deadline = deadline
        for name, group in self.groups.items():
            since = group.admitted - grant.marks.get(name, group.admitted)
            group.allowance = max(0, grant.allowances.get(name, 0) - since)

    def shut_lease(self) -> None:
        """No lease (before the first renewal, after losing or releasing it): no request
        may start."""
        self.deadline = -math.inf

    def resume(self, state: Mapping[str, Any], elapsed: float) -> int:
        """Take over from the previous holder's last :meth:`lease_state`, ``elapsed``
        seconds after it was written: its requests fill this budget's windows, and every
        request it was allowed after that counts as made just now. Returns how many
        requests were seeded (a state that is not ours seeds nothing)."""
        now = self._clock()
        seeded = 0
        groups = state.get("groups") if isinstance(state, Mapping) else None
        for name, data in (groups or {}).items():
            group = self.groups.get(name)
            if group is None or not isinstance(data, Mapping):
                continue
            ages = [float(a) for a in data.get("ages", []) if isinstance(a, int | float)]
            starts = [now - a - elapsed for a in ages if a + elapsed < group.window]
            allowance = data.get("allowance", 0)
            starts += [now] * (int(allowance) if isinstance(allowance, int) else 0)
            group.seed(starts)
            seeded += len(starts)
        return seeded
