"""The per-order poll loop of one connection (design.md §5).

:class:`OrderDrain` takes order keys from the connection's :class:`~poller.pollqueue.OrderQueue`
— urgent ones first (just changed, in flight, left a list, watched), then round-robin — and
polls each through the connection's rate budget. Terminal orders are never queued. Nothing
one order's answer does can end the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from poller.coordinator import Coordinator
from poller.logsetup import ConnectionLog
from poller.orderbook import Key
from poller.pollqueue import OrderQueue
from poller.ratelimit import PRIORITY, PRIORITY_ROUTINE, PRIORITY_URGENT

logger = logging.getLogger(__name__)


class OrderDrain:
    """Drains one connection's per-order queue at the budget's pace, with up to
    ``in_flight`` polls on the wire at once (the rate is the budget's, never 1 / round trip).
    """

    def __init__(
        self,
        name: str,
        queue: OrderQueue[Key],
        wake: asyncio.Event,
        poll_one: Callable[[Key], Awaitable[None]],
        coordinator: Coordinator,
        *,
        stop_within: float,
        in_flight: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
        log: ConnectionLog | None = None,
        ready_in: Callable[[bool], float] | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self._wake = wake
        self._poll_one = poll_one
        self._coordinator = coordinator
        self._stop_within = stop_within
        #: Per-order polls of this connection on the wire at once, at most.
        self._in_flight = max(1, in_flight)
        self._mono = monotonic
        #: Seconds until the budget would admit the next per-order request (its argument:
        #: whether an urgent key is due); None: start polls as soon as a slot is free.
        self._ready_in = ready_in
        self.log = log or ConnectionLog(logger, {"connection": name})
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Per-order polls finished, whatever their outcome (the watchdog's heartbeat).
        self.completed = 0

    @property
    def running(self) -> bool:
        """Whether the loop was started and has not been stopped."""
        return self._task is not None

    def start(self) -> None:
        """Start the loop (once)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name=f"orders-{self.name}")

    async def stop(self) -> None:
        """Finish the per-order poll in progress (bounded by the request deadline), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        # asyncio.wait, not wait_for: the task may end cancelled (a request still waiting
        # for budget is cancelled at shutdown), which must not cancel the one stopping it.
        await asyncio.wait({self._task}, timeout=self._stop_within)
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self._in_flight)
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                if self._coordinator.paused:
                    await self._idle(self._coordinator.breaker_wait())
                    continue
                # A free slot first, then the key: the queue decides at the last moment, so
                # an order that became urgent meanwhile goes first.
                await slots.acquire()
                if self._stopping:
                    slots.release()
                    break
                if self._ready_in is not None:
                    # Take the key when the budget can send it, not before: one poll waits
                    # for the budget at a time, and the key is chosen when it can leave.
                    due = self.queue.next_due()
                    wait = self._ready_in(due is not None and due <= self._mono())
                    if wait > 0:
                        slots.release()
                        await self._idle(wait)  # or sooner: an urgent key, a stop
                        continue
                key = self.queue.pop(self._mono())
                if key is None:
                    slots.release()
                    due = self.queue.next_due()
                    await self._idle(None if due is None else due - self._mono())
                    continue
                urgent = self.queue.last_was_urgent
                task = asyncio.create_task(self._one(key, urgent, slots),
                                           name=f"order-{self.name}-{key[2]}")
                running.add(task)
                task.add_done_callback(running.discard)
                # Let the new poll reach the budget before the next key is chosen.
                await asyncio.sleep(0)
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, key: Key, urgent: bool, slots: asyncio.Semaphore) -> None:
        """One per-order poll in its own task; the budget, not the round trip, sets the
        pace, and several polls of one connection may be on the wire at once."""
        # Orders that just changed or left a list go before the round-robin refresh.
        PRIORITY.set(PRIORITY_URGENT if urgent else PRIORITY_ROUTINE)  # this task's own
        try:
            await self._poll_one(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive anything one order's answer does
            self.log.exception("per-order poll of %s failed unexpectedly", key[2])
        finally:
            self.queue.polled(key, self._mono())
            self.completed += 1
            slots.release()
            if self.queue.next_due() is not None:
                self._wake.set()

    async def _idle(self, timeout: float | None) -> None:
        """Wait for a wake-up, or ``timeout`` seconds at most.

        A timer that sets the wake-up event, not ``asyncio.wait_for``: the loop idles
        here before nearly every poll at full budget, and wait_for's task and cancel
        scope cost more CPU than the poll's own bookkeeping. The loop clears the event
        before it looks again, so a timeout reads as a wake-up with nothing new.
        """
        if self._wake.is_set():
            return
        timer = None if timeout is None else asyncio.get_running_loop().call_later(
            max(0.0, timeout), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()
