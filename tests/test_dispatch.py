"""Delivery through the outbox: isolation, retries, dead letters, ordering, quiet hours."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from poller.dispatch import DeliveryPolicy, Dispatcher
from poller.errors import DeliveryFailed, DeliveryRetryable
from poller.events import OrderEvent, system_event
from poller.logsetup import Redactor
from poller.models import SystemScene
from poller.notifiers import Notifier, NotifierConfig, QuietHours
from poller.records import Batch
from poller.routing import route
from poller.store import Store
from poller.templates import Message

NOW = datetime.now(UTC)


def event(n: int, order: str = "O1", scene: SystemScene = SystemScene.ORDER_STALE
          ) -> OrderEvent:
    """An operator event (its body's first line is ``event N``)."""
    return system_event(scene, broker="tw", order_id=order, detected_at=NOW,
                        discriminator=str(n), message=f"event {n}")


def trade(n: int, order: str = "O1") -> OrderEvent:
    """An order event of ``order`` (body line ``event N`` via the message field)."""
    return OrderEvent(id=f"evt_{order}_{n}", event_type="TRADE", scene="FILLED", timestamp=NOW,
                      broker="tw", account_id="A", order_id=order,
                      payload={"scene_type": "FILLED", "broker": "tw", "order_id": order,
                               "account_id": "A", "detected_at": NOW.isoformat()})


class TradeRecorder(Notifier):
    """Records the ids of the events it is given; fails as scripted."""

    kind: ClassVar[str] = "trades"

    def __init__(self, name: str, script: list[Exception | None]) -> None:
        super().__init__(name, NotifierConfig(kind="trades"))
        self.script = list(script)
        self.ids: list[str] = []

    async def send(self, event: OrderEvent) -> None:
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.ids.append(event.id)


class Recorder(Notifier):
    """A notifier that records what it is given and fails as scripted."""

    kind: ClassVar[str] = "recorder"

    def __init__(self, name: str, config: NotifierConfig | None = None,
                 script: list[Exception | None] | None = None,
                 always: Exception | None = None) -> None:
        super().__init__(name, config or NotifierConfig(kind="recorder"))
        self.received: list[str] = []
        self.messages: list[Message] = []
        self.script = list(script or [])
        self.always = always
        self.accepted = asyncio.Event()

    async def send_message(self, message: Message) -> None:
        outcome = self.script.pop(0) if self.script else self.always
        if outcome is not None:
            raise outcome
        self.messages.append(message)
        self.received.append(message.body.splitlines()[0] if message.body else message.title)
        self.accepted.set()


class Harness:
    def __init__(self, tmp_path: Path, notifiers: list[Notifier],
                 policy: DeliveryPolicy | None = None) -> None:
        self.store = Store.open(tmp_path / "d.db")
        self.notifiers = notifiers
        self.policy = policy or DeliveryPolicy(base=0.01, cap=0.05, idle_wait=0.05)

    async def db(self, fn: Callable[..., object], *args: object, **kw: object) -> object:
        return fn(*args, **kw)

    async def commit(self, batch: Batch) -> list[OrderEvent]:
        return self.store.commit(route(batch, self.notifiers))

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.store, self.notifiers, db=self.db, commit=self.commit,
                          redactor=Redactor(["sekrit-token"]), policy=self.policy,
                          rng=random.Random(1))


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the dispatcher's tasks to make ``predicate`` true (checked every loop turn)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_one_failing_notifier_never_delays_another(tmp_path: Path) -> None:
    down = Recorder("down", always=DeliveryRetryable("HTTP 503"))
    up = Recorder("up")
    h = Harness(tmp_path, [down, up])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[event(i) for i in range(20)]))
        d.wake()
        await until(lambda: len(up.received) == 20)
        assert down.received == []
        await d.stop(0.1)

    asyncio.run(scenario())
    assert up.received == [f"event {i}" for i in range(20)]
    assert h.store.backlog() == {"down": 20}


def test_a_notifier_catches_up_in_order_when_its_service_returns(tmp_path: Path) -> None:
    flaky = TradeRecorder("flaky", script=[DeliveryRetryable("HTTP 503")] * 5)
    h = Harness(tmp_path, [flaky])
    events = [trade(i, order=f"O{i % 3}") for i in range(12)]

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=events))
        d.wake()
        await until(lambda: len(flaky.ids) == 12)
        await d.stop(0.1)
        assert d.stats["flaky"].retried == 5

    asyncio.run(scenario())
    assert sorted(flaky.ids) == sorted(e.id for e in events)
    for order in ("O0", "O1", "O2"):  # each order's events arrive in the order they happened
        mine = [i for i in flaky.ids if i.startswith(f"evt_{order}_")]
        assert mine == [e.id for e in events if e.order_id == order]
    assert all(d.state == "sent" for _, ds in h.store.recent_events() for d in ds)


