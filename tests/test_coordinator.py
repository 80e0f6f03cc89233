"""Broker errors sorted by the policy table: stop and tell a human once, or retry with a
breaker, one "unreachable" event per outage and one "recovered" when it ends."""

from __future__ import annotations

from datetime import timedelta

import pytest

from poller.coordinator import (
    BREAKER_FAILURES,
    BREAKER_OPEN_SECONDS,
    PROBE_FIRST,
    PROBE_MAX,
    UNREACHABLE_AFTER_SECONDS,
    Coordinator,
    Policy,
    policy_of,
)
from poller.errors import (
    BrokerAnswerTooLarge,
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
)
from poller.events import OrderEvent
from tests.scripted import T0


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("error", "policy"), [
    (BrokerAuthError("no"), Policy.STOP),
    (BrokerRateLimited("slow", retry_after=3), Policy.PAUSE),
    (BrokerUnavailable("down"), Policy.RETRY),
    (BrokerMalformed("html"), Policy.RETRY),
    (BrokerRejected("400"), Policy.RETRY),
    (BrokerNotFound("gone"), Policy.RETRY),
])
def test_policy_table(error: BrokerError, policy: Policy) -> None:
    assert policy_of(error) is policy
    assert Coordinator("cx").concerns_connection(error) is (policy is not Policy.RETRY)


def test_refused_credentials_stop_the_connection_with_one_event() -> None:
    c = Coordinator("cx")
    events = c.failed(BrokerAuthError("key refused"), T0)
    assert [e.scene for e in events] == ["BROKER_AUTH_FAILED"]
    assert c.stopped_reason == "key refused" and c.paused
    assert c.errors == {"auth": 1}


def test_rate_limits_raise_one_event_per_episode() -> None:
    c = Coordinator("cx")
    first = c.failed(BrokerRateLimited("429", retry_after=2.0), T0)
    again = c.failed(BrokerRateLimited("429", retry_after=2.0), T0 + timedelta(seconds=3))
    assert [e.scene for e in first] == ["BROKER_RATE_LIMITED"] and again == []
    assert "paused for 2 s" in first[0].payload["message"]
    assert c.rate_limit_answers == 2
    c.succeeded(T0 + timedelta(seconds=10))
    later = c.failed(BrokerRateLimited("429"), T0 + timedelta(seconds=20))
    assert [e.scene for e in later] == ["BROKER_RATE_LIMITED"]
    assert later[0].id != first[0].id  # a new episode is a new event


def test_an_outage_opens_the_breaker_and_is_announced_once_then_recovers() -> None:
    clock = Clock()
    c = Coordinator("cx", monotonic=clock)
    announced = []
    for n in range(BREAKER_FAILURES + 3):
        now = T0 + timedelta(seconds=n * UNREACHABLE_AFTER_SECONDS / 4)
        announced += c.failed(BrokerUnavailable("timed out"), now)
    assert [e.scene for e in announced] == ["BROKER_UNREACHABLE"]
    assert c.breaker_open() and c.breaker_wait() == pytest.approx(BREAKER_OPEN_SECONDS)
    clock.t += BREAKER_OPEN_SECONDS
    assert not c.breaker_open()  # half-open: the next poll is the trial
    recovered = c.succeeded(T0 + timedelta(hours=1))
    assert [e.scene for e in recovered] == ["BROKER_RECOVERED"]
    assert c.last_success == T0 + timedelta(hours=1)
    assert c.succeeded(T0 + timedelta(hours=2)) == []


def test_a_short_blip_is_not_announced() -> None:
    c = Coordinator("cx")
    assert c.failed(BrokerUnavailable("reset"), T0) == []
    assert c.succeeded(T0 + timedelta(seconds=2)) == []
    assert c.errors == {"unavailable": 1} and not c.paused


def test_per_order_failures_are_counted_without_an_episode() -> None:
    c = Coordinator("cx")
    c.order_failed(BrokerMalformed("bad json"))
    assert c.errors == {"malformed": 1}
    assert c.succeeded(T0) == []


def test_a_stopped_connection_is_probed_with_a_capped_backoff_and_recovers() -> None:
    clock = Clock()
    c = Coordinator("cx", monotonic=clock)
    first = c.failed(BrokerAuthError("401"), T0)
    assert [e.scene for e in first] == ["BROKER_AUTH_FAILED"] and not c.probe_due()
    waits = []
    for _ in range(6):
        start = clock.t
        while not c.probe_due():
            clock.t += 60.0
        waits.append(clock.t - start)
        assert c.failed(BrokerAuthError("401 again"), T0) == []  # one event per episode
    assert waits == [PROBE_FIRST, 600.0, 1200.0, 2400.0, PROBE_MAX, PROBE_MAX]
    c.resume()  # SIGHUP: at once, and the backoff starts over
    assert c.probe_due()
    recovered = c.succeeded(T0 + timedelta(hours=5))
    assert [e.scene for e in recovered] == ["BROKER_RECOVERED"]
    assert "accepts the credentials again" in recovered[0].payload["message"]
    assert c.stopped_reason is None and not c.paused


def test_an_answer_too_large_is_told_once_without_the_breaker() -> None:
    c = Coordinator("cx")
    told = []
    for n in range(BREAKER_FAILURES + 2):
        told += c.failed(BrokerAnswerTooLarge("the answer is larger than 8 MiB"),
                         T0 + timedelta(minutes=n))
    assert [e.scene for e in told] == ["BROKER_ANSWER_TOO_LARGE"]
    assert not c.breaker_open() and c.errors == {"too_large": BREAKER_FAILURES + 2}
    assert policy_of(BrokerAnswerTooLarge("x")) is Policy.TELL


def test_a_lasting_outage_is_reminded_at_the_repeat_interval_with_counts() -> None:
    c = Coordinator("cx", monotonic=Clock(), repeat_interval=3600)
    announced: list[OrderEvent] = []
    for minute in range(150):  # a failed poll a minute for 2.5 h
        announced += c.failed(BrokerUnavailable("timed out"), T0 + timedelta(minutes=minute))
    scenes = [(e.scene, e.payload.get("phase")) for e in announced]
    assert scenes == [("BROKER_UNREACHABLE", "started"), ("BROKER_UNREACHABLE", "reminder"),
                      ("BROKER_UNREACHABLE", "reminder")]
    assert "still failing after 1.1 h" in announced[1].payload["message"]  # since T0
    assert announced[1].payload["count"] > 60
    assert len({e.id for e in announced}) == 3
    assert c.episode is not None and c.episode.category == "unavailable"
    assert c.episode.since == T0 and c.episode.message == "timed out"
    recovered = c.succeeded(T0 + timedelta(hours=3))
    assert [(e.scene, e.payload.get("phase")) for e in recovered] == [
        ("BROKER_RECOVERED", "resolved")]
    assert recovered[0].payload["count"] == 150  # every failed poll of the episode
    assert c.episode is None


def test_a_rate_limit_episode_is_announced_when_it_ends() -> None:
    c = Coordinator("cx")
    c.failed(BrokerRateLimited("429"), T0)
    recovered = c.succeeded(T0 + timedelta(seconds=30))
    assert [e.scene for e in recovered] == ["BROKER_RECOVERED"]
    assert "after BROKER_RATE_LIMITED" in recovered[0].payload["message"]
    assert c.succeeded(T0 + timedelta(seconds=60)) == []
