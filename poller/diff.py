"""Work out what happened to an order between two snapshots (design.md §3). Pure functions.

This is the only place that decides whether something changed. It never does I/O and never
reads the clock: the caller passes ``detected_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from poller.events import Change, OrderEvent, order_event
from poller.models import Fill, OrderSnapshot, OrderStatus, SceneType, decimal_text, iso

_TERMINAL_SCENE = {
    OrderStatus.FILLED: SceneType.FINAL_FILLED,
    OrderStatus.CANCELLED: SceneType.CANCEL_SUCCESS,
    OrderStatus.FAILED: SceneType.PLACE_FAILED,
    OrderStatus.EXPIRED: SceneType.EXPIRED,
}

_WORKING = frozenset(
    {
        OrderStatus.SUBMITTED,
        OrderStatus.PARTIAL_FILLED,
        OrderStatus.PENDING_CANCEL,
        OrderStatus.PENDING_REPLACE,
    }
)


@dataclass(frozen=True)
class DiffResult:
    """The events one new snapshot implies, and the snapshot to remember afterwards.

    ``snapshot`` is ``None`` when there is nothing to remember (a first sighting whose
    status nobody documents). ``ignored`` says the new snapshot was older than what we knew
    (out-of-order data) and was dropped. ``warnings`` are human-readable notes for the log.
    """

    events: list[OrderEvent]
    snapshot: OrderSnapshot | None
    ignored: bool = False
    warnings: list[str] = field(default_factory=list)


def is_behind(previous: OrderSnapshot, current: OrderSnapshot) -> bool:
    """True when ``current`` is older than ``previous`` and must not move the order backwards.

    An order never goes from working back to pending, from finished back to working (unless
    the finished status was provisional), and its filled quantity never shrinks. When both
    carry the broker's update time, an earlier time is older data too.
    """
    if current.status.stage < previous.status.stage and not previous.provisional:
        return True
    if current.filled_qty < previous.filled_qty:
        return True
    return (
        previous.updated_at is not None
        and current.updated_at is not None
        and current.updated_at < previous.updated_at
    )


def diff(
    previous: OrderSnapshot | None,
    current: OrderSnapshot,
    *,
    detected_at: datetime,
    announce: bool = True,
) -> DiffResult:
    """Compare the last known snapshot of an order with a new one.

    :param previous: what we knew, or ``None`` on the first sighting of the order.
    :param current: what the broker says now.
    :param detected_at: when the new snapshot was read (stamped on every event).
    :param announce: ``False`` records ``current`` as a silent baseline (first start).
    :returns: the events, in the order they happened, and the snapshot to store.
    """
    warnings: list[str] = []
    if current.unknown_status:
        if previous is None:
            warnings.append(
                f"order {current.order_id}: undocumented status {current.broker_status!r}; "
                "waiting for a known status before tracking it"
            )
            return DiffResult([], None, ignored=True, warnings=warnings)
        warnings.append(
            f"order {current.order_id}: undocumented status {current.broker_status!r}; "
            f"keeping {previous.status.value}"
        )
        current = current.with_status(previous.status)
    if previous is not None:
        if previous.final:
            return DiffResult([], previous, ignored=current != previous, warnings=warnings)
        if is_behind(previous, current):
            return DiffResult([], previous, ignored=True, warnings=warnings)
    if not announce:
        return DiffResult([], current, warnings=warnings)
    return DiffResult(_events(previous, current, detected_at), current, warnings=warnings)


def _events(
    previous: OrderSnapshot | None, current: OrderSnapshot, detected_at: datetime
) -> list[OrderEvent]:
    builder = _Builder(current, detected_at, previous.status if previous else None)
    if previous is None and not current.status.terminal:
        placed_as = (
            OrderStatus.PENDING if current.status is OrderStatus.PENDING else OrderStatus.SUBMITTED
        )
        builder.add(SceneType.PLACED, "", placed_as)

    if previous is not None:
        changes = _changes(previous, current)
        if changes:
            builder.add(SceneType.MODIFY_SUCCESS, _modification_key(current, changes),
                        builder.status, changes=changes)
        elif (
            previous.status is OrderStatus.PENDING_REPLACE
            and current.status in _WORKING - {OrderStatus.PENDING_REPLACE}
        ):
            builder.add(SceneType.MODIFY_FAILED, _moment_key(current), current.status)

    completes = current.status is OrderStatus.FILLED and not current.provisional
    fills = _new_fills(previous, current)
    for index, (fill, cumulative) in enumerate(fills):
        if completes and index == len(fills) - 1:
            builder.final_fill = (fill, cumulative)
            break
        builder.add(
            SceneType.FILLED,
            fill.fill_id,
            OrderStatus.PARTIAL_FILLED,
            fill=fill,
            filled_qty=cumulative,
        )

    if (
        previous is not None
        and previous.status is OrderStatus.PENDING_CANCEL
        and current.status in (OrderStatus.SUBMITTED, OrderStatus.PARTIAL_FILLED)
    ):
        builder.add(SceneType.CANCEL_FAILED, _moment_key(current), current.status)

    if current.status.terminal and not current.provisional:
        scene = _TERMINAL_SCENE[current.status]
        if builder.final_fill is not None:
            final, cumulative = builder.final_fill
            builder.add(scene, "", current.status, fill=final, filled_qty=cumulative)
        else:
            builder.add(scene, "", current.status)
    return builder.events


def _changes(previous: OrderSnapshot, current: OrderSnapshot) -> dict[str, Change]:
    """Field-level modifications (qty, price) of a live or filled order."""
    if current.status in (OrderStatus.CANCELLED, OrderStatus.FAILED, OrderStatus.EXPIRED):
        return {}
    changes: dict[str, Change] = {}
    if previous.qty and current.qty and previous.qty != current.qty:
        changes["qty"] = {"old": decimal_text(previous.qty), "new": decimal_text(current.qty)}
    if (
        previous.price is not None
        and current.price is not None
        and previous.price != current.price
    ):
        changes["price"] = {
            "old": decimal_text(previous.price),
            "new": decimal_text(current.price),
        }
    return changes


def _modification_key(current: OrderSnapshot, changes: dict[str, Change]) -> str:
    parts = [f"{name}:{values['old']}>{values['new']}" for name, values in sorted(changes.items())]
    return ";".join(parts) + "@" + (iso(current.updated_at) or "")


def _moment_key(current: OrderSnapshot) -> str:
    return (iso(current.updated_at) or "") + "/" + (decimal_text(current.filled_qty) or "0")


def _new_fills(
    previous: OrderSnapshot | None, current: OrderSnapshot
) -> list[tuple[Fill, Decimal]]:
    """Fills not seen before, each with the cumulative filled quantity after it.

    Uses the broker's deal list when it has one; otherwise one synthetic fill for the growth
    of ``filled_qty`` (its id is the new cumulative quantity, so a replay gives the same id).
    """
    previous_filled = previous.filled_qty if previous else Decimal(0)
    known = {f.fill_id for f in previous.fills} if previous else set()
    if current.fills:
        result: list[tuple[Fill, Decimal]] = []
        cumulative = Decimal(0)
        for fill in current.fills:
            cumulative += fill.qty
            # A deal is new only if it lies beyond the quantity already announced: fills
            # announced from a call that lists no deals (or lagging deal lists) had no ids.
            if fill.fill_id not in known and cumulative > previous_filled:
                result.append((fill, cumulative))
        if result and cumulative < current.filled_qty:
            # The deal list lags the order's own filled quantity: the last new deal carries
            # the quantity the order reports, so FINAL_FILLED shows the full amount.
            last_fill, _ = result[-1]
            result[-1] = (last_fill, current.filled_qty)
        if result or current.filled_qty <= previous_filled:
            return result
    growth = current.filled_qty - previous_filled
    if growth <= 0:
        return []
    price = current.avg_fill_price
    if (
        previous is not None
        and previous.avg_fill_price is not None
        and current.avg_fill_price is not None
        and previous_filled > 0
    ):
        spent = current.avg_fill_price * current.filled_qty
        spent -= previous.avg_fill_price * previous_filled
        exponent = current.avg_fill_price.as_tuple().exponent
        places = max(4, -exponent if isinstance(exponent, int) else 4)
        price = (spent / growth).quantize(Decimal(1).scaleb(-places))
    synthetic = Fill(
        fill_id="cum:" + (decimal_text(current.filled_qty) or "0"),
        qty=growth,
        price=price,
        time=current.updated_at,
    )
    return [(synthetic, current.filled_qty)]


class _Builder:
    """Accumulates the events of one diff, threading the status through each step."""

    def __init__(
        self, current: OrderSnapshot, detected_at: datetime, previous_status: OrderStatus | None
    ) -> None:
        self.current = current
        self.detected_at = detected_at
        self.status = previous_status
        self.events: list[OrderEvent] = []
        self.final_fill: tuple[Fill, Decimal] | None = None

    def add(
        self,
        scene: SceneType,
        discriminator: str,
        status: OrderStatus | None,
        *,
        fill: Fill | None = None,
        filled_qty: Decimal | None = None,
        changes: dict[str, Change] | None = None,
    ) -> None:
        status = status or self.current.status
        self.events.append(order_event(
            self.current, scene, discriminator=discriminator, detected_at=self.detected_at,
            status=status, previous_status=self.status, filled_qty=filled_qty, fill=fill,
            changes=changes))
        self.status = status
