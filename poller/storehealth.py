"""Whether the store can commit: one episode per outage, for health, status and alerts.

A failed commit (disk full, a lock held too long, an I/O error) is not a traceback and carry
on: it opens an episode — logged once, shown in ``/healthz`` (degraded), the systemd
``STATUS=`` line and the metrics, announced to people once and reminded every
``daemon.alert_repeat_interval`` while it lasts — that closes with the first commit that
works again. Nothing is lost meanwhile: memory changes only after a commit, so
the facts of a failed one are derived again from the next broker answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from poller.errors import StoreError
from poller.models import iso


@dataclass(frozen=True)
class Outage:
    """One episode in which commits failed."""

    since: datetime
    reason: str
    error: str
    failures: int


class StoreHealth:
    """The commit health of one store."""

    def __init__(self) -> None:
        self._since: datetime | None = None
        self._reason = ""
        self._error = ""
        self._failures = 0
        self._announced: datetime | None = None
        #: Reminders sent in the episode under way.
        self.reminders = 0
        #: Failed commits since the daemon started (a Prometheus counter).
        self.failures_total = 0

    @property
    def ok(self) -> bool:
        """True unless the last commit failed."""
        return self._since is None

    @property
    def outage(self) -> Outage | None:
        """The episode under way, if any."""
        if self._since is None:
            return None
        return Outage(self._since, self._reason, self._error, self._failures)

    def failed(self, err: StoreError, now: datetime) -> bool:
        """Record a failed commit; True when it starts a new episode."""
        self.failures_total += 1
        self._failures += 1
        self._reason, self._error = err.reason, str(err)
        if self._since is not None:
            return False
        self._since = self._announced = now
        self.reminders = 0
        return True

    def reminder_due(self, now: datetime, interval: float) -> bool:
        """Whether the episode under way was last announced ``interval`` seconds ago or
        more; True schedules the next reminder an interval from ``now``."""
        if self._announced is None or self._since is None:
            return False
        if (now - self._announced).total_seconds() < interval:
            return False
        self._announced = now
        self.reminders += 1
        return True

    def succeeded(self) -> Outage | None:
        """Record a working commit; returns the episode it ends, if one was under way."""
        ended = self.outage
        self._since, self._failures, self._announced = None, 0, None
        return ended

    def describe(self) -> str:
        """A short phrase for status lines (empty while healthy)."""
        if self._since is None:
            return ""
        return f"store cannot commit since {iso(self._since)} ({self._reason})"
