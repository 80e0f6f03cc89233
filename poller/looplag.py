"""How late the event loop runs: a task that sleeps a little and measures how much longer it
took. A loop held up by work that should not be on it (a blocking plugin, a huge parse)
shows here first, long before the watchdog fires."""

from __future__ import annotations

import asyncio
import time
from collections import deque

#: Seconds between two measurements, and how many recent ones the percentiles cover (a
#: minute). Four a second: each wake-up of an otherwise idle daemon costs CPU (at 20 a
#: second they were half of its idle 10 ms of CPU a second), and a stall long enough to
#: matter (a quarter second and more) is caught by every sample it overlaps.
EVERY = 0.25
SAMPLES = 240


class LoopLag:
    """Measures the event loop's lag while it runs (start it inside the loop)."""

    def __init__(self, every: float = EVERY) -> None:
        self._every = every
        self._lags: deque[float] = deque(maxlen=SAMPLES)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring."""
        self._task = asyncio.create_task(self._measure(), name="loop-lag")

    async def _measure(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self._every)
            self._lags.append(max(0.0, time.monotonic() - before - self._every))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the recent lags, in seconds (0 before any)."""
        if not self._lags:
            return 0.0
        ordered = sorted(self._lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
