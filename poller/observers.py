"""``order_event`` observers, off the poll and commit path: a bounded queue and one worker.

A commit hands its new events to :meth:`ObserverQueue.put` and goes on: observers never
delay polling or delivery (notifiers go through the outbox anyway). The worker calls every
observer for each event (:meth:`poller.plugins.Plugins.call_observers`: plain functions in a
thread, each within its time limit). When observers fall behind so far that the queue is
full, the oldest waiting events are dropped for them — logged once per episode — rather than
holding the daemon back.
"""

from __future__ import annotations

import asyncio
import logging

from poller.events import OrderEvent
from poller.plugins import Plugins

logger = logging.getLogger(__name__)

#: Events waiting for observers at most.
QUEUE_SIZE = 1000


class ObserverQueue:
    """Feeds committed events to the ``order_event`` hook, in order, in the background."""

    def __init__(self, plugins: Plugins, *, size: int = QUEUE_SIZE) -> None:
        self.plugins = plugins
        self._queue: asyncio.Queue[OrderEvent] = asyncio.Queue(maxsize=size)
        self._task: asyncio.Task[None] | None = None
        #: Events dropped because observers fell behind (a metric, and the log says once).
        self.dropped = 0
        self._dropping = False

    def start(self) -> None:
        """Start the worker (inside the running loop)."""
        self._task = asyncio.create_task(self._worker(), name="observers")

    def put(self, event: OrderEvent) -> None:
        """Queue an event for the observers; never waits."""
        if self._queue.full():
            self._queue.get_nowait()  # the oldest goes: the newest facts matter most
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                logger.warning("order_event observers fall behind: %d events are waiting; "
                               "the oldest are dropped for them (notifiers are not affected)",
                               self._queue.qsize())
        self._queue.put_nowait(event)

    async def _worker(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.plugins.call_observers("order_event", event=event)
            finally:
                self._queue.task_done()
            if self._dropping and self._queue.empty():
                self._dropping = False
                logger.info("order_event observers caught up")

    async def stop(self, grace: float) -> None:
        """Give the observers up to ``grace`` seconds for what is queued, then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout=grace)
        except TimeoutError:
            logger.warning("order_event observers: %d events left unobserved at shutdown",
                           self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
