"""Partial fills of one order as one event: the latest state, the fills summed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from poller.events import EventPayload, OrderEvent
from poller.fillcoalescing import coalesced, coalescible, fills_text

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def fill(n: int, qty: str | None, price: str | None, scene: str = "FILLED") -> OrderEvent:
    payload: EventPayload = {"scene_type": scene, "broker": "tw", "order_id": "O1",
                             "qty": "1000", "filled_qty": str(100 * n),
                             "last_fill_qty": qty, "last_fill_price": price}
    return OrderEvent(id=f"evt_{n}", event_type="TRADE", scene=scene, timestamp=NOW,
                      broker="tw", account_id="A", order_id="O1", payload=payload)


def test_fills_are_summed_at_their_average_price() -> None:
    event = coalesced([fill(1, "100", "10"), fill(2, "100", "11"), fill(3, "200", "12.5")])
    assert event.id == "evt_3" and event.scene == "FILLED"
    assert event.payload["fills"] == 3 and event.payload["filled_qty"] == "300"
    assert event.payload["last_fill_qty"] == "400"
    assert event.payload["last_fill_price"] == "11.5"  # (1000 + 1100 + 2500) / 400
    assert fills_text(event.payload) == "3 fills in one message"


def test_a_missing_price_leaves_the_average_out() -> None:
    event = coalesced([fill(1, "100", "10"), fill(2, "50", None)])
    assert event.payload["last_fill_qty"] == "150"
    assert event.payload["last_fill_price"] is None


def test_a_final_event_stands_for_the_fills_before_it() -> None:
    final = fill(10, "100", "10", scene="FINAL_FILLED")
    event = coalesced([fill(8, "100", "10"), fill(9, "100", "10")], final)
    assert event.id == "evt_10" and event.scene == "FINAL_FILLED"
    assert event.payload["fills"] == 3 and event.payload["last_fill_qty"] == "100"


def test_only_partial_fills_wait() -> None:
    assert coalescible(fill(1, "1", "1"))
    assert not coalescible(fill(1, "1", "1", scene="FINAL_FILLED"))
    assert fills_text(fill(1, "1", "1").payload) == ""
    with pytest.raises(ValueError):
        coalesced([])
