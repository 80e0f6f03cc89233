"""What a broker pushes, in poller's terms, and the contract of a push stream.

Where a broker pushes order events (Webull's gRPC trade events, the Shioaji HTTP API's
server-sent events), a fill reaches poller in well under a second instead of at the next
poll. A push is never trusted alone: it becomes a snapshot through the same diff, event ids
and outbox as a poll (so a fact seen by both is announced once), an update that does not fit
what poller knows makes it poll that order to confirm, and polling stays on at a slower
reconciliation cadence to catch whatever a stream misses.

An adapter that can push implements ``open_push()`` returning a :class:`PushStream`; the
stream yields :class:`PushedOrder` records and raises only the :mod:`poller.errors`
hierarchy (``BrokerAuthError`` for refused credentials, ``BrokerUnavailable`` when the
stream drops), translated at the adapter's edge like every other broker answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from poller.models import Fill, OrderSnapshot, OrderStatus


@dataclass(frozen=True)
class PushedOrder:
    """One order update a broker pushed, with only what the push said (None: not said).

    ``order_id`` may be empty when the push names the order by ``client_order_id`` only
    (Webull does so for some events); the connection then finds it by that id.
    """

    account_id: str
    order_id: str
    client_order_id: str = ""
    status: OrderStatus | None = None
    broker_status: str = ""
    filled_qty: Decimal | None = None
    avg_fill_price: Decimal | None = None
    qty: Decimal | None = None
    price: Decimal | None = None
    symbol: str = ""
    side: str = ""
    fill: Fill | None = None
    event_time: datetime | None = None
    message: str = ""
    #: The broker's own name of the event (Webull ``scene_type``, Shioaji ``operation``).
    kind: str = ""
    extra: dict[str, str] = field(default_factory=dict)


#: Yielded by a stream when its connection is established (and by heartbeats, if it
#: likes): not an order update; tells the runner the stream is up before any event comes.
CONNECTED = PushedOrder(account_id="", order_id="", kind="connected")


def is_marker(update: PushedOrder) -> bool:
    """Whether ``update`` is :data:`CONNECTED` (or another marker), not an order update."""
    return update.kind == "connected" and not update.order_id and not update.client_order_id


class PushStream(Protocol):
    """One subscription to a broker's push: connect, yield updates until it ends."""

    def updates(self) -> AsyncIterator[PushedOrder]:
        """Connect and yield updates as they arrive; ends (or raises a ``BrokerError``)
        when the stream does. One call is one connection: the caller reconnects."""
        ...

    async def aclose(self) -> None:
        """Close the stream and its connection."""
        ...


def merge(known: OrderSnapshot, push: PushedOrder) -> OrderSnapshot | None:
    """``known`` with what ``push`` said, or None when the push does not fit it.

    It does not fit (and the order must be polled to confirm) when it would change a
    final order, move a status to an earlier stage (working back to not acknowledged),
    lower the filled quantity or raise it past the order's, or is a deal report without the
    order's filled total: a stream can deliver late or out of order, and only the
    broker's answer to a poll settles which is true.
    """
    status = push.status or known.status
    if known.final and (status != known.status or (
            push.filled_qty is not None and push.filled_qty != known.filled_qty)):
        return None
    if status.stage < known.status.stage:
        return None
    filled = known.filled_qty if push.filled_qty is None else push.filled_qty
    if filled < known.filled_qty:
        return None
    if filled > known.qty > 0:
        return None  # more than the order: something was missed; poll to settle it
    fills = known.fills
    if push.fill is not None and all(f.fill_id != push.fill.fill_id for f in fills):
        if push.filled_qty is None:
            # A deal report alone: adding it to what the polls counted could count one deal
            # twice (a poll's deal ids need not be the push's), so a poll settles it.
            return None
        fills = (*fills, push.fill)
    return replace(
        known, status=status,
        broker_status=push.broker_status or known.broker_status,
        filled_qty=filled,
        avg_fill_price=push.avg_fill_price if push.avg_fill_price is not None
        else known.avg_fill_price,
        qty=push.qty if push.qty is not None else known.qty,
        price=push.price if push.price is not None else known.price,
        fills=fills, updated_at=push.event_time or known.updated_at,
        message=push.message or known.message, origin="push")
