"""Realistic sample events for ``poller test-notify`` (one per scene), built by the real diff."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import cast

from poller.diff import diff
from poller.events import EventPayload, OrderEvent, system_event
from poller.models import Fill, OrderSnapshot, OrderStatus, SceneType, SystemScene, utcnow

SCENES = [s.value for s in SceneType] + ["SYSTEM"]

#: The broker's own word for each state, as Shioaji (the samples' broker) writes it, so a
#: sample never shows a filled order whose broker status says "Submitted".
_BROKER_STATUS = {
    OrderStatus.SUBMITTED: "Submitted", OrderStatus.PARTIAL_FILLED: "PartFilled",
    OrderStatus.FILLED: "Filled", OrderStatus.CANCELLED: "Cancelled",
    OrderStatus.FAILED: "Failed", OrderStatus.EXPIRED: "Expired",
}


def sample_event(scene: str = "FINAL_FILLED", *, broker: str = "tw-main",
                 broker_kind: str = "shioaji", test: bool = False) -> OrderEvent:
    """An event of ``scene`` about a made-up order, as the daemon would produce it.

    :param test: mark it as a test (``payload.test``, and "[test]" in the message), as
        ``poller test-notify`` sends it: nobody must mistake it for a real fill.
    """
    event = _sample(scene, broker=broker, broker_kind=broker_kind)
    if not test:
        return event
    payload = {**event.payload, "test": True,
               "message": ("[test] " + (event.payload.get("message") or "")).strip()}
    return replace(event, payload=cast(EventPayload, payload))


def _sample(scene: str, *, broker: str, broker_kind: str) -> OrderEvent:
    now = utcnow()
    if scene == "SYSTEM":
        return system_event(SystemScene.BROKER_UNREACHABLE, broker=broker, detected_at=now,
                            discriminator="test-notify",
                            message=f"{broker}: test message from poller test-notify")
    base = OrderSnapshot(
        broker=broker, broker_kind=broker_kind, account_id="1234567", order_id="TEST0001",
        status=OrderStatus.SUBMITTED, broker_status="Submitted", symbol="2890", side="BUY",
        order_type="LIMIT", qty=Decimal(1000), price=Decimal("27.1"), updated_at=now,
        client_order_id="test-notify")
    fill = Fill("000001", Decimal(400), Decimal("27.1"), now)
    before, after = base, base
    if scene == SceneType.PLACED:
        before, after = None, base  # type: ignore[assignment]
    elif scene == SceneType.FILLED:
        after = replace(base, status=OrderStatus.PARTIAL_FILLED, filled_qty=Decimal(400),
                        avg_fill_price=Decimal("27.1"), fills=(fill,))
    elif scene == SceneType.FINAL_FILLED:
        before = replace(base, status=OrderStatus.PARTIAL_FILLED, filled_qty=Decimal(400),
                         avg_fill_price=Decimal("27.1"), fills=(fill,))
        after = replace(base, status=OrderStatus.FILLED, filled_qty=Decimal(1000),
                        avg_fill_price=Decimal("27.06"),
                        fills=(fill, Fill("000002", Decimal(600), Decimal("27.0"), now)))
    elif scene == SceneType.PLACE_FAILED:
        before = replace(base, status=OrderStatus.PENDING)
        after = replace(base, status=OrderStatus.FAILED, message="insufficient buying power")
    elif scene == SceneType.MODIFY_SUCCESS:
        after = replace(base, qty=Decimal(600), price=Decimal("27.0"))
    elif scene == SceneType.MODIFY_FAILED:
        before = replace(base, status=OrderStatus.PENDING_REPLACE)
    elif scene == SceneType.CANCEL_SUCCESS:
        after = replace(base, status=OrderStatus.CANCELLED)
    elif scene == SceneType.CANCEL_FAILED:
        before = replace(base, status=OrderStatus.PENDING_CANCEL)
    elif scene == SceneType.EXPIRED:
        after = replace(base, status=OrderStatus.EXPIRED)
    else:
        raise ValueError(f"unknown scene {scene!r} (known: {', '.join(SCENES)})")
    # Each state shows its own broker status (a filled order does not say "Submitted").
    if before is not None:
        before = replace(before, broker_status=_BROKER_STATUS.get(before.status,
                                                                  before.status.value))
    after = replace(after, broker_status=_BROKER_STATUS.get(after.status, after.status.value))
    events = [e for e in diff(before, after, detected_at=now).events if e.scene == scene]
    return events[-1]