def test_backoff_is_persisted_in_the_row(tmp_path: Path) -> None:
    slow = Recorder("slow", script=[DeliveryRetryable("HTTP 502", retry_after=600)])
    h = Harness(tmp_path, [slow])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[event(1)]))
        d.wake()
        await until(lambda: d.stats["slow"].retried == 1)
        await d.stop(0.1)

    asyncio.run(scenario())
    due = h.store.next_attempt("slow")
    assert due is not None and due - time.time() > 500  # survives a restart: it is stored
    _, deliveries = h.store.recent_events(1)[0]
    assert (deliveries[0].attempts, deliveries[0].last_error) == (1, "HTTP 502")


def test_permanent_refusal_dead_letters_and_tells_another_notifier(tmp_path: Path) -> None:
    refusing = Recorder("refusing", script=[DeliveryFailed("HTTP 400 bad sekrit-token")])
    other = Recorder("other")
    h = Harness(tmp_path, [refusing, other])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[event(1)]))
        d.wake()
        await until(lambda: len(other.received) == 2)
        await d.stop(0.1)

    asyncio.run(scenario())
    assert other.messages[1].title.startswith("poller: NOTIFIER_DEAD_LETTER")
    assert "could not deliver" in other.messages[1].body
    assert "sekrit-token" not in other.messages[1].body
    assert "**********" in other.messages[1].body
    states = {d.notifier: d.state for _, ds in h.store.recent_events() for d in ds}
    assert states["refusing"] == "dead"
    assert h.store.requeue_dead("refusing") == 1


def test_rows_older_than_the_give_up_age_are_dead_lettered(tmp_path: Path) -> None:
    down = Recorder("down", script=[DeliveryRetryable("HTTP 503")])
    h = Harness(tmp_path, [down], DeliveryPolicy(base=0.01, cap=0.05, idle_wait=0.05,
                                                 give_up_after=0.0))

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[event(1)]))
        d.wake()
        await until(lambda: d.stats["down"].dead == 1)
        await d.stop(0.1)

    asyncio.run(scenario())
    _, deliveries = h.store.recent_events()[0]
    assert deliveries[0].state == "dead" and "gave up" in deliveries[0].last_error


def test_quiet_hours_hold_messages_and_send_one_digest(tmp_path: Path) -> None:
    local = datetime.now(UTC)
    start = (local - timedelta(minutes=1)).time()
    end = (local + timedelta(seconds=2)).time()
    quiet = QuietHours(start=start, end=end, timezone="UTC", break_through=["ORDER_STALE"])
    config = NotifierConfig(kind="recorder", quiet_hours=quiet)
    sleepy = Recorder("sleepy", config)
    h = Harness(tmp_path, [sleepy])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        held = [event(i, scene=SystemScene.BROKER_UNREACHABLE) for i in range(3)]
        await h.commit(Batch(events=[*held, event(9)]))
        d.wake()
        await until(lambda: len(sleepy.messages) == 1)
        assert sleepy.received == ["event 9"]  # break-through scene goes at once
        await until(lambda: len(sleepy.messages) == 2, timeout=15)
        await d.stop(0.1)

    asyncio.run(scenario())
    digest = sleepy.messages[1]
    assert digest.title == "poller: 3 event(s) during quiet hours"
    assert digest.body.count("BROKER_UNREACHABLE") == 3
    assert h.store.backlog() == {}


@pytest.mark.parametrize(("now", "expected"), [
    ("2026-05-20T14:00:00+00:00", None),                    # 22:00 Taipei is 14:00 UTC
    ("2026-05-20T14:30:00+00:00", "2026-05-20T23:00:00+00:00"),
    ("2026-05-20T22:59:00+00:00", "2026-05-20T23:00:00+00:00"),
    ("2026-05-20T23:00:00+00:00", None),
])
def test_quiet_window_across_midnight(now: str, expected: str | None) -> None:
    from datetime import time as clock

    quiet = QuietHours(start=clock(22, 1), end=clock(7, 0), timezone="Asia/Taipei")
    end = quiet.end_of_quiet(datetime.fromisoformat(now))
    assert (end.astimezone(UTC).isoformat() if end else None) == expected
