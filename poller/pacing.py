"""Notifier pacing: a service's soft limits, declared on the class, kept with leaky buckets.

A notifier declares its service's limits as :class:`Pace` values (``Notifier.pacing``); its
:class:`Pacer` turns them into ``aiolimiter.AsyncLimiter`` buckets. These are soft limits
(Slack's "about one a second", Telegram's unpublished ones), so a leaky bucket is the right
tool; the broker contracts keep their exact sliding windows in :mod:`poller.ratelimit`.

Each bucket holds one message and drains one every ``per / count`` seconds (plus a small pad
for network jitter), so no period ever sees more than ``count`` messages: a bucket with room
for a burst of N would admit up to 2N - 1 in one period.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiolimiter import AsyncLimiter

from poller.errors import DeliveryRateLimited

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pydantic import BaseModel

#: A rate-limit answer that names no pause holds the buckets this long (seconds).
DEFAULT_PAUSE = 30.0
#: The shortest nap while a bucket drains: float rounding can leave it a hair short.
MIN_NAP = 0.001


def pad(per: float) -> float:
    """Seconds added to a period: 3 % of it, between 50 and 250 ms.

    Messages spaced exactly by us may still arrive a little closer together at the
    service (network jitter); the pad keeps them apart by at least the period.
    """
    return min(max(0.05, 0.03 * per), 0.25)


@dataclass(frozen=True)
class Pace:
    """One soft limit of a service: at most ``count`` messages per ``per`` seconds.

    :param count: the number, or the name of the notifier's config field holding it
        (``"max_per_minute"``), so the operator's own figure is the one kept.
    :param per: the period, in seconds.
    :param per_target: one bucket per target (a Telegram chat) instead of one in all.
    :param applies_to: which targets the limit covers (Telegram: group chats); all if None.
    """

    count: float | str
    per: float = 1.0
    per_target: bool = False
    applies_to: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        if not self.per > 0:
            raise ValueError(f"a pace needs a positive period, not {self.per!r}")
        if not isinstance(self.count, str) and not self.count > 0:
            raise ValueError(f"a pace needs a positive count, not {self.count!r}")

    def figure(self, config: BaseModel) -> float:
        """The count under ``config`` (read from the named field when it is a name).

        :raises ValueError: the field does not hold a positive number.
        """
        value = getattr(config, self.count) if isinstance(self.count, str) else self.count
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"pacing: {self.count} must be a positive number, not {value!r}")
        return float(value)

    def interval(self, config: BaseModel) -> float:
        """Seconds between two messages in one bucket under ``config``."""
        return (self.per + pad(self.per)) / self.figure(config)

    def describe(self, config: BaseModel) -> str:
        """``max_per_minute (3 per 60 s)``: the limit as error texts name it."""
        limit = f"{self.figure(config):g} per {self.per:g} s"
        return f"{self.count} ({limit})" if isinstance(self.count, str) else limit

    def covers(self, target: str | None) -> bool:
        """Whether a message to ``target`` passes through this limit."""
        return self.applies_to is None or (target is not None and self.applies_to(target))


class Bucket:
    """One leaky bucket: room for one message, drained one ``interval`` after it."""

    def __init__(self, interval: float, reason: str) -> None:
        # Made only inside the running loop (see Pacer): the limiter binds to it.
        self.limiter = AsyncLimiter(1, interval)
        self.interval = interval
        self.reason = reason
        self.last = -math.inf  # loop time of the last message taken
        self.paused_until = -math.inf
        self.taken = 0

    def wait(self, now: float) -> float:
        """Seconds until this bucket takes one more message (0: now)."""
        pause = self.paused_until - now
        if self.limiter.has_capacity():
            return max(pause, 0.0)
        # Room for one message: it drains exactly one interval after the last one.
        return max(pause, self.last + self.interval - now, MIN_NAP)


class Pacer:
    """The buckets of one notifier, made from its :class:`Pace` declarations.

    Buckets are made on first use inside the running loop, and afresh when the loop
    changes: an ``AsyncLimiter`` belongs to one loop (aiolimiter warns against reusing it).

    :param paces: the notifier's declarations.
    :param config: its validated config (figures named by a pace are read from it).
    :param name: how error texts name the notifier (``slack desk``).
    """

    def __init__(self, paces: Sequence[Pace], config: BaseModel, *, name: str) -> None:
        self.name = name
        self._limits = [(pace, pace.interval(config), pace.describe(config)) for pace in paces]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buckets: dict[tuple[int, str | None], Bucket] = {}

    def buckets(self, target: str | None = None) -> list[Bucket]:
        """The buckets a message to ``target`` passes through, in declaration order."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._buckets = loop, {}
        found = []
        for index, (pace, interval, reason) in enumerate(self._limits):
            if not pace.covers(target):
                continue
            key = (index, target if pace.per_target else None)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = Bucket(interval, reason)
            found.append(bucket)
        return found

    def wait_time(self, target: str | None = None) -> float:
        """Seconds until a message to ``target`` may go (0: now). Call inside the loop."""
        now = asyncio.get_running_loop().time()
        return max((b.wait(now) for b in self.buckets(target)), default=0.0)

    async def acquire(self, target: str | None = None, *, longest: float) -> None:
        """Wait until every bucket of ``target`` has room, then take one in all at once.

        All are taken in the same instant, once all have room: taking them one after the
        other would count a message in the first bucket while it still waits for the next.

        :param longest: the longest wait slept through here.
        :raises DeliveryRateLimited: the wait would be longer than ``longest``; its
            ``retry_after`` says when the message may go, so the dispatcher keeps it queued
            instead of a delivery running into its time limit.
        """
        loop = asyncio.get_running_loop()
        while True:
            buckets = self.buckets(target)
            now = loop.time()
            waits = [(b.wait(now), b) for b in buckets]
            wait, worst = max(waits, key=lambda pair: pair[0], default=(0.0, None))
            if worst is None or wait <= 0:
                for bucket in buckets:
                    # Never suspends: every bucket has room, so no other task runs between.
                    await bucket.limiter.acquire()
                    bucket.last = now
                    bucket.taken += 1
                return
            if wait > longest:
                paused = worst.paused_until - now >= wait
                reason = "a pause the service asked for" if paused else worst.reason
                whom = f" to {target}" if target is not None else ""
                raise DeliveryRateLimited(
                    f"{self.name}: holding back messages{whom} to respect {reason}; "
                    f"next one in {wait:.0f} s", retry_after=wait)
            await asyncio.sleep(wait)

    def pause(self, target: str | None, seconds: float) -> None:
        """Take nothing through the buckets of ``target`` for ``seconds`` (after a 429)."""
        until = asyncio.get_running_loop().time() + seconds
        for bucket in self.buckets(target):
            bucket.paused_until = max(bucket.paused_until, until)
