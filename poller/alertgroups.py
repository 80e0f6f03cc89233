"""Operator problems grouped the way Alertmanager groups alerts.

One outage is one problem, however many messages it touches: an event when it starts, a
reminder every ``repeat_interval`` while it lasts (with the counts so far), and one event
when it resolves. Without this, a webhook receiver that was down for a minute sent 733
dead-letter events to the other notifiers, and people turned operator events off.

Pure bookkeeping: the caller turns the phases into events and commits them. The state is
in memory only: after a restart an ongoing problem is announced once more as started,
which errs on the side of telling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from poller.models import SystemScene
from poller.records import OutboxSummary
from poller.timetext import age_text


class Phase(StrEnum):
    """What an operator event says about its problem."""

    STARTED = "started"
    REMINDER = "reminder"
    RESOLVED = "resolved"


@dataclass
class Problem:
    """One ongoing problem: since when, how often it was seen, when it was last announced."""

    key: str
    started: datetime
    announced: datetime
    count: int = 0
    reminders: int = 0
    causes: set[str] = field(default_factory=set)

    def discriminator(self, phase: Phase) -> str:
        """What makes each announcement of this problem one event (and only one)."""
        suffix = f"#{self.reminders}" if phase is Phase.REMINDER else ""
        return f"{self.started.isoformat()}:{phase.value}{suffix}"

    def lasted(self, now: datetime) -> float:
        """Seconds since the problem started."""
        return (now - self.started).total_seconds()


class AlertGroups:
    """Open problems by key (e.g. ``"notifier:hook"``), with their announcement schedule."""

    def __init__(self, repeat_interval: float) -> None:
        if repeat_interval <= 0:
            raise ValueError("repeat_interval must be positive")
        self.repeat_interval = repeat_interval
        self._open: dict[str, Problem] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._open

    def get(self, key: str) -> Problem | None:
        """The open problem under ``key``, if any."""
        return self._open.get(key)

    def seen(self, key: str, now: datetime, *, cause: str = "", count: int = 1
             ) -> tuple[Problem, Phase | None]:
        """Record ``count`` more occurrences; the phase to announce now, if any.

        The first occurrence starts the problem (announce ``STARTED``); later ones only
        count, unless a reminder is due.
        """
        problem = self._open.get(key)
        if problem is None:
            problem = self._open[key] = Problem(key, now, now, count, causes={cause})
            return problem, Phase.STARTED
        problem.count += count
        problem.causes.add(cause)
        return problem, self._reminder(problem, now)

    def reminders(self, now: datetime) -> list[Problem]:
        """The open problems whose reminder is due (each is then scheduled again)."""
        return [p for p in list(self._open.values()) if self._reminder(p, now) is not None]

    def resolve(self, key: str) -> Problem | None:
        """Close the problem under ``key``; it is returned when one was open (announce
        ``RESOLVED``), else None."""
        return self._open.pop(key, None)

    def _reminder(self, problem: Problem, now: datetime) -> Phase | None:
        if (now - problem.announced).total_seconds() < self.repeat_interval:
            return None
        problem.announced = now
        problem.reminders += 1
        return Phase.REMINDER


def notifier_problem_text(name: str, problem: Problem, phase: Phase, *, now: datetime,
                          summary: OutboxSummary | None, error: str, first: str = "",
                          repeat_interval: float) -> tuple[SystemScene, str]:
    """The scene and the line people read about notifier ``name``'s problem: what
    happened, how many messages it touched, and the command that fixes it.

    ``problem.count`` counts dead letters; ``summary`` is the notifier's outbox now
    (None when it cannot be read).
    """
    requeue = f"poller events --requeue {name}"
    if summary is None:
        waiting = "the outbox cannot be read"
    else:
        waiting = f"{summary.pending} message(s) waiting"
        if summary.oldest_pending is not None:
            waiting += f", oldest {age_text((now - summary.oldest_pending).total_seconds())}"
    dead = problem.count
    if phase is Phase.STARTED and "dead" in problem.causes:
        return SystemScene.NOTIFIER_DEAD_LETTER, (
            f"{first} {waiting}. Further failures of {name} are counted and reminded every "
            f"{age_text(repeat_interval)}, not sent one by one. Fix the cause, then run: "
            f"{requeue}")
    if phase is Phase.STARTED:
        return SystemScene.NOTIFIER_BACKLOG, (
            f"notifier {name} keeps failing: {waiting}; last error: {error}. They are sent "
            "once it works again.")
    if phase is Phase.REMINDER:
        return (SystemScene.NOTIFIER_DEAD_LETTER if dead else SystemScene.NOTIFIER_BACKLOG,
                f"notifier {name} still failing after {age_text(problem.lasted(now))}: "
                f"{dead} message(s) dead-lettered, {waiting}; last error: {error}."
                + (f" Fix the cause, then run: {requeue}" if dead else ""))
    return SystemScene.NOTIFIER_RECOVERED, (
        f"notifier {name} delivers again after {age_text(problem.lasted(now))}; "
        + (f"{dead} message(s) were dead-lettered in the outage: run {requeue} to send them."
           if dead else "nothing was lost."))
