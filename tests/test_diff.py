"""The transition rules of design.md §3, as a dense table, plus properties over random paths."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.diff import diff, is_behind
from poller.models import Fill, OrderSnapshot, OrderStatus

S = OrderStatus
T0 = datetime(2026, 5, 20, 3, 24, 30, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)


def snap(status: OrderStatus = S.SUBMITTED, filled: str | int = 0, *, qty: str | int = 10,
         price: str | None = "10", deals: tuple[tuple[str, int, str], ...] = (),
         updated: int | None = None, **kw: Any) -> OrderSnapshot:
    fills = tuple(Fill(i, Decimal(q), Decimal(p), T0) for i, q, p in deals)
    filled_qty = Decimal(filled) if not deals else max(Decimal(filled),
                                                        sum((f.qty for f in fills), Decimal(0)))
    return OrderSnapshot(
        broker="tw", broker_kind="shioaji", account_id="A1", order_id="O1", status=status,
        broker_status=status.value, symbol="2890", side="BUY", order_type="LIMIT",
        qty=Decimal(qty), price=None if price is None else Decimal(price), filled_qty=filled_qty,
        avg_fill_price=Decimal(price or 0) if filled_qty else None, fills=fills,
        updated_at=None if updated is None else T0 + timedelta(seconds=updated), **kw)


def scenes(previous: OrderSnapshot | None, current: OrderSnapshot) -> list[str]:
    return [e.scene for e in diff(previous, current, detected_at=NOW).events]


D1, D2, D3 = ("d1", 3, "10"), ("d2", 3, "10"), ("d3", 4, "10")

CASES = [
    # (name, previous, current, expected scenes)
    ("first seen working", None, snap(S.SUBMITTED), ["PLACED"]),
    ("first seen pending", None, snap(S.PENDING), ["PLACED"]),
    ("first seen partly filled", None, snap(S.PARTIAL_FILLED, 4), ["PLACED", "FILLED"]),
    ("first seen filled", None, snap(S.FILLED, 10), ["FINAL_FILLED"]),
    ("first seen filled, 3 deals", None, snap(S.FILLED, deals=(D1, D2, D3)),
     ["FILLED", "FILLED", "FINAL_FILLED"]),
    ("first seen cancelled with fills", None, snap(S.CANCELLED, 3),
     ["FILLED", "CANCEL_SUCCESS"]),
    ("first seen rejected", None, snap(S.FAILED), ["PLACE_FAILED"]),
    ("first seen expired", None, snap(S.EXPIRED), ["EXPIRED"]),
    ("unchanged", snap(), snap(), []),
    ("accepted", snap(S.PENDING), snap(S.SUBMITTED), []),
    ("partial fill", snap(), snap(S.PARTIAL_FILLED, 4), ["FILLED"]),
    ("second partial fill", snap(S.PARTIAL_FILLED, 4), snap(S.PARTIAL_FILLED, 7), ["FILLED"]),
    ("filled in one step", snap(), snap(S.FILLED, 10), ["FINAL_FILLED"]),
    ("pending to filled", snap(S.PENDING), snap(S.FILLED, 10), ["FINAL_FILLED"]),
    ("filled with deals between polls", snap(), snap(S.FILLED, deals=(D1, D2, D3)),
     ["FILLED", "FILLED", "FINAL_FILLED"]),
    ("new deal only", snap(S.PARTIAL_FILLED, deals=(D1,)),
     snap(S.PARTIAL_FILLED, deals=(D1, D2)), ["FILLED"]),
    ("deal list appears after synthetic fills", snap(S.PARTIAL_FILLED, 3),
     snap(S.PARTIAL_FILLED, deals=(D1, D2)), ["FILLED"]),
    ("cancel after partial", snap(S.PARTIAL_FILLED, 4), snap(S.CANCELLED, 4),
     ["CANCEL_SUCCESS"]),
    ("fill and cancel between polls", snap(S.SUBMITTED), snap(S.CANCELLED, 4),
     ["FILLED", "CANCEL_SUCCESS"]),
    ("rejected", snap(S.PENDING), snap(S.FAILED), ["PLACE_FAILED"]),
    ("expired", snap(), snap(S.EXPIRED), ["EXPIRED"]),
    ("price modified", snap(price="10"), snap(price="9.5"), ["MODIFY_SUCCESS"]),
    ("qty modified", snap(qty=10), snap(qty=6), ["MODIFY_SUCCESS"]),
    ("modified then filled", snap(price="10"), snap(S.PARTIAL_FILLED, 2, price="9.9"),
     ["MODIFY_SUCCESS", "FILLED"]),
    ("cancel pending", snap(), snap(S.PENDING_CANCEL), []),
    ("cancel refused", snap(S.PENDING_CANCEL), snap(S.SUBMITTED), ["CANCEL_FAILED"]),
    ("cancel refused after fill", snap(S.PENDING_CANCEL, 2), snap(S.PARTIAL_FILLED, 2),
     ["CANCEL_FAILED"]),
    ("cancel raced by fill", snap(S.PENDING_CANCEL), snap(S.FILLED, 10), ["FINAL_FILLED"]),
    ("replace refused", snap(S.PENDING_REPLACE), snap(S.SUBMITTED), ["MODIFY_FAILED"]),
    ("replace done", snap(S.PENDING_REPLACE, price="10"), snap(S.SUBMITTED, price="10.5"),
     ["MODIFY_SUCCESS"]),
    ("cancelled order's quantity is not a modification", snap(qty=10), snap(S.CANCELLED, qty=4),
     ["CANCEL_SUCCESS"]),
    # Never backwards:
    ("working after filled", snap(S.FILLED, 10), snap(S.SUBMITTED), []),
    ("cancelled after filled", snap(S.FILLED, 10), snap(S.CANCELLED, 10), []),
    ("pending after working", snap(S.SUBMITTED), snap(S.PENDING), []),
    ("smaller fill than known", snap(S.PARTIAL_FILLED, 5), snap(S.PARTIAL_FILLED, 3), []),
    ("older update time", snap(S.SUBMITTED, updated=10), snap(S.PARTIAL_FILLED, 2, updated=5),
     []),
    # Provisional terminal (LongPort Expired on GTC):
    ("provisional expiry is silent", snap(), snap(S.EXPIRED, provisional=True), []),
    ("back to working after provisional expiry", snap(S.EXPIRED, provisional=True),
     snap(S.SUBMITTED), []),
    ("filled after provisional expiry", snap(S.EXPIRED, provisional=True), snap(S.FILLED, 10),
     ["FINAL_FILLED"]),
    ("expiry confirmed", snap(S.EXPIRED, provisional=True), snap(S.EXPIRED), ["EXPIRED"]),
]


@pytest.mark.parametrize(("previous", "current", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_transitions(previous: OrderSnapshot | None, current: OrderSnapshot,
                     expected: list[str]) -> None:
    assert scenes(previous, current) == expected


@pytest.mark.parametrize(("previous", "current", "stored"), [
    (snap(S.FILLED, 10), snap(S.SUBMITTED), S.FILLED),
    (snap(S.PARTIAL_FILLED, 5), snap(S.PARTIAL_FILLED, 3), S.PARTIAL_FILLED),
    (snap(S.EXPIRED, provisional=True), snap(S.SUBMITTED), S.SUBMITTED),
    (snap(), snap(S.PENDING_CANCEL), S.PENDING_CANCEL),
])
def test_stored_snapshot(previous: OrderSnapshot, current: OrderSnapshot,
                         stored: OrderStatus) -> None:
    result = diff(previous, current, detected_at=NOW)
    assert result.snapshot is not None and result.snapshot.status is stored


def test_out_of_order_data_is_flagged_ignored() -> None:
    result = diff(snap(S.FILLED, 10), snap(S.SUBMITTED), detected_at=NOW)
    assert result.ignored and result.events == []
    assert is_behind(snap(S.PARTIAL_FILLED, 5), snap(S.PARTIAL_FILLED, 3))
    assert not is_behind(snap(S.EXPIRED, provisional=True), snap(S.SUBMITTED))


def test_baseline_records_without_events() -> None:
    result = diff(None, snap(S.PARTIAL_FILLED, 4), detected_at=NOW, announce=False)
    assert result.events == [] and result.snapshot is not None


def test_unknown_status_keeps_previous_status_and_warns() -> None:
    odd = replace(snap(S.SUBMITTED, 4), unknown_status=True, broker_status="Mystery")
    result = diff(snap(S.SUBMITTED), odd, detected_at=NOW)
    assert result.snapshot is not None and result.snapshot.status is S.SUBMITTED
    assert result.snapshot.broker_status == "Mystery"
    assert [e.scene for e in result.events] == ["FILLED"]
    assert result.warnings and "Mystery" in result.warnings[0]


def test_unknown_status_on_first_sighting_is_not_tracked() -> None:
    odd = replace(snap(), unknown_status=True, broker_status="Mystery")
    result = diff(None, odd, detected_at=NOW)
    assert result.snapshot is None and result.events == [] and result.warnings


def test_event_payload_threads_status_through_steps() -> None:
    events = diff(snap(S.SUBMITTED), snap(S.FILLED, deals=(D1, D2, D3)), detected_at=NOW).events
    payloads = [e.payload for e in events]
    assert [p["order_status"] for p in payloads] == ["PARTIAL_FILLED", "PARTIAL_FILLED", "FILLED"]
    assert [p["previous_status"] for p in payloads] == ["SUBMITTED", "PARTIAL_FILLED",
                                                        "PARTIAL_FILLED"]
    assert [p["filled_qty"] for p in payloads] == ["3", "6", "10"]
    assert [p["last_fill_qty"] for p in payloads] == ["3", "3", "4"]
    assert payloads[-1]["scene_type"] == "FINAL_FILLED"


def test_modification_lists_field_changes() -> None:
    event = diff(snap(qty=1000, price="101.5"), snap(qty=600, price="101.0"),
                 detected_at=NOW).events[0]
    assert event.payload["changes"] == {"qty": {"old": "1000", "new": "600"},
                                        "price": {"old": "101.5", "new": "101"}}


def test_synthetic_fill_price_is_the_marginal_price() -> None:
    before = replace(snap(S.PARTIAL_FILLED, 4), avg_fill_price=Decimal("10"))
    after = replace(snap(S.PARTIAL_FILLED, 8), avg_fill_price=Decimal("11"))
    event = diff(before, after, detected_at=NOW).events[0]
    assert event.payload["last_fill_qty"] == "4" and event.payload["last_fill_price"] == "12"


def test_event_ids_are_deterministic_and_distinct() -> None:
    first = diff(None, snap(S.FILLED, deals=(D1, D2, D3)), detected_at=NOW).events
    again = diff(None, snap(S.FILLED, deals=(D1, D2, D3)), detected_at=NOW + timedelta(1)).events
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == 3
    other = replace(snap(S.FILLED, deals=(D1, D2, D3)), order_id="O2")
    assert not {e.id for e in first} & {e.id for e in diff(None, other, detected_at=NOW).events}
    # The same growth seen through different polls is the same fact.
    one = diff(snap(), snap(S.PARTIAL_FILLED, 4), detected_at=NOW).events[0]
    two = diff(None, snap(S.PARTIAL_FILLED, 4), detected_at=NOW).events[1]
    assert one.id == two.id and one.id.startswith("evt_")


def test_event_json_shape() -> None:
    event = diff(None, snap(S.FILLED, 10), detected_at=NOW).events[0]
    data = event.to_json()
    assert set(data) == {"id", "event_type", "timestamp", "payload"}
    assert data["event_type"] == "TRADE" and data["timestamp"] == "2026-05-20T03:29:30.000Z"
    for key in ("broker", "broker_kind", "account_id", "order_id", "client_order_id", "symbol",
                "side", "order_type", "qty", "price", "filled_qty", "filled_price",
                "last_fill_qty", "last_fill_price", "order_status", "previous_status",
                "broker_status", "scene_type", "changes", "event_time", "detected_at"):
        assert key in data["payload"], key
    assert all(isinstance(data["payload"][k], str) for k in ("qty", "price", "filled_qty"))


# -- properties over random order lives ------------------------------------------------------

@st.composite
def order_lives(draw: st.DrawFn) -> tuple[list[OrderSnapshot], list[int]]:
    """A true order life (monotone states) and the indices a poller happens to observe,
    with repeats and out-of-order re-deliveries."""
    qty = draw(st.integers(1, 50))
    fills = draw(st.lists(st.integers(1, 10), max_size=6))
    end = draw(st.sampled_from([None, S.FILLED, S.CANCELLED, S.FAILED, S.EXPIRED]))
    states = [snap(S.PENDING, qty=qty), snap(S.SUBMITTED, qty=qty)]
    filled = 0
    for amount in fills:
        amount = min(amount, qty - filled)
        if amount <= 0:
            break
        filled += amount
        status = S.FILLED if filled == qty else S.PARTIAL_FILLED
        states.append(snap(status, filled, qty=qty))
        if status is S.FILLED:
            break
    if end is not None and states[-1].status is not S.FILLED:
        if end is S.FILLED:
            states.append(snap(S.FILLED, qty, qty=qty))
        elif end is not S.FAILED or filled == 0:
            states.append(snap(end, filled, qty=qty))
    order = draw(st.lists(st.integers(0, len(states) - 1), min_size=1, max_size=12))
    return states, order


@settings(max_examples=400, deadline=None)
@given(order_lives())
def test_any_observation_order_reports_each_fact_once(
        life: tuple[list[OrderSnapshot], list[int]]) -> None:
    states, observed = life
    known: OrderSnapshot | None = None
    events = []
    for index in observed:
        result = diff(known, states[index], detected_at=NOW)
        events.extend(result.events)
        known = result.snapshot if result.snapshot is not None else known
    assert known is not None
    best = max((states[i] for i in observed), key=lambda s: (s.status.stage, s.filled_qty))
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event was emitted twice"
    fills = sum(Decimal(e.payload["last_fill_qty"]) for e in events
                if e.payload["last_fill_qty"] is not None)
    assert fills == known.filled_qty == best.filled_qty
    terminal = [e.scene for e in events if e.scene in
                ("FINAL_FILLED", "CANCEL_SUCCESS", "PLACE_FAILED", "EXPIRED")]
    assert len(terminal) == (1 if known.final else 0)
    assert [e.scene for e in events].count("PLACED") <= 1
