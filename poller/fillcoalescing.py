"""Fill coalescing: partial fills of one order, close together, as one message.

An algorithm slicing 10 000 shares can fill an order 200 times in a few seconds; a chat
notifier that sends each one makes a phone buzz 200 times. Per notifier (``coalesce_fills``
seconds), the FILLED events of one order that arrive within the window go out as one
message with the running summary: the latest state of the order, the fills summed, and how
many there were. FINAL_FILLED and every other event are never held back; a FINAL_FILLED
that arrives while fills are gathered stands for them all. The outbox still records every
event, and each row is marked sent only once the message that covers it was accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from poller.events import EventPayload, OrderEvent
from poller.models import SceneType, decimal_text


def coalescible(event: OrderEvent) -> bool:
    """Whether an event may wait to be sent with its order's next fills."""
    return event.event_type == "TRADE" and event.scene == SceneType.FILLED.value


def _number(value: object) -> Decimal | None:
    try:
        return None if value in (None, "") else Decimal(str(value))
    except InvalidOperation:
        return None


def coalesced(fills: Sequence[OrderEvent], final: OrderEvent | None = None) -> OrderEvent:
    """The one event that stands for ``fills`` (FILLED events of one order, oldest first),
    or for them and the ``final`` event that closes the order.

    It is the newest event (its id, so a receiver's dedupe still works) with ``fills`` set
    to how many fills it covers; without a final event, ``last_fill_qty`` is the fills'
    sum and ``last_fill_price`` their volume-weighted average (left out if a price is
    missing: better none than a wrong one).
    """
    if not fills:
        raise ValueError("nothing to coalesce")
    latest = final or fills[-1]
    payload: EventPayload = dict(latest.payload)  # type: ignore[assignment]
    payload["fills"] = len(fills) + (1 if final is not None else 0)
    if final is None:
        quantities = [_number(f.payload.get("last_fill_qty")) for f in fills]
        prices = [_number(f.payload.get("last_fill_price")) for f in fills]
        if all(q is not None for q in quantities):
            total = sum((q for q in quantities if q is not None), Decimal(0))
            payload["last_fill_qty"] = decimal_text(total)
            if total and all(p is not None for p in prices):
                value = sum((q * p for q, p in zip(quantities, prices, strict=True)
                             if q is not None and p is not None), Decimal(0))
                payload["last_fill_price"] = decimal_text(
                    (value / total).quantize(Decimal("1e-8")).normalize())
            else:
                payload["last_fill_price"] = None
    return replace(latest, payload=payload)


def fills_text(payload: EventPayload) -> str:
    """``"12 fills in one message"`` for a coalesced event, else ``""``."""
    count = payload.get("fills", 0)
    return f"{count} fills in one message" if count > 1 else ""
