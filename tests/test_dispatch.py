"""Delivery through the outbox: isolation, retries, dead letters, ordering, quiet hours."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from poller.dispatch import DeliveryPolicy, Dispatcher
from poller.errors import DeliveryFailed, DeliveryRetryable
from poller.events import EventPayload, OrderEvent, system_event
from poller.logcollapse import RepeatCollapser
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


# --- one outage, one problem -------------------------------------------------------------

def scenes_of(recorder: Recorder) -> list[str]:
    return [m.title.removeprefix("poller: ").split(" ")[0] for m in recorder.messages]


def test_an_outage_is_one_started_reminders_and_one_resolved(tmp_path: Path) -> None:
    """The issue's case: a receiver down with a short give-up age dead-letters every queued
    message; the other notifier hears of it once, a reminder per repeat interval, and once
    when it delivers again — with the count. The log stays a handful of lines."""
    down = Recorder("down", always=DeliveryRetryable("HTTP 503 from sekrit-token host"))
    other = Recorder("other", NotifierConfig(kind="recorder", event_types=["SYSTEM"]))
    policy = DeliveryPolicy(base=0.01, cap=0.02, idle_wait=0.05, give_up_after=0.3,
                            repeat_interval=0.5, backlog_alert_after=0.1)
    h = Harness(tmp_path, [down, other], policy)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    RepeatCollapser(60).attach(handler)
    log = logging.getLogger("poller.dispatch")
    log.addHandler(handler)
    started = time.monotonic()

    async def scenario() -> float:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[trade(i, order=f"O{i}") for i in range(300)]))
        d.wake()
        await until(lambda: d.stats["down"].dead == 300, timeout=30)
        await until(lambda: any("still failing" in m.body for m in other.messages),
                    timeout=10)
        outage = time.monotonic() - started
        down.always = None  # the receiver is back
        await h.commit(Batch(events=[trade(999, order="O999")]))
        d.wake()
        await until(lambda: any("delivers again" in m.body for m in other.messages))
        await d.stop(0.1)
        return outage

    try:
        outage = asyncio.run(scenario())
    finally:
        log.removeHandler(handler)
    scenes = scenes_of(other)
    starts = [m for m in other.messages if "Further failures" in m.body
              or "keeps failing" in m.body]
    reminders = [m for m in other.messages if "still failing" in m.body]
    resolved = [m for m in other.messages if "delivers again" in m.body]
    assert len(starts) == 1 and len(resolved) == 1
    assert 1 <= len(reminders) <= outage / policy.repeat_interval + 1
    assert len(other.messages) == len(starts) + len(reminders) + len(resolved), scenes
    assert "300 message(s) were dead-lettered" in resolved[0].body
    assert "poller events --requeue down" in resolved[0].body
    assert all("sekrit-token" not in m.body for m in other.messages)
    assert len(down.messages) == 1  # the new event, once the receiver is back
    # The log: one warning when failing starts, one error for the first dead letter, a
    # line per announcement, and the repeated INFO lines collapsed (bound: 5 + reminders).
    lines = out.getvalue().splitlines()
    assert len(lines) <= 5 + len(reminders), lines
    assert "sekrit-token" not in out.getvalue()


def test_a_backlog_older_than_the_threshold_is_a_problem_before_any_dead_letter(
        tmp_path: Path) -> None:
    down = Recorder("down", always=DeliveryRetryable("HTTP 503"))
    other = Recorder("other", NotifierConfig(kind="recorder", event_types=["SYSTEM"]))
    policy = DeliveryPolicy(base=0.01, cap=0.02, idle_wait=0.05, backlog_alert_after=0.2)
    h = Harness(tmp_path, [down, other], policy)

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[trade(i, order=f"O{i}") for i in range(5)]))
        d.wake()
        await until(lambda: len(other.messages) >= 1)
        down.always = None
        await until(lambda: len(other.messages) >= 2)
        await d.stop(0.1)

    asyncio.run(scenario())
    first, last = other.messages[0], other.messages[-1]
    assert first.title.startswith("poller: NOTIFIER_BACKLOG")
    assert "5 message(s) waiting, oldest" in first.body
    assert last.title.startswith("poller: NOTIFIER_RECOVERED")
    assert "nothing was lost" in last.body
    assert len(other.messages) == 2


# --- fill coalescing ---------------------------------------------------------------------

def fill_event(n: int, total: int, order: str = "ALGO") -> OrderEvent:
    """Partial fill ``n`` of ``total`` (of 10 shares each) of one order; the last is final."""
    scene = "FINAL_FILLED" if n == total else "FILLED"
    payload: EventPayload = {
        "scene_type": scene, "broker": "tw", "order_id": order, "account_id": "A",
        "symbol": "2330", "side": "BUY", "qty": str(10 * total), "filled_qty": str(10 * n),
        "filled_price": "600", "last_fill_qty": "10", "last_fill_price": "600",
        "order_status": "FILLED" if n == total else "PARTIALLY_FILLED",
        "detected_at": NOW.isoformat()}
    return OrderEvent(id=f"evt_{order}_{n}", event_type="TRADE", scene=scene, timestamp=NOW,
                      broker="tw", account_id="A", order_id=order, payload=payload)


class EventRecorder(Notifier):
    """Records the events it is asked to send (a webhook-like notifier)."""

    kind: ClassVar[str] = "events"

    def __init__(self, name: str, config: NotifierConfig) -> None:
        super().__init__(name, config)
        self.events: list[OrderEvent] = []
        self.messages: list[Message] = []

    async def send(self, event: OrderEvent) -> None:
        self.events.append(event)
        self.messages.append(self.templates.render(event))


def test_200_fills_in_5_s_are_a_handful_of_chat_messages_and_all_200_webhooks(
        tmp_path: Path) -> None:
    chat = EventRecorder("chat", NotifierConfig(kind="events", coalesce_fills=1.0))
    hook = EventRecorder("hook", NotifierConfig(kind="events"))  # default: off
    h = Harness(tmp_path, [chat, hook])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        for n in range(1, 201):  # the algo: 200 fills over 5 s (a producer's pace)
            await h.commit(Batch(events=[fill_event(n, 200)]))
            d.wake()
            await asyncio.sleep(0.025)
        await until(lambda: h.store.backlog() == {}, timeout=20)
        await d.stop(0.1)

    asyncio.run(scenario())
    assert len(hook.events) == 200 and [e.scene for e in hook.events][-1] == "FINAL_FILLED"
    assert 2 <= len(chat.events) <= 12, len(chat.events)
    final = chat.messages[-1]
    assert chat.events[-1].scene == "FINAL_FILLED"
    assert "filled 2 000 / 2 000 (100 %), avg 600" in final.body
    # Every fill is accounted for exactly once across the chat messages.
    assert sum(e.payload.get("fills", 1) for e in chat.events) == 200
    assert any("fills in one message" in m.body for m in chat.messages[:-1])
    states = {d.state for _, ds in h.store.recent_events(limit=500) for d in ds}
    assert states == {"sent"}


def test_another_event_of_the_order_sends_its_gathered_fills_first(tmp_path: Path) -> None:
    chat = EventRecorder("chat", NotifierConfig(kind="events", coalesce_fills=60.0))
    h = Harness(tmp_path, [chat])
    cancel = replace(fill_event(3, 10), id="evt_cancel", scene="CANCEL_SUCCESS",
                     payload={**fill_event(3, 10).payload, "scene_type": "CANCEL_SUCCESS"})

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[fill_event(1, 10), fill_event(2, 10), cancel]))
        d.wake()
        await until(lambda: len(chat.events) == 2)
        await d.stop(0.1)

    asyncio.run(scenario())
    assert [e.scene for e in chat.events] == ["FILLED", "CANCEL_SUCCESS"]
    assert chat.events[0].payload["fills"] == 2
    assert chat.events[0].payload["last_fill_qty"] == "20"


def test_gathered_fills_are_sent_when_stopping(tmp_path: Path) -> None:
    chat = EventRecorder("chat", NotifierConfig(kind="events", coalesce_fills=300.0))
    h = Harness(tmp_path, [chat])

    async def scenario() -> None:
        d = h.dispatcher()
        d.start()
        await h.commit(Batch(events=[fill_event(1, 10), fill_event(2, 10)]))
        d.wake()
        await d.stop(5.0)

    asyncio.run(scenario())
    assert len(chat.events) == 1 and chat.events[0].payload["fills"] == 2
    assert h.store.backlog() == {}
