"""Routes are computed before the commit: per notifier rules, never back to a failing one."""

from __future__ import annotations

from poller.events import system_event
from poller.models import SystemScene
from poller.notifiers import Notifier, NotifierConfig
from poller.records import Batch
from poller.routing import recipients, route
from tests.scripted import T0


class Plain(Notifier):
    kind = "plain"


def notifier(name: str, **rules: object) -> Notifier:
    return Plain(name, NotifierConfig(kind="plain", **rules))  # type: ignore[arg-type]


def test_recipients_follow_each_notifiers_rules() -> None:
    dead = system_event(SystemScene.NOTIFIER_DEAD_LETTER, notifier="hook", message="x",
                        discriminator="1", detected_at=T0)
    stale = system_event(SystemScene.ORDER_STALE, broker="cx", message="y",
                         discriminator="2", detected_at=T0)
    targets = [notifier("hook"), notifier("mail", event_types=["TRADE"]), notifier("chat")]
    assert recipients(dead, targets) == ("chat",)  # not the notifier that failed
    assert recipients(stale, targets) == ("hook", "chat")


def test_route_fills_the_batch_for_every_event() -> None:
    events = [system_event(SystemScene.ORDER_STALE, broker="cx", message="y",
                           discriminator=str(n), detected_at=T0) for n in range(3)]
    batch = route(Batch(events=events), [notifier("hook")])
    assert batch.routes == {e.id: ("hook",) for e in events}
