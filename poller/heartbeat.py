"""The dead-man's switch: pings a Healthchecks-style URL while the daemon is healthy.

The protocol is Healthchecks.io's: ``URL/start`` once startup succeeded, ``URL`` after
healthy cycles (at most every ``daemon.heartbeat_interval`` seconds), and a POST to
``URL/fail`` with a short plain-text reason when a connection stops or the store cannot
commit — once per problem, not at every tick. Healthy means: every enabled connection
completed a successful list poll since the last success ping, none is stopped, and the last
commit worked. A wedged daemon (no successful polls, or a main loop that no longer ticks)
therefore sends nothing, and the service alerts on the missing ping by itself. A clean stop
sends nothing either: under systemd a planned stop or restart must not page anyone.

The switch never stands in the daemon's way: :meth:`Heartbeat.tick` only starts a request
in the background (none while one is still in flight), each request has an overall
deadline, and a failure is only logged — one WARNING per episode of failures, not per ping.
The URL is a secret (its path identifies the check): no log line or request body names it,
and it is registered with the redactor and scrubbed from httpx's own log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from aiolimiter import AsyncLimiter

from poller.httpclient import build_client
from poller.logsetup import LogScrubber, Redactor, url_secrets
from poller.settings import DaemonSettings

logger = logging.getLogger(__name__)

#: Seconds one ping may take in all (connect, send, read the answer).
TIMEOUT = 10.0
#: The longest ``/fail`` body sent: Healthchecks keeps the body as the ping's log entry, and
#: a reason is one or two lines.
MAX_BODY = 1000
#: A soft limit on ``/fail`` pings (a store that fails and recovers at every tick must not
#: page every five seconds): a leaky bucket of this many, drained one every
#: ``FAIL_PERIOD / FAIL_BURST`` seconds; a problem held back is sent later if it lasts.
FAIL_BURST = 3
FAIL_PERIOD = 600.0
#: Loggers that print request URLs (the URL's path is a secret).
URL_LOGGERS = ("httpx", "httpcore")


class ConnectionView(Protocol):
    """What the switch reads of one connection (:class:`poller.tracker.Tracker` has it)."""

    @property
    def stopped_reason(self) -> str | None: ...
    @property
    def last_success(self) -> datetime | None: ...


class StoreView(Protocol):
    """What the switch reads of the store's health (:class:`poller.storehealth.StoreHealth`)."""

    @property
    def ok(self) -> bool: ...
    def describe(self) -> str: ...


class DaemonView(Protocol):
    """What the switch reads of the running daemon (:class:`poller.app.App` has it all)."""

    @property
    def trackers(self) -> Mapping[str, ConnectionView]: ...
    @property
    def store_health(self) -> StoreView: ...


def ping_url(url: str, suffix: str = "") -> str:
    """``url`` with ``suffix`` (``/start``, ``/fail``) appended to its path, query kept
    (a slug URL may end in ``?create=1``)."""
    if not suffix:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # unreadable (say "http://[::1"): the request will say it fails
        return url + suffix
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def problems_of(view: DaemonView) -> dict[str, str]:
    """The problems that make the daemon unhealthy now: a key per problem (what "once per
    problem" counts), and the line that describes it."""
    found: dict[str, str] = {}
    for name, connection in sorted(view.trackers.items()):
        if connection.stopped_reason is not None:
            found[f"connection:{name}"] = (f"connection {name} stopped: "
                                           f"{connection.stopped_reason}")
    if not view.store_health.ok:
        found["store"] = view.store_health.describe() or "the store cannot commit"
    return found


@dataclass(frozen=True)
class Ping:
    """One request to the switch: which kind, where, and the body of a ``/fail``."""

    kind: str  # "start", "success" or "fail"
    url: str
    body: str = ""


