"""Keep one connection's push stream up, and feed what it says into the same pipeline as
the polls.

While the stream is up, the connection's list calls slow to ``reconcile_interval`` (they
catch whatever a stream misses); when it drops, polling returns to full cadence at once and
a list poll runs straight away to catch up. Reconnects back off (capped); refused
credentials or a refused signature stop the stream for the session — one error line, one
operator event through the coordinator, polling goes on — until a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from poller.adapter import BrokerAdapter
from poller.errors import BrokerAuthError, BrokerError
from poller.logsetup import ConnectionLog
from poller.models import utcnow
from poller.pushfeed import PushedOrder, PushStream, is_marker

logger = logging.getLogger(__name__)

#: Seconds between reconnects: doubling from the first, capped (the official Webull SDK
#: waits a fixed 5 s, webull/trade/events/default_retry_policy.py; a cap keeps a long
#: outage from costing a connection attempt every few seconds).
RECONNECT_FIRST = 1.0
RECONNECT_CAP = 60.0
#: A stream that stayed up this long resets the backoff.
STABLE_AFTER = 30.0


@dataclass
class PushState:
    """What ``/healthz``, ``/metrics`` and ``poller status`` show of a stream."""

    state: str = "starting"  # starting, up, down, stopped (auth), off
    since: datetime | None = None
    events: int = 0
    drops: int = 0
    last_error: str = ""
    last_event: datetime | None = None


class PushRunner:
    """Runs one connection's push subscription in a task: connect, read, reconnect.

    :param apply: feeds one update into the connection (``ConnectionPoller.apply_push``).
    :param on_change: called with True when the stream comes up and False when it drops
        (the connection's list cadence follows it).
    :param on_auth_failed: called with the error once, when credentials are refused.
    """

    def __init__(self, adapter: BrokerAdapter, *, apply: Callable[[PushedOrder],
                 Awaitable[None]], on_change: Callable[[bool], None],
                 on_auth_failed: Callable[[BrokerAuthError], Awaitable[None]],
                 log: ConnectionLog | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.adapter = adapter
        self.status = PushState()
        self._apply = apply
        self._on_change = on_change
        self._on_auth_failed = on_auth_failed
        self.log = log or ConnectionLog(logger, {"connection": adapter.name})
        self._mono = monotonic
        self._task: asyncio.Task[None] | None = None
        self._stream: PushStream | None = None
        self._wake = asyncio.Event()

    @property
    def up(self) -> bool:
        """Whether the stream is connected now."""
        return self.status.state == "up"

    def start(self) -> None:
        """Start the subscription task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"push-{self.adapter.name}")

    def retry_now(self) -> None:
        """Reconnect at once (a reload: maybe the key is fixed)."""
        if self.status.state == "stopped":
            self.status.state = "down"
        self._wake.set()

    async def stop(self) -> None:
        """Close the stream and end the task."""
        if self._task is None:
            return
        self._task.cancel()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._set("off", "")

    def _set(self, state: str, error: str) -> None:
        was_up = self.up
        if state != self.status.state:
            self.status.state = state
            self.status.since = utcnow()
        if error:
            self.status.last_error = error
        if self.up != was_up:
            self._on_change(self.up)

    async def _run(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            started = self._mono()
            error = await self._once()
            if isinstance(error, BrokerAuthError):
                self._set("stopped", str(error))
                self.log.error("push stream refused (%s); polling goes on at full cadence; "
                               "fix the key, then `systemctl reload poller`", error)
                await self._on_auth_failed(error)
                self._wake.clear()
                await self._wake.wait()  # until a reload asks again
                delay = RECONNECT_FIRST
                continue
            if self._mono() - started >= STABLE_AFTER:
                delay = RECONNECT_FIRST
            self.status.drops += 1
            self._set("down", str(error) if error else "the stream ended")
            self.log.warning("push stream down (%s); polling at full cadence, reconnecting "
                             "in %.0f s", self.status.last_error, delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            delay = min(delay * 2, RECONNECT_CAP)

    async def _once(self) -> BrokerError | None:
        """One connection: read until it ends; the error that ended it (None: it closed)."""
        stream = self._stream = self.adapter.open_push()
        try:
            async for update in stream.updates():
                if not self.up:
                    self._set("up", "")
                    self.log.info("push stream up; list calls every %g s to reconcile",
                                  self.adapter.config.reconcile_interval)
                if is_marker(update):
                    continue
                self.status.events += 1
                self.status.last_event = utcnow()
                try:
                    await self._apply(update)
                except Exception:  # one bad update must not end the stream
                    self.log.exception("could not apply a pushed update of order %s",
                                       update.order_id or update.client_order_id)
            return None
        except BrokerError as err:
            return err
        finally:
            self._stream = None
            with contextlib.suppress(Exception):
                await stream.aclose()
