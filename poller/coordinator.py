"""Sort one connection's broker errors: stop and tell a human, or retry (design.md §4).

As Home Assistant's update coordinator sorts an update's failure into "reauthenticate" or
"retry later", :class:`Coordinator` decides for every failed poll what happens next, by the
error's type (see :data:`POLICY`): refused credentials stop the connection with one operator
event; a rate-limit answer (its limit groups already paused by the adapter) raises one event
per episode; anything else is retried, with a circuit breaker after repeated failures and one
"unreachable" event once the outage lasted, then one "recovered" event when a poll succeeds.

The coordinator does no I/O: it returns the operator events, and the caller commits them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from poller.errors import BrokerAnswerTooLarge, BrokerAuthError, BrokerError, BrokerRateLimited
from poller.events import OrderEvent, system_event
from poller.logsetup import ConnectionLog
from poller.models import SystemScene, iso, utcnow

logger = logging.getLogger(__name__)

#: Consecutive failed polls before the circuit opens, and how long it stays open.
BREAKER_FAILURES = 5
BREAKER_OPEN_SECONDS = 60.0
#: A connection stopped for refused credentials is tried again (one list call) after this
#: long, then twice as long each time it is still refused, up to PROBE_MAX: a 401 can be a
#: broker's passing hiccup, and a key can be re-enabled without poller being told.
PROBE_FIRST = 300.0
PROBE_MAX = 3600.0
#: Consecutive failed polls, and seconds of failure, before "unreachable" is announced.
UNREACHABLE_AFTER_FAILURES = 5
UNREACHABLE_AFTER_SECONDS = 60.0


class Policy(Enum):
    """What a failed poll means for the connection."""

    STOP = "stop"  # needs a human: stop polling, tell them once
    PAUSE = "pause"  # the broker asked us to slow down: already paused, tell them once
    RETRY = "retry"  # try again at the next poll; a long outage is announced once
    TELL = "tell"  # a limit a person set was hit: tell them once, keep trying, no breaker


#: The error table, most specific first. Refused credentials are the one failure that no
#: retry can fix; a list call the broker refuses on its merits is retried like an outage
#: (it counts towards the breaker and the "unreachable" announcement).
POLICY: tuple[tuple[type[BrokerError], Policy], ...] = (
    (BrokerAuthError, Policy.STOP),
    (BrokerAnswerTooLarge, Policy.TELL),
    (BrokerRateLimited, Policy.PAUSE),
    (BrokerError, Policy.RETRY),
)


def policy_of(err: BrokerError) -> Policy:
    """The row of :data:`POLICY` that ``err`` falls under."""
    return next(policy for cls, policy in POLICY if isinstance(err, cls))


@dataclass(frozen=True)
class Episode:
    """A connection's current run of failed polls: what kind, since when, the last error
    (an adapter's message: translated at its edge, no secrets) and how many failed."""

    category: str
    since: datetime
    message: str
    failures: int


class Coordinator:
    """The error state of one connection: counters, episodes, breaker, stopped reason.

    An announced problem (credentials refused, rate-limited, unreachable, answers too
    large) is reminded every ``repeat_interval`` seconds while it lasts, with the count of
    failed polls, and announced once more when it resolves.
    """

    def __init__(self, name: str, *, log: ConnectionLog | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 repeat_interval: float = 4 * 3600.0) -> None:
        self.name = name
        self.repeat_interval = repeat_interval
        #: The episode under way (None while polls succeed), for health and status.
        self.episode: Episode | None = None
        self._announced: tuple[SystemScene, datetime, str] | None = None
        self._reminders = 0
        self.log = log or ConnectionLog(logger, {"connection": name})
        self._mono = monotonic
        #: Why polling stopped (credentials refused), or None while it runs.
        self.stopped_reason: str | None = None
        #: Failed polls by error category, and rate-limit answers received.
        self.errors: dict[str, int] = {}
        self.rate_limit_answers = 0
        #: When a list call last succeeded.
        self.last_success: datetime | None = None
        self._episode: dict[str, datetime] = {}
        self._failures = 0
        self._unreachable_announced = False
        self._breaker_until = 0.0
        self._probe_at = 0.0
        self._probe_wait = PROBE_FIRST

    @property
    def paused(self) -> bool:
        """True while the connection is stopped or its circuit is open."""
        return self.stopped_reason is not None or self.breaker_open()

    def breaker_open(self) -> bool:
        """True while a connection that kept failing is left alone for a while."""
        if not self._breaker_until:
            return False
        if self._mono() < self._breaker_until:
            return True
        self._breaker_until = 0.0  # half-open: the next poll is the trial
        return False

    def probe_due(self) -> bool:
        """Whether a stopped connection may try its credentials again now."""
        return self.stopped_reason is not None and self._mono() >= self._probe_at

    def resume(self) -> None:
        """Try a stopped connection again at its next poll (SIGHUP: maybe the key is fixed)."""
        if self.stopped_reason is not None:
            self.log.info("reload: trying the refused credentials again")
            self._probe_at = 0.0
            self._probe_wait = PROBE_FIRST

    def breaker_wait(self) -> float | None:
        """Seconds until the circuit closes again (None when it is closed)."""
        if not self.breaker_open():
            return None
        return max(0.0, self._breaker_until - self._mono())

    def concerns_connection(self, err: BrokerError) -> bool:
        """Whether a per-order poll's failure is about the whole connection.

        Refused credentials and rate limits are; an outage or an unreadable answer for one
        order is only that order's problem (it is polled again soon).
        """
        return policy_of(err) is not Policy.RETRY

    def order_failed(self, err: BrokerError) -> None:
        """Count a per-order failure that does not concern the connection."""
        self.errors[err.category] = self.errors.get(err.category, 0) + 1

    def failed(self, err: BrokerError, now: datetime | None = None) -> list[OrderEvent]:
        """Sort a failed poll; returns the operator events to commit (often none)."""
        now = now or utcnow()
        category = err.category
        self.errors[category] = self.errors.get(category, 0) + 1
        policy = policy_of(err)
        events = self._sorted(err, category, policy, now)
        first = min(self._episode.values(), default=now)
        self.episode = Episode(category, first, str(err), self._failures or 1)
        for event in events:
            event.payload["phase"], event.payload["count"] = "started", self.episode.failures
            self._announced = (SystemScene(event.scene), now, event.payload["message"])
            self._reminders = 0
        if not events:
            events = self._reminder(err, first, now)
        return events

    def _reminder(self, err: BrokerError, first: datetime, now: datetime
                  ) -> list[OrderEvent]:
        """A reminder of the announced problem, when the repeat interval has passed."""
        if self._announced is None:
            return []
        scene, at, _ = self._announced
        if (now - at).total_seconds() < self.repeat_interval:
            return []
        self._reminders += 1
        self._announced = (scene, now, self._announced[2])
        failures = self._failures or sum(self.errors.values())
        hours = (now - first).total_seconds() / 3600
        self.log.warning("still failing after %.1f h (%s): %s", hours, scene.value, err)
        return [system_event(
            scene, broker=self.name, detected_at=now, phase="reminder", count=failures,
            discriminator=f"{iso(first)}#reminder{self._reminders}",
            message=f"{self.name}: still failing after {hours:.1f} h (since {iso(first)}, "
                    f"{failures} failed poll(s)); last error: {err}")]

    def _sorted(self, err: BrokerError, category: str, policy: Policy, now: datetime
                ) -> list[OrderEvent]:
        if policy is Policy.TELL:
            return self._tell(err, category, now)
        self._failures += 1
        if policy is Policy.PAUSE:
            self.rate_limit_answers += 1
        if self._failures >= BREAKER_FAILURES and policy is not Policy.STOP:
            self._breaker_until = self._mono() + BREAKER_OPEN_SECONDS
            self.log.warning("%d failed polls in a row; pausing this connection for %g s",
                             self._failures, BREAKER_OPEN_SECONDS)
        if policy is Policy.STOP:
            return self._stop(err, now)
        if policy is Policy.PAUSE:
            return self._rate_limited(err, now)
        return self._retry(err, category, now)

    def _stop(self, err: BrokerError, now: datetime) -> list[OrderEvent]:
        again = self.stopped_reason is not None
        self.stopped_reason = str(err)
        self._probe_at = self._mono() + self._probe_wait
        wait, self._probe_wait = self._probe_wait, min(self._probe_wait * 2, PROBE_MAX)
        if again:
            self.log.info("credentials still refused; trying again in %g s: %s", wait, err)
            return []
        self.log.error("credentials refused; polling of this connection stops (tried again "
                       "in %g s, or at once after a reload): %s", wait, err)
        return [system_event(
            SystemScene.BROKER_AUTH_FAILED, broker=self.name, detected_at=now,
            discriminator=self._episode_start("auth", now),
            message=f"{self.name}: the broker refused the credentials ({err}); polling of "
                    "this connection has stopped. Fix the key, then `systemctl reload poller` "
                    "(it is also tried again by itself, at most hourly)",
        )]

    def _rate_limited(self, err: BrokerError, now: datetime) -> list[OrderEvent]:
        retry_after = err.retry_after if isinstance(err, BrokerRateLimited) else None
        pause = f"; paused for {retry_after:g} s" if retry_after else ""
        if "rate_limited" in self._episode:
            self.log.info("still rate-limited: %s", err)
            return []
        self.log.error("the broker rate-limited us%s (this should not happen: check other "
                       "programs using this key): %s", pause, err)
        return [system_event(
            SystemScene.BROKER_RATE_LIMITED, broker=self.name, detected_at=now,
            discriminator=self._episode_start("rate_limited", now),
            message=f"{self.name}: rate-limited by the broker{pause}: {err}",
        )]

    def _tell(self, err: BrokerError, category: str, now: datetime) -> list[OrderEvent]:
        if category in self._episode:
            self.log.debug("still %s: %s", category, err)
            return []
        self.log.error("%s", err)
        return [system_event(
            SystemScene.BROKER_ANSWER_TOO_LARGE, broker=self.name, detected_at=now,
            discriminator=self._episode_start(category, now),
            message=f"{self.name}: {err}; this connection's list calls fail until then")]

    def _retry(self, err: BrokerError, category: str, now: datetime) -> list[OrderEvent]:
        if category not in self._episode:
            self._episode_start(category, now)
            self.log.warning("poll failed (%s): %s", category, err)
        else:
            self.log.debug("poll failed again (%s): %s", category, err)
        first = min(self._episode.values())
        if (self._unreachable_announced or self._failures < UNREACHABLE_AFTER_FAILURES
                or (now - first).total_seconds() < UNREACHABLE_AFTER_SECONDS):
            return []
        self._unreachable_announced = True
        self.log.error("broker unreachable since %s (%d failed polls)", iso(first),
                       self._failures)
        return [system_event(
            SystemScene.BROKER_UNREACHABLE, broker=self.name, detected_at=now,
            discriminator=iso(first) or "",
            message=f"{self.name}: no successful poll since {iso(first)} "
                    f"({self._failures} failures, last: {err})",
        )]

    def succeeded(self, now: datetime) -> list[OrderEvent]:
        """A list call worked: close the episode; returns the "recovered" event if one is due."""
        self.last_success = now
        events: list[OrderEvent] = []
        if self.stopped_reason is not None:
            since = self._episode.get("auth", now)
            events.append(system_event(
                SystemScene.BROKER_RECOVERED, broker=self.name, detected_at=now,
                discriminator="auth:" + (iso(since) or ""),
                message=f"{self.name}: the broker accepts the credentials again (refused "
                        f"since {iso(since)}); polling goes on"))
            self.log.info("credentials accepted again; polling goes on")
            self.stopped_reason = None
            self._probe_wait = PROBE_FIRST
        elif self._unreachable_announced:
            first = min(self._episode.values())
            events.append(system_event(
                SystemScene.BROKER_RECOVERED, broker=self.name, detected_at=now,
                discriminator=iso(first) or "",
                message=f"{self.name}: polling works again (failing since {iso(first)})",
            ))
            self.log.info("broker reachable again")
        elif self._announced is not None:
            # Rate-limited or too-large answers: announced, so their end is announced too.
            scene = self._announced[0]
            first = min(self._episode.values(), default=now)
            events.append(system_event(
                SystemScene.BROKER_RECOVERED, broker=self.name, detected_at=now,
                discriminator=f"{scene.value}:{iso(first)}",
                message=f"{self.name}: polling works again after {scene.value} (since "
                        f"{iso(first)})"))
            self.log.info("poll succeeded again")
        elif self._episode:
            self.log.info("poll succeeded again")
        for event in events:
            # Like the started and reminder events: how many polls failed in the episode.
            event.payload["phase"] = "resolved"
            event.payload["count"] = self._failures or (
                self.episode.failures if self.episode is not None else 1)
        self._announced = None
        self.episode = None
        self._episode.clear()
        self._failures = 0
        self._unreachable_announced = False
        return events

    def _episode_start(self, category: str, now: datetime) -> str:
        start = self._episode.setdefault(category, now)
        return iso(start) or ""
