"""Events: the typed payload, the one builder of order events, and operator events.

Every order event — from the diff or from an order action — is built by :func:`order_event`,
so the event JSON (design.md §3, shaped like seed 001) has one definition: the
:class:`EventPayload` TypedDict. Operator events (``event_type: "SYSTEM"``) come from
:func:`system_event`. Ids are deterministic (:func:`event_id`): the same fact always gives
the same id, so a restart or a replay never creates a second event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict, cast

from poller.models import (
    Fill,
    OrderSnapshot,
    OrderStatus,
    SceneType,
    SystemScene,
    decimal_text,
    iso,
    parse_iso,
    utcnow,
)


class Change(TypedDict):
    """One modified field of an order: its old and new value as decimal text."""

    old: str | None
    new: str | None


class EventPayload(TypedDict, total=False):
    """The ``payload`` of the event JSON. Order events carry every order key; operator
    events carry ``broker``, ``account_id``, ``order_id``, ``notifier``, ``scene_type``,
    ``message`` and ``detected_at``."""

    broker: str
    broker_kind: str
    account_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    qty: str | None
    price: str | None
    filled_qty: str | None
    filled_price: str | None
    last_fill_qty: str | None
    last_fill_price: str | None
    order_status: str
    previous_status: str | None
    broker_status: str
    scene_type: str
    changes: dict[str, Change]
    message: str
    event_time: str | None
    detected_at: str | None
    notifier: str
    #: True only for ``poller test-notify``'s sample: not a real order.
    test: bool
    #: How many fills one coalesced message stands for (see :mod:`poller.fillcoalescing`).
    fills: int
    #: Operator events of a grouped problem: ``started``, ``reminder`` or ``resolved``.
    phase: str
    #: Operator events of a grouped problem: how many occurrences so far.
    count: int
    #: ``"push"`` when a broker's push stream reported the change first (else a poll did).
    via: str


def event_id(*parts: str) -> str:
    """A deterministic event id: the same fact always gives the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return "evt_" + digest[:24]


@dataclass(frozen=True)
class OrderEvent:
    """One thing that happened, ready to be stored and delivered.

    ``event_type`` is ``TRADE`` for order events and ``SYSTEM`` for operator events.
    ``payload`` is the seed-001-shaped body (see :meth:`to_json`).
    """

    id: str
    event_type: str
    scene: str
    timestamp: datetime
    broker: str
    account_id: str
    order_id: str
    payload: EventPayload

    @property
    def short_id(self) -> str:
        """Four hex digits a human can use to spot a duplicate (``#7F3A``)."""
        return "#" + self.id.removeprefix("evt_")[:4].upper()

    def to_json(self) -> dict[str, Any]:
        """The event JSON of design.md §3 (webhook body, ``poller events --json``)."""
        return {
            "id": self.id,
            "event_type": self.event_type,
            "timestamp": iso(self.timestamp),
            "payload": self.payload,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderEvent:
        """Rebuild an event from :meth:`to_json` output."""
        payload = cast(EventPayload, data["payload"])
        return cls(
            id=data["id"],
            event_type=data["event_type"],
            scene=payload["scene_type"],
            timestamp=parse_iso(data["timestamp"]) or utcnow(),
            broker=payload.get("broker", ""),
            account_id=payload.get("account_id", ""),
            order_id=payload.get("order_id", ""),
            payload=payload,
        )


def system_event(
    scene: SystemScene,
    *,
    broker: str = "",
    message: str,
    discriminator: str,
    detected_at: datetime,
    account_id: str = "",
    order_id: str = "",
    notifier: str = "",
    phase: str = "",
    count: int = 0,
) -> OrderEvent:
    """Build an operator event; ``discriminator`` makes one episode one event.

    ``phase`` and ``count`` describe a grouped problem (:mod:`poller.alertgroups`)."""
    payload: EventPayload = {
        "broker": broker,
        "account_id": account_id,
        "order_id": order_id,
        "notifier": notifier,
        "scene_type": scene.value,
        "message": message,
        "detected_at": iso(detected_at),
    }
    if phase:
        payload["phase"] = phase
        payload["count"] = count
    return OrderEvent(
        id=event_id("SYSTEM", scene.value, broker, account_id, order_id, notifier, discriminator),
        event_type="SYSTEM",
        scene=scene.value,
        timestamp=detected_at,
        broker=broker,
        account_id=account_id,
        order_id=order_id,
        payload=payload,
    )


def order_event(
    snapshot: OrderSnapshot,
    scene: SceneType,
    *,
    discriminator: str,
    detected_at: datetime,
    status: OrderStatus | None = None,
    previous_status: OrderStatus | None = None,
    filled_qty: Decimal | None = None,
    fill: Fill | None = None,
    changes: dict[str, Change] | None = None,
    message: str | None = None,
    event_time: datetime | None = None,
) -> OrderEvent:
    """The one builder of order events.

    :param discriminator: what makes this fact unique among the order's events of this
        scene (a fill id, a modification, an action id); part of the deterministic id.
    :param status: the order's status after this event (default: the snapshot's).
    :param filled_qty: the cumulative filled quantity after this event (default: the
        snapshot's; the diff passes the running total of several fills in one poll).
    :param event_time: when it happened at the broker (default: the fill's time, else the
        snapshot's update time, else ``detected_at``).
    """
    status = status or snapshot.status
    moment = event_time or (fill.time if fill else None) or snapshot.updated_at or detected_at
    payload: EventPayload = {
        "broker": snapshot.broker,
        "broker_kind": snapshot.broker_kind,
        "account_id": snapshot.account_id,
        "order_id": snapshot.order_id,
        "client_order_id": snapshot.client_order_id,
        "symbol": snapshot.symbol,
        "side": snapshot.side,
        "order_type": snapshot.order_type,
        "qty": decimal_text(snapshot.qty),
        "price": decimal_text(snapshot.price),
        "filled_qty": decimal_text(snapshot.filled_qty if filled_qty is None else filled_qty),
        "filled_price": decimal_text(snapshot.avg_fill_price),
        "last_fill_qty": decimal_text(fill.qty) if fill else None,
        "last_fill_price": decimal_text(fill.price) if fill else None,
        "order_status": status.value,
        "previous_status": previous_status.value if previous_status else None,
        "broker_status": snapshot.broker_status,
        "scene_type": scene.value,
        "changes": changes or {},
        "message": snapshot.message if message is None else message,
        "event_time": iso(moment),
        "detected_at": iso(detected_at),
    }
    return OrderEvent(
        id=event_id(snapshot.broker, snapshot.account_id, snapshot.order_id, scene.value,
                    discriminator),
        event_type="TRADE", scene=scene.value, timestamp=detected_at, broker=snapshot.broker,
        account_id=snapshot.account_id, order_id=snapshot.order_id, payload=payload)