class Heartbeat:
    """Pings the dead-man's switch at ``url`` from the daemon's main loop.

    :param view: the running daemon (its connections and its store's health).
    :param interval: seconds between success pings, at least.
    :param redactor: the app's redactor; the URL is added to it, and ``/fail`` bodies pass
        through it.
    :param client: the switch's own HTTP client (built here when not given).
    :param clock: monotonic seconds (tests drive their own).
    """

    def __init__(self, url: str, *, view: DaemonView, interval: float, redactor: Redactor,
                 client: httpx.AsyncClient | None = None, timeout: float = TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.view = view
        self.interval = interval
        self.redactor = redactor
        self.timeout = timeout
        self.client = client or build_client("", timeout=timeout, connections=1)
        self._clock = clock
        redactor.add([url])
        self._scrubber = LogScrubber([url, *url_secrets(url)], URL_LOGGERS)
        self._scrubber.install()
        #: Where the pings go, as log lines may say it (the host is no secret).
        try:
            self.where = urlsplit(url).hostname or "the configured host"
        except ValueError:
            self.where = "the configured host"
        #: Each connection's last successful poll as of the last success ping.
        self._seen: dict[str, datetime | None] = {}
        self._last_success_ping = -float("inf")
        self._reported: set[str] = set()
        self._quiet_until = -float("inf")
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._fail_limiter: AsyncLimiter | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, daemon: DaemonSettings, view: DaemonView,
                      redactor: Redactor) -> Heartbeat | None:
        """The switch ``daemon.heartbeat_url`` asks for, or None when there is none."""
        if daemon.heartbeat_url is None:
            return None
        return cls(daemon.heartbeat_url.get_secret_value(), view=view,
                   interval=daemon.heartbeat_interval, redactor=redactor)

    # -- what the daemon calls -----------------------------------------------------------

    def start(self) -> asyncio.Task[None] | None:
        """Startup succeeded: ping ``URL/start`` (in the background; returns the request's
        task, which callers need not await)."""
        # Made inside the running loop: an AsyncLimiter belongs to one loop.
        self._fail_limiter = AsyncLimiter(FAIL_BURST, FAIL_PERIOD)
        self._seen = self._successes()
        self._last_success_ping = self._clock()
        return self._launch(Ping("start", ping_url(self.url, "/start")), self._noop)

    def tick(self) -> asyncio.Task[None] | None:
        """One cycle of the main loop: start the ping this moment calls for, if any.

        Never waits for the network: the request runs in the background, and while one is
        still in flight nothing else is started. Returns the request's task (or None).
        """
        if self._closed or (self._task is not None and not self._task.done()):
            return None
        now = self._clock()
        if now < self._quiet_until:
            return None  # the last ping failed: not again before the interval is over
        problems = problems_of(self.view)
        # A problem that went away may come back later: then it is a new one.
        self._reported &= set(problems)
        new = set(problems) - self._reported
        if new:
            return self._fail(problems, new)
        if problems:
            return None  # reported already; the service shows the check down until it clears
        successes = self._successes()
        if now - self._last_success_ping < self.interval or not self._healthy(successes):
            return None
        self._last_success_ping = now

        def taken() -> None:
            self._seen = successes

        return self._launch(Ping("success", self.url), taken)

    async def aclose(self) -> None:
        """Stop: drop a ping still in flight (a clean stop sends nothing), close the client."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()
        self._scrubber.remove()

    # -- deciding ------------------------------------------------------------------------

    def _successes(self) -> dict[str, datetime | None]:
        return {name: c.last_success for name, c in self.view.trackers.items()}

    def _healthy(self, successes: dict[str, datetime | None]) -> bool:
        """Every connection polled successfully since the last success ping (the problems,
        stopped connections and a failing store, were ruled out before)."""
        return all(when is not None and when != self._seen.get(name)
                   for name, when in successes.items())

    def _fail(self, problems: dict[str, str], new: set[str]) -> asyncio.Task[None] | None:
        limiter = self._fail_limiter
        if limiter is not None and not limiter.has_capacity():
            logger.debug("heartbeat: /fail held back by its soft limit; sent later if the "
                         "problem lasts")
            return None
        lines = [self.redactor(line) for line in problems.values()]
        body = "poller is unhealthy:\n" + "\n".join(lines)
        if len(body) > MAX_BODY:
            body = body[:MAX_BODY - 1] + "…"

        def taken() -> None:
            self._reported |= new

        return self._launch(Ping("fail", ping_url(self.url, "/fail"), body), taken,
                            limiter=limiter)

    @staticmethod
    def _noop() -> None:
        return None

    # -- sending -------------------------------------------------------------------------

    def _launch(self, ping: Ping, on_taken: Callable[[], None], *,
                limiter: AsyncLimiter | None = None) -> asyncio.Task[None]:
        async def run() -> None:
            if limiter is not None:
                await limiter.acquire()  # at once: tick() saw it has capacity
            await self._send(ping, on_taken)

        self._task = asyncio.get_running_loop().create_task(run(), name="heartbeat")
        return self._task

    async def _send(self, ping: Ping, on_taken: Callable[[], None]) -> None:
        problem = await self._request(ping)
        if problem is None:
            on_taken()
            if self._failing:
                self._failing = False
                logger.info("heartbeat: the dead-man's switch at %s takes pings again",
                            self.where)
            return
        self._quiet_until = self._clock() + self.interval
        if self._failing:
            logger.debug("heartbeat: %s ping failed again (%s)", ping.kind, problem)
            return
        self._failing = True
        logger.warning("heartbeat: the dead-man's switch at %s did not take the %s ping: %s; "
                       "poller carries on and tries again (logged once until it works)",
                       self.where, ping.kind, problem)

    async def _request(self, ping: Ping) -> str | None:
        """Send one ping; None when the service took it, else what went wrong (naming
        neither the URL nor anything the service answered: it may echo the path)."""
        try:
            if ping.kind == "fail":
                request = self.client.build_request(
                    "POST", ping.url, content=ping.body.encode(),
                    headers={"Content-Type": "text/plain; charset=utf-8"})
            else:
                request = self.client.build_request("GET", ping.url)
            async with asyncio.timeout(self.timeout):
                response = await self.client.send(request)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as err:
            # Only the class name: httpx's message holds the URL.
            return f"request failed ({type(err).__name__})"
        if not 200 <= response.status_code < 300:
            return f"HTTP {response.status_code}"
        return None
