"""Events: deterministic ids, the event JSON round trip, the one order-event builder (used
by the diff and by order actions alike) and operator events."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

from poller.events import OrderEvent, event_id, order_event, system_event
from poller.models import Fill, OrderSnapshot, OrderStatus, SceneType, SystemScene

T0 = datetime(2026, 5, 20, 3, 24, 30, 125000, tzinfo=UTC)


def test_event_id_is_deterministic_and_separates_parts() -> None:
    one = event_id("tw", "A", "O1", "FILLED", "d1")
    assert one == event_id("tw", "A", "O1", "FILLED", "d1")
    assert re.fullmatch(r"evt_[0-9a-f]{24}", one)
    others = {event_id("tw", "A", "O1", "FILLED", "d2"), event_id("A", "tw", "O1", "FILLED", "d1"),
              event_id("ab", "c"), event_id("a", "bc"), event_id("abc"), one}
    assert len(others) == 6


def event(**kw: object) -> OrderEvent:
    fields: dict[str, object] = dict(
        id=event_id("x"), event_type="TRADE", scene="FILLED", timestamp=T0, broker="tw",
        account_id="A", order_id="O1",
        payload={"scene_type": "FILLED", "broker": "tw", "account_id": "A", "order_id": "O1",
                 "qty": "2"})
    fields.update(kw)
    return OrderEvent(**fields)  # type: ignore[arg-type]


def test_order_event_json_round_trip_and_short_id() -> None:
    original = event(id="evt_7f3a0000000000000000000b")
    data = json.loads(json.dumps(original.to_json()))
    assert data == {"id": "evt_7f3a0000000000000000000b", "event_type": "TRADE",
                    "timestamp": "2026-05-20T03:24:30.125Z", "payload": original.payload}
    assert OrderEvent.from_json(data) == original
    assert original.short_id == "#7F3A"


def test_order_event_from_json_of_a_system_event_without_order() -> None:
    data = {"id": "evt_1", "event_type": "SYSTEM", "timestamp": "2026-05-20T03:24:30.125Z",
            "payload": {"scene_type": "DATABASE_RECOVERED", "message": "m"}}
    back = OrderEvent.from_json(data)
    assert (back.scene, back.broker, back.account_id, back.order_id) == (
        "DATABASE_RECOVERED", "", "", "")


def test_system_event() -> None:
    def make(scene: SystemScene = SystemScene.BROKER_UNREACHABLE, **kw: str) -> OrderEvent:
        args = dict(broker="tw", discriminator="2026-05-20T03:24:30Z")
        args.update(kw)
        return system_event(scene, message="tw: unreachable", detected_at=T0, **args)

    first = make()
    assert first == make(), "one episode, one id"
    assert (first.event_type, first.scene, first.timestamp, first.broker) == (
        "SYSTEM", "BROKER_UNREACHABLE", T0, "tw")
    assert first.payload == {"broker": "tw", "account_id": "", "order_id": "", "notifier": "",
                             "scene_type": "BROKER_UNREACHABLE", "message": "tw: unreachable",
                             "detected_at": "2026-05-20T03:24:30.125Z"}
    variants = [make(discriminator="later"), make(broker="cw"), make(notifier="hook"),
                make(order_id="O1"), make(SystemScene.BROKER_RECOVERED)]
    assert len({first.id, *(v.id for v in variants)}) == 6


def test_order_event_builds_the_full_payload() -> None:
    snap = OrderSnapshot(broker="tw", broker_kind="shioaji", account_id="A", order_id="O1",
                         status=OrderStatus.PARTIAL_FILLED, broker_status="PartFilled",
                         symbol="2890", side="BUY", order_type="LIMIT", qty=Decimal(10),
                         price=Decimal("27.10"), filled_qty=Decimal(6),
                         avg_fill_price=Decimal("27.1"), message="ok")
    fill = Fill("d2", Decimal(2), Decimal("27.05"), T0)
    built = order_event(snap, SceneType.FILLED, discriminator="d2", detected_at=T0,
                        previous_status=OrderStatus.SUBMITTED, filled_qty=Decimal(4), fill=fill)
    assert built.id == event_id("tw", "A", "O1", "FILLED", "d2")
    assert built.payload == {
        "broker": "tw", "broker_kind": "shioaji", "account_id": "A", "order_id": "O1",
        "client_order_id": "", "symbol": "2890", "side": "BUY", "order_type": "LIMIT",
        "qty": "10", "price": "27.1", "filled_qty": "4", "filled_price": "27.1",
        "last_fill_qty": "2", "last_fill_price": "27.05", "order_status": "PARTIAL_FILLED",
        "previous_status": "SUBMITTED", "broker_status": "PartFilled", "scene_type": "FILLED",
        "changes": {}, "message": "ok", "event_time": "2026-05-20T03:24:30.125Z",
        "detected_at": "2026-05-20T03:24:30.125Z"}
    refused = order_event(snap, SceneType.CANCEL_FAILED, discriminator="action:7",
                          detected_at=T0, message="too late")
    assert (refused.payload["message"], refused.payload["last_fill_qty"],
            refused.payload["order_status"]) == ("too late", None, "PARTIAL_FILLED")
