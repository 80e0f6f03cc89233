"""The scheduler's jobs: one APScheduler 3.x interval job per connection runs its list calls.

Jobs never overlap themselves (``max_instances=1``, ``coalesce=True``), start with a little
jitter so connections do not poll in lockstep, and can be asked to run early (an order
action waiting for its outcome). Stopping waits for the list polls in progress.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

logger = logging.getLogger(__name__)

PollJob = Callable[[], Awaitable[None]]


class PollJobs:
    """The list-poll jobs of every connection, on one scheduler created inside the loop."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._rng = rng or random.Random()
        self._running: dict[str, set[asyncio.Task[None]]] = {}

    def start(self) -> None:
        """Start the scheduler (inside the running event loop)."""
        self._scheduler.start()

    def add(self, name: str, job: PollJob, interval: float) -> None:
        """Run ``job`` every ``interval`` seconds as connection ``name``'s list poll."""
        self._scheduler.add_job(
            self._run, "interval", args=[name, job], seconds=interval, id=name,
            name=f"poll {name}", max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            # Jitter so several connections do not poll in lockstep.
            next_run_time=datetime.now(UTC) + timedelta(
                seconds=self._rng.uniform(0, min(interval, 1.0))),
            jitter=interval * 0.05,
        )

    def poll_soon(self, name: str) -> None:
        """Run a connection's list job now, unless one is already under way."""
        if self._running.get(name):
            return  # a poll of this connection is under way; its answer will do
        if self._scheduler.running and self._scheduler.get_job(name):
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    async def remove(self, name: str) -> None:
        """Remove a connection's job and wait for its poll in progress."""
        if self._scheduler.get_job(name):
            self._scheduler.remove_job(name)
        running = list(self._running.get(name, ()))
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def stop(self) -> None:
        """Run no more jobs, wait for the polls in progress, then shut the scheduler down."""
        if self._scheduler.running:
            self._scheduler.pause()
        running = [t for tasks in self._running.values() for t in tasks]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def _run(self, name: str, job: PollJob) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"poll-{name}")
        running = self._running.setdefault(name, set())
        running.add(task)
        try:
            await job()
        except asyncio.CancelledError:
            # Shutdown closed the rate budget under a poll waiting for room: it sent nothing
            # and is simply over (the scheduler would report it as a failed job).
            logger.debug("%s: poll cancelled at shutdown", name)
        except Exception:  # the daemon never dies from one bad poll
            logger.exception("%s: poll failed unexpectedly", name)
        finally:
            running.discard(task)
