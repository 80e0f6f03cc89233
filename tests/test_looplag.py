"""The loop-lag monitor sees a loop held up by blocking work."""

from __future__ import annotations

import asyncio
import time

from poller.looplag import LoopLag


def test_a_blocked_loop_shows_as_lag() -> None:
    async def run() -> tuple[float, float]:
        lag = LoopLag(every=0.02)  # many samples in a short test
        assert lag.quantile(0.99) == 0.0
        lag.start()
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # work that should not be on the loop
        await asyncio.sleep(0.2)
        await lag.stop()
        return lag.quantile(0.5), lag.quantile(0.99)

    median, worst = asyncio.run(run())
    assert worst >= 0.25 > median

