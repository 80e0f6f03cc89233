"""Grouped operator problems: started once, reminded at the interval, resolved once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from poller.alertgroups import AlertGroups, Phase, notifier_problem_text
from poller.models import SystemScene
from poller.records import OutboxSummary
from poller.timetext import age_text

T0 = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)


def test_one_problem_one_start_reminders_at_the_interval_one_resolve() -> None:
    groups = AlertGroups(repeat_interval=3600)
    phases = []
    for minute in range(150):  # a dead letter every minute for 2.5 h
        problem, phase = groups.seen("notifier:hook", T0 + timedelta(minutes=minute),
                                     cause="dead")
        phases.append(phase)
    assert [p for p in phases if p] == [Phase.STARTED, Phase.REMINDER, Phase.REMINDER]
    assert phases.index(Phase.REMINDER) == 60
    assert problem.count == 150 and problem.reminders == 2
    assert groups.resolve("notifier:hook") is problem
    assert groups.resolve("notifier:hook") is None
    assert "notifier:hook" not in groups


def test_a_reminder_is_due_without_new_occurrences() -> None:
    groups = AlertGroups(repeat_interval=600)
    groups.seen("notifier:hook", T0)
    groups.seen("notifier:mail", T0 + timedelta(minutes=5))
    assert groups.reminders(T0 + timedelta(minutes=9)) == []
    due = groups.reminders(T0 + timedelta(minutes=10))
    assert [p.key for p in due] == ["notifier:hook"]
    assert groups.reminders(T0 + timedelta(minutes=11)) == []  # scheduled again
    assert [p.key for p in groups.reminders(T0 + timedelta(minutes=15))] == ["notifier:mail"]


def test_each_announcement_has_its_own_discriminator() -> None:
    groups = AlertGroups(repeat_interval=60)
    problem, _ = groups.seen("k", T0, cause="backlog", count=0)
    started = problem.discriminator(Phase.STARTED)
    groups.seen("k", T0 + timedelta(seconds=61))
    first = problem.discriminator(Phase.REMINDER)
    groups.seen("k", T0 + timedelta(seconds=122))
    assert len({started, first, problem.discriminator(Phase.REMINDER),
                problem.discriminator(Phase.RESOLVED)}) == 4
    assert problem.causes == {"backlog", ""} and problem.count == 2
    assert problem.lasted(T0 + timedelta(seconds=122)) == 122


def test_a_problem_after_a_resolved_one_starts_afresh() -> None:
    groups = AlertGroups(repeat_interval=60)
    first, _ = groups.seen("k", T0)
    groups.resolve("k")
    second, phase = groups.seen("k", T0 + timedelta(seconds=5))
    assert phase is Phase.STARTED and second is not first
    assert second.discriminator(Phase.STARTED) != first.discriminator(Phase.STARTED)


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AlertGroups(0)


def test_the_lines_people_read_name_counts_and_the_command() -> None:
    groups = AlertGroups(repeat_interval=4 * 3600)
    problem, _ = groups.seen("notifier:hook", T0, cause="dead")
    later = T0 + timedelta(minutes=38)
    summary = OutboxSummary("hook", 30, T0, 1, "HTTP 410", None)
    scene, text = notifier_problem_text("hook", problem, Phase.STARTED, now=later,
                                        summary=summary, error="HTTP 410",
                                        first="notifier hook could not deliver #AB12.",
                                        repeat_interval=4 * 3600)
    assert scene is SystemScene.NOTIFIER_DEAD_LETTER
    assert "30 message(s) waiting, oldest 38 min" in text and "every 4.0 h" in text
    assert text.endswith("poller events --requeue hook")
    problem.count = 412
    scene, text = notifier_problem_text("hook", problem, Phase.REMINDER, now=later,
                                        summary=None, error="HTTP 410", repeat_interval=60)
    assert "412 message(s) dead-lettered, the outbox cannot be read" in text
    scene, text = notifier_problem_text("hook", problem, Phase.RESOLVED, now=later,
                                        summary=summary, error="", repeat_interval=60)
    assert scene is SystemScene.NOTIFIER_RECOVERED
    assert "after 38 min; 412 message(s) were dead-lettered" in text
    assert [age_text(s) for s in (45, 38 * 60, 9000)] == ["45 s", "38 min", "2.5 h"]
