"""The canonical model: exact numbers, canonical text, snapshot and event JSON, ids, times,
and the status ladder."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.diff import diff
from poller.models import (
    Fill,
    OrderSnapshot,
    OrderStatus,
    decimal_text,
    iso,
    parse_iso,
    to_decimal,
)

S = OrderStatus
T0 = datetime(2026, 5, 20, 3, 24, 30, 125000, tzinfo=UTC)


@pytest.mark.parametrize(("value", "exact"), [
    (Decimal("1.50"), "1.50"),
    (7, "7"),
    (2**64 + 1, "18446744073709551617"),
    ("27.1", "27.1"),
    ("  1,234.5 ", "1234.5"),
    ("-0.001", "-0.001"),
    ("1e3", "1E+3"),
    ("123456789012345678901234567890.123", "123456789012345678901234567890.123"),
    (None, None),
    ("", None),
])
def test_to_decimal_reads_exactly(value: object, exact: str | None) -> None:
    result = to_decimal(value)
    assert (None if result is None else str(result)) == exact


def test_to_decimal_default_is_only_for_absent_values() -> None:
    zero = Decimal(0)
    assert to_decimal(None, default=zero) is zero
    assert to_decimal("", default=zero) is zero
    assert to_decimal("0", default=Decimal(9)) == 0


@pytest.mark.parametrize(("value", "message"), [
    (1.5, "not a number: float"),
    (float("nan"), "not a number: float"),
    (float("inf"), "not a number: float"),
    (True, "not a number: True"),
    (False, "not a number: False"),
    ("NaN", "not a finite number: 'NaN'"),
    ("sNaN", "not a finite number: 'sNaN'"),
    ("inf", "not a finite number: 'inf'"),
    ("-Infinity", "not a finite number: '-Infinity'"),
    (Decimal("NaN"), "not a finite number: Decimal('NaN')"),
    (Decimal("-Infinity"), "not a finite number: Decimal('-Infinity')"),
    ("12 lots", "not a number: '12 lots'"),
    ("  ", "not a number: '  '"),
    (b"1", "not a number: bytes"),
    ([1], "not a number: list"),
])
def test_to_decimal_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        to_decimal(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("0E-10"), "0"),
    (Decimal("-0"), "0"),
    (Decimal("0.000"), "0"),
    (Decimal("1.500"), "1.5"),
    (Decimal("1E+3"), "1000"),
    (Decimal("100"), "100"),
    (Decimal("-0.00100"), "-0.001"),
    (Decimal("1E-20"), "0.00000000000000000001"),
    (Decimal("123456789012345678"), "123456789012345678"),
    (None, None),
])
def test_decimal_text(value: Decimal | None, text: str | None) -> None:
    assert decimal_text(value) == text


# Up to 36 significant digits: past the default 28-digit decimal context too.
exact_decimals = st.decimals(min_value=Decimal("-1e18"), max_value=Decimal("1e18"),
                             allow_nan=False, allow_infinity=False, places=18)


@given(exact_decimals)
def test_decimal_text_is_canonical_and_exact(value: Decimal) -> None:
    text = decimal_text(value)
    assert text is not None and to_decimal(text) == value
    assert "E" not in text and "e" not in text and text != "-0"
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")
    assert decimal_text(to_decimal(text)) == text


@pytest.mark.parametrize(("status", "stage", "terminal"), [
    (S.PENDING, 0, False),
    (S.SUBMITTED, 1, False),
    (S.PARTIAL_FILLED, 1, False),
    (S.PENDING_CANCEL, 1, False),
    (S.PENDING_REPLACE, 1, False),
    (S.FILLED, 2, True),
    (S.CANCELLED, 2, True),
    (S.FAILED, 2, True),
    (S.EXPIRED, 2, True),
])
def test_status_stage_and_terminal(status: OrderStatus, stage: int, terminal: bool) -> None:
    assert (status.stage, status.terminal) == (stage, terminal)


def test_every_status_is_in_the_table() -> None:
    assert len(OrderStatus) == 9


def snapshot(**kw: object) -> OrderSnapshot:
    fields: dict[str, object] = dict(
        broker="cw", broker_kind="coinw", account_id="spot", order_id="1234567890123456789",
        status=S.SUBMITTED, broker_status="1")
    fields.update(kw)
    return OrderSnapshot(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "provisional", "final"), [
    (S.FILLED, False, True),
    (S.EXPIRED, True, False),
    (S.EXPIRED, False, True),
    (S.PARTIAL_FILLED, False, False),
])
def test_snapshot_final(status: OrderStatus, provisional: bool, final: bool) -> None:
    assert snapshot(status=status, provisional=provisional).final is final


def test_snapshot_key_and_with_status() -> None:
    snap = snapshot(broker_status="weird")
    assert snap.key == ("cw", "spot", "1234567890123456789")
    assert snap.with_status(S.SUBMITTED) == snap
    moved = snap.with_status(S.CANCELLED, "2")
    assert (moved.status, moved.broker_status, moved.order_id) == (S.CANCELLED, "2",
                                                                   snap.order_id)
    assert snap.with_status(S.FAILED).broker_status == "weird"


def test_snapshot_from_json_fills_in_keys_older_rows_lack() -> None:
    minimal = {"broker": "tw", "broker_kind": "shioaji", "account_id": "A", "order_id": "O",
               "status": "FILLED", "broker_status": "Filled"}
    assert OrderSnapshot.from_json(minimal) == OrderSnapshot(
        broker="tw", broker_kind="shioaji", account_id="A", order_id="O", status=S.FILLED,
        broker_status="Filled")


def test_snapshot_json_holds_decimals_as_canonical_text() -> None:
    data = snapshot(qty=Decimal("1000.00"), price=Decimal("0E-8"),
                    fills=(Fill("f1", Decimal("2.50"), None, T0),)).to_json()
    assert (data["qty"], data["price"], data["filled_qty"], data["avg_fill_price"]) == (
        "1000", "0", "0", None)
    assert data["fills"] == [{"fill_id": "f1", "qty": "2.5", "price": None,
                              "time": "2026-05-20T03:24:30.125000Z"}]


# Microsecond times, in any zone (stored snapshots keep every microsecond).
moments = st.builds(
    lambda d, tz: d.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]))
maybe_decimal = st.none() | exact_decimals
snapshots = st.builds(
    OrderSnapshot,
    broker=st.text(), broker_kind=st.sampled_from(["shioaji", "coinw", "longport", "webull"]),
    account_id=st.text(), order_id=st.text(min_size=1), status=st.sampled_from(OrderStatus),
    broker_status=st.text(), symbol=st.text(), side=st.sampled_from(["BUY", "SELL", ""]),
    order_type=st.text(), qty=exact_decimals, price=maybe_decimal, filled_qty=exact_decimals,
    avg_fill_price=maybe_decimal, client_order_id=st.text(),
    fills=st.lists(st.builds(Fill, fill_id=st.text(), qty=exact_decimals, price=maybe_decimal,
                             time=st.none() | moments), max_size=3).map(tuple),
    placed_at=st.none() | moments, updated_at=st.none() | moments, message=st.text(),
    time_in_force=st.text(), provisional=st.booleans(), unknown_status=st.booleans(),
    extra=st.dictionaries(st.text(), st.text(), max_size=3))


@settings(max_examples=200, deadline=None)
@given(snapshots)
def test_snapshot_json_round_trip(snap: OrderSnapshot) -> None:
    """Through real JSON text, as the store keeps it."""
    text = json.dumps(snap.to_json())
    assert OrderSnapshot.from_json(json.loads(text)) == snap


@pytest.mark.parametrize(("moment", "text"), [
    (T0, "2026-05-20T03:24:30.125Z"),
    (datetime(2026, 5, 20, 11, 24, 30, tzinfo=timezone(timedelta(hours=8))),
     "2026-05-20T03:24:30.000Z"),
    (datetime(2026, 5, 20, 3, 24, 30), "2026-05-20T03:24:30.000Z"),  # naive is UTC
    (datetime(2026, 5, 20, 3, 24, 30, 999999, tzinfo=UTC), "2026-05-20T03:24:30.999Z"),
    (None, None),
])
def test_iso(moment: datetime | None, text: str | None) -> None:
    assert iso(moment) == text


@pytest.mark.parametrize(("text", "moment"), [
    ("2026-05-20T03:24:30.125Z", T0),
    ("2026-05-20T11:24:30.125+08:00", T0),
    ("", None),
    (None, None),
])
def test_parse_iso(text: str | None, moment: datetime | None) -> None:
    parsed = parse_iso(text)
    assert parsed == moment
    if parsed is not None:
        assert parsed.utcoffset() is not None


def test_decimal_text_keeps_every_digit_of_a_long_value() -> None:
    """Beyond the default 28-digit context: the text must read back as the same number,
    or a restart would see a false modification."""
    value = Decimal("12345678901.123456789012345678")  # 29 significant digits
    assert Decimal(decimal_text(value) or "") == value
    snap = OrderSnapshot(broker="cw", broker_kind="coinw", account_id="spot", order_id="1",
                         status=OrderStatus.SUBMITTED, broker_status="1", qty=value)
    stored = OrderSnapshot.from_json(snap.to_json())
    assert diff(stored, snap, detected_at=datetime.now(UTC)).events == []


def test_snapshot_times_read_back_to_the_microsecond() -> None:
    moment = datetime(2026, 5, 20, 3, 24, 30, 123456, tzinfo=UTC)
    snap = OrderSnapshot(broker="lp", broker_kind="longport", account_id="a", order_id="1",
                         status=OrderStatus.SUBMITTED, broker_status="New", updated_at=moment,
                         fills=(Fill("f1", Decimal(1), None, moment),))
    assert OrderSnapshot.from_json(snap.to_json()) == snap
