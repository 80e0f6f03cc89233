"""Store health: one episode per outage, counted, described, ended by the first commit that
works."""

from __future__ import annotations

from datetime import timedelta

from poller.errors import StoreError
from poller.storehealth import StoreHealth
from tests.scripted import T0

FULL = StoreError("cannot write to p.db: no space left", reason="full")


def test_one_episode_per_outage() -> None:
    health = StoreHealth()
    assert health.ok and health.outage is None and health.describe() == ""
    assert health.failed(FULL, T0) is True  # it starts
    assert health.failed(FULL, T0 + timedelta(seconds=5)) is False  # the same outage
    outage = health.outage
    assert outage is not None and (outage.since, outage.reason, outage.failures) == (
        T0, "full", 2)
    assert health.describe() == "store cannot commit since 2026-05-20T03:00:00.000Z (full)"
    ended = health.succeeded()
    assert ended == outage and health.ok and health.succeeded() is None
    assert health.failed(FULL, T0 + timedelta(hours=1)) is True  # a new one
    assert health.failures_total == 3


def test_a_lasting_outage_is_reminded_once_per_interval() -> None:
    health = StoreHealth()
    assert health.reminder_due(T0, 60) is False  # no outage, nothing to remind
    health.failed(FULL, T0)
    assert health.reminder_due(T0 + timedelta(seconds=59), 60) is False
    assert health.reminder_due(T0 + timedelta(seconds=60), 60) is True
    assert health.reminders == 1
    # The next one is an interval after the reminder, not after the start.
    assert health.reminder_due(T0 + timedelta(seconds=100), 60) is False
    assert health.reminder_due(T0 + timedelta(seconds=120), 60) is True
    assert health.reminders == 2
    health.succeeded()
    assert health.reminder_due(T0 + timedelta(hours=1), 60) is False  # it ended
    health.failed(FULL, T0 + timedelta(hours=2))  # a new episode counts from 0 again
    assert health.reminders == 0
    assert health.reminder_due(T0 + timedelta(hours=2, seconds=30), 60) is False
