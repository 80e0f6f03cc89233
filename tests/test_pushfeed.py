"""A pushed update merged into what poller knows, or refused so a poll settles it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from poller.models import Fill, OrderStatus
from poller.pushfeed import CONNECTED, PushedOrder, is_marker, merge
from tests.scripted import T0, order


def push(**fields: object) -> PushedOrder:
    return PushedOrder(account_id="A", order_id="1", **fields)  # type: ignore[arg-type]


def test_a_fill_that_fits_is_merged() -> None:
    known = order("1")
    merged = merge(known, push(status=OrderStatus.PARTIAL_FILLED, filled_qty=Decimal(4),
                               avg_fill_price=Decimal("27.05"), event_time=T0,
                               broker_status="PartFilled",
                               fill=Fill("d1", Decimal(4), Decimal("27.05"), T0)))
    assert merged is not None
    assert (merged.status, merged.filled_qty, merged.avg_fill_price) == (
        OrderStatus.PARTIAL_FILLED, Decimal(4), Decimal("27.05"))
    assert merged.broker_status == "PartFilled" and merged.updated_at == T0
    assert [f.fill_id for f in merged.fills] == ["d1"]
    assert merged.symbol == known.symbol and merged.qty == known.qty  # kept from the poll
    assert merged.origin == "push" and merged == merged  # origin is not a fact: no change


@pytest.mark.parametrize(("known", "update", "why"), [
    (order("1", OrderStatus.FILLED, filled=10), push(status=OrderStatus.CANCELLED),
     "a final order does not change"),
    (order("1", OrderStatus.PARTIAL_FILLED, filled=4), push(filled_qty=Decimal(3)),
     "the filled quantity never goes down"),
    (order("1", OrderStatus.SUBMITTED), push(status=OrderStatus.PENDING),
     "working does not go back to not acknowledged"),
    (order("1"), push(filled_qty=Decimal(11)), "more than the order"),
    (order("1"), push(fill=Fill("d9", Decimal(2), Decimal("27")), status=None),
     "a deal report without the order's total"),
])
def test_what_does_not_fit_is_refused(known: object, update: PushedOrder, why: str) -> None:
    assert merge(known, update) is None, why  # type: ignore[arg-type]


def test_an_echo_of_what_is_known_changes_nothing() -> None:
    known = order("1", OrderStatus.PARTIAL_FILLED, filled=4)
    assert merge(known, push(status=OrderStatus.PARTIAL_FILLED, filled_qty=Decimal(4))) \
        == known


def test_the_connected_marker_is_not_an_update() -> None:
    assert is_marker(CONNECTED)
    assert not is_marker(push(kind="connected"))
