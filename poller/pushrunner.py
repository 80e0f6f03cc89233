"""Keep one connection's push stream up, and feed what it says into the same pipeline as
the polls.

While the stream is up, the connection's list calls slow to ``reconcile_interval`` (they
catch whatever a stream misses); when it drops, polling returns to full cadence at once and
a list poll runs straight away to catch up. Reconnects back off (capped); refused
credentials or a refused signature stop the stream for the session — one error line, one
operator event through the coordinator, polling goes on — until a reload.

Each stream may state its broker SDK's reconnect numbers; the runner reads these optional
attributes of the object ``adapter.open_push()`` returned, after each connection ends (so a
value the server set during it counts), and uses a default for any it lacks or cannot read:

* ``reconnect_delay`` (seconds, > 0): the wait before the first reconnect after a drop;
  default :data:`RECONNECT_FIRST`. Each further failure in a row doubles it.
* ``reconnect_cap`` (seconds): the longest wait; default :data:`RECONNECT_CAP` (never
  below the first delay: a cap equal to it is the SDKs' fixed delay).
* ``retryable(error) -> bool``: whether the stream's SDK reconnects after ``error`` (a
  ``BrokerError`` other than ``BrokerAuthError``; its ``code`` names the cause); default
  True. When False the stream stops until a reload, as for refused credentials, and
  polling goes on at full cadence. A ``BrokerAuthError`` always stops it.

The attributes are read with ``getattr``: :class:`poller.pushfeed.PushStream` stays the
two-method contract, and a stream that says nothing gets the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from poller.adapter import BrokerAdapter
from poller.errors import BrokerAuthError, BrokerError
from poller.logsetup import ConnectionLog
from poller.models import utcnow
from poller.pushfeed import PushedOrder, PushStream, is_marker

logger = logging.getLogger(__name__)

#: Seconds between reconnects when the stream does not say: doubling from the first,
#: capped (a cap keeps a long outage from costing a connection attempt every few seconds;
#: a stream's own ``reconnect_delay`` / ``reconnect_cap`` replace them).
RECONNECT_FIRST = 1.0
RECONNECT_CAP = 60.0
#: A stream that stayed up this long resets the backoff.
STABLE_AFTER = 30.0
#: Doublings counted at most (the cap is reached long before; keeps the power finite).
MAX_DOUBLINGS = 32


@dataclass(frozen=True)
class ReconnectPolicy:
    """How one stream reconnects: the first wait, the cap, and which errors end it."""

    first: float = RECONNECT_FIRST
    cap: float = RECONNECT_CAP
    retryable: Callable[[BrokerError], bool] = field(default=lambda error: True)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed connections in a row (1: the first)."""
        doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
        return min(math.ldexp(self.first, doublings), max(self.cap, self.first))


def _seconds(value: object, default: float) -> float:
    """A positive finite number of seconds, or ``default`` (absent, not a number, <= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if 0 < value < float("inf") else default


def policy_of(stream: object) -> ReconnectPolicy:
    """The reconnect policy ``stream`` states through its optional attributes (module
    docstring), with the runner's defaults for what it does not state."""
    first = _seconds(getattr(stream, "reconnect_delay", None), RECONNECT_FIRST)
    cap = _seconds(getattr(stream, "reconnect_cap", None), RECONNECT_CAP)
    retryable = getattr(stream, "retryable", None)
    if not callable(retryable):
        return ReconnectPolicy(first, cap)
    return ReconnectPolicy(first, cap, retryable)


async def wait_or_wake(wake: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``wake`` is set (a reload asks to reconnect now)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=seconds)


@dataclass
class PushState:
    """What ``/healthz``, ``/metrics`` and ``poller status`` show of a stream."""

    state: str = "starting"  # starting, up, down, stopped (refused), off
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
    :param on_refused: called with the error once, when the stream ends with an error its
        SDK does not retry (``retryable`` False); None: the error line alone.
    :param wait: waits the given seconds or until the event is set (tests pass one that
        records the delay and returns at once).
    """

    def __init__(self, adapter: BrokerAdapter, *, apply: Callable[[PushedOrder],
                 Awaitable[None]], on_change: Callable[[bool], None],
                 on_auth_failed: Callable[[BrokerAuthError], Awaitable[None]],
                 on_refused: Callable[[BrokerError], Awaitable[None]] | None = None,
                 log: ConnectionLog | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wait: Callable[[asyncio.Event, float], Awaitable[None]] = wait_or_wake,
                 ) -> None:
        self.adapter = adapter
        self.status = PushState()
        self._apply = apply
        self._on_change = on_change
        self._on_auth_failed = on_auth_failed
        self._on_refused = on_refused
        self.log = log or ConnectionLog(logger, {"connection": adapter.name})
        self._mono = monotonic
        self._wait = wait
        self._task: asyncio.Task[None] | None = None
        self._stream: PushStream | None = None
        self._wake = asyncio.Event()
        #: The policy of the last connection and the wait chosen after it (None: none yet).
        self.policy = ReconnectPolicy()
        self.next_delay: float | None = None

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
            self._set("down", "")  # through _set: ``since`` says when it was asked again
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
        failures = 0  # failed connections in a row
        while True:
            started = self._mono()
            error = await self._once()
            if isinstance(error, BrokerAuthError):
                await self._stop_until_reload(error, "push stream refused (%s); polling goes "
                                              "on at full cadence; fix the key, then "
                                              "`systemctl reload poller`")
                failures = 0
                continue
            if error is not None and not self._retryable(error):
                await self._stop_until_reload(error, "push stream ended with an error its "
                                              "SDK does not retry (%s); polling goes on at "
                                              "full cadence; `systemctl reload poller` "
                                              "tries again")
                failures = 0
                continue
            if self._mono() - started >= STABLE_AFTER:
                failures = 0
            failures += 1
            delay = self.next_delay = self.policy.delay(failures)
            self.status.drops += 1
            self._set("down", str(error) if error else "the stream ended")
            self.log.warning("push stream down (%s); polling at full cadence, reconnecting "
                             "in %g s", self.status.last_error, delay)
            self._wake.clear()
            await self._wait(self._wake, delay)

    def _retryable(self, error: BrokerError) -> bool:
        """The stream's ``retryable`` answer; a stream whose check fails is retried."""
        try:
            return bool(self.policy.retryable(error))
        except Exception:
            self.log.exception("the push stream's retryable() failed; reconnecting")
            return True

    async def _stop_until_reload(self, error: BrokerError, message: str) -> None:
        """Stop the stream until :meth:`retry_now`: one error line, one callback."""
        # Cleared first: a reload while the callback commits its event must still count.
        self._wake.clear()
        self._set("stopped", str(error))
        self.log.error(message, error)
        if isinstance(error, BrokerAuthError):
            await self._on_auth_failed(error)
        elif self._on_refused is not None:
            await self._on_refused(error)
        await self._wake.wait()  # until a reload asks again

    async def _once(self) -> BrokerError | None:
        """One connection: read until it ends; the error that ended it (None: it closed)."""
        stream = self._stream = self.adapter.open_push()
        self.policy = ReconnectPolicy()
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
            # Read now: a server may have changed the delay during the connection.
            self.policy = policy_of(stream)
            self._stream = None
            with contextlib.suppress(Exception):
                await stream.aclose()
