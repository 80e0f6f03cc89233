"""An asyncio loop on a virtual clock: short waits are skipped, real I/O still happens.

Pacing (aiolimiter) reads the event loop's clock, so tests control time through the loop.
The clock all but stands still while the loop works or waits for a socket (it ticks
:data:`TICK` per loop iteration, as real time always moves a little: code waiting for a
deadline a rounding error away would otherwise spin forever), so a loopback server stamping
arrivals with it records the instants the notifier sent at, free of jitter. When
the loop has nothing to do but wait for a timer due in less than ``jump_below`` seconds (a
pacing wait), the clock jumps to it at once. Longer timers are I/O time limits: the loop
waits for them in real time, so a server that hangs still times out. So every time limit on
real I/O in a test using this loop must be at least ``jump_below``.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Real seconds the loop may sit with no timer and no I/O before the test fails as hung.
IDLE_LIMIT = 60.0
#: Virtual seconds every loop iteration takes.
TICK = 1e-6


class VirtualClock:
    """The virtual time: moves only when the loop skips a wait or the test advances it."""

    def __init__(self, start: float = 1000.0, *, jump_below: float = 10.0) -> None:
        self.now = start
        self.jump_below = jump_below

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (the dispatcher waiting out a ``retry_after``)."""
        self.now += seconds


class _Selector(selectors.DefaultSelector):
    """The default selector, moving the virtual clock instead of sleeping on short waits."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._clock.now += TICK
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is not None and timeout < self._clock.jump_below:
            self._clock.now += timeout  # nothing to do but wait: skip to the timer
            return []
        if timeout is None:
            ready = super().select(IDLE_LIMIT)
            if not ready:
                raise RuntimeError(f"the loop waited {IDLE_LIMIT:g} s for nothing: a deadlock")
            return ready
        ready = super().select(timeout)
        if not ready:
            self._clock.now += timeout  # a time limit really ran out
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a :class:`VirtualClock`."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        super().__init__(_Selector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run(main: Coroutine[Any, Any, T], clock: VirtualClock | None = None) -> T:
    """``asyncio.run(main)`` on a :class:`VirtualTimeLoop` (a fresh clock if none given)."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(clock)) as runner:
        return runner.run(main)


def no_io(start: float = 1000.0) -> VirtualClock:
    """A clock for loops doing no I/O at all: every wait is skipped."""
    return VirtualClock(start, jump_below=math.inf)
