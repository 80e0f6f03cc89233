"""The canonical order model shared by every broker and notifier (design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Context, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any


class OrderStatus(StrEnum):
    """Canonical order status, in the vocabulary of Webull's trade events (seed 001)."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    PARTIAL_FILLED = "PARTIAL_FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    PENDING_REPLACE = "PENDING_REPLACE"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        """True for statuses after which the order never changes again."""
        return self in _TERMINAL

    @property
    def stage(self) -> int:
        """0 = not acknowledged, 1 = working, 2 = finished; never moves to a lower stage."""
        if self is OrderStatus.PENDING:
            return 0
        return 2 if self in _TERMINAL else 1


_TERMINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.FAILED, OrderStatus.EXPIRED}
)


class SceneType(StrEnum):
    """What happened to an order, in the vocabulary of seed 001 plus PLACED and EXPIRED."""

    PLACED = "PLACED"
    FILLED = "FILLED"
    FINAL_FILLED = "FINAL_FILLED"
    PLACE_FAILED = "PLACE_FAILED"
    MODIFY_SUCCESS = "MODIFY_SUCCESS"
    MODIFY_FAILED = "MODIFY_FAILED"
    CANCEL_SUCCESS = "CANCEL_SUCCESS"
    CANCEL_FAILED = "CANCEL_FAILED"
    EXPIRED = "EXPIRED"


class SystemScene(StrEnum):
    """Operator events: things a human must see that are not order transitions."""

    BROKER_AUTH_FAILED = "BROKER_AUTH_FAILED"
    BROKER_RATE_LIMITED = "BROKER_RATE_LIMITED"
    BROKER_UNREACHABLE = "BROKER_UNREACHABLE"
    BROKER_RECOVERED = "BROKER_RECOVERED"
    BROKER_ANSWER_TOO_LARGE = "BROKER_ANSWER_TOO_LARGE"
    PUSH_REFUSED = "PUSH_REFUSED"
    ORDER_STALE = "ORDER_STALE"
    ORDER_RETIRED = "ORDER_RETIRED"
    NOTIFIER_DEAD_LETTER = "NOTIFIER_DEAD_LETTER"
    NOTIFIER_BACKLOG = "NOTIFIER_BACKLOG"
    NOTIFIER_RECOVERED = "NOTIFIER_RECOVERED"
    DATABASE_RECOVERED = "DATABASE_RECOVERED"
    STORE_FAILING = "STORE_FAILING"
    STORE_RECOVERED = "STORE_RECOVERED"


def to_decimal(value: object, *, default: Decimal | None = None) -> Decimal | None:
    """Read a quantity or price from a broker answer without ever going through float.

    Accepts ``Decimal``, ``int`` and numeric strings; ``""``/``None`` give ``default``.
    Floats are refused because a JSON float has already lost precision: parse broker JSON
    with ``parse_float=Decimal``.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip().replace(",", ""))
        except InvalidOperation as err:
            raise ValueError(f"not a number: {value!r}") from err
    else:
        raise ValueError(f"not a number: {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def decimal_text(value: Decimal | None) -> str | None:
    """Render a Decimal canonically: no exponent, no trailing zeros (``"0E-10"`` → ``"0"``)."""
    if value is None:
        return None
    if value == 0:
        return "0"
    # normalize() rounds to the context's precision (28 digits): use one wide enough for
    # every digit this value has, so the text always reads back as the same number.
    digits = len(value.as_tuple().digits)
    return format(value.normalize(Context(prec=max(digits, 28))), "f")


@dataclass(frozen=True)
class Fill:
    """One execution (deal) the broker lists for an order."""

    fill_id: str
    qty: Decimal
    price: Decimal | None
    time: datetime | None = None


@dataclass(frozen=True)
class OrderSnapshot:
    """What a broker says about one order at one moment, in canonical form.

    Quantities and prices are ``Decimal``; ids are strings (CoinW ids exceed 2**53).
    ``qty`` is the order's current total quantity (after any modification). ``fills`` is
    the list of deals when the broker lists them, else empty. ``provisional`` marks a
    terminal-looking status the broker may still take back (LongPort ``Expired`` on a GTC
    order), which the diff does not treat as final.
    """

    broker: str
    broker_kind: str
    account_id: str
    order_id: str
    status: OrderStatus
    broker_status: str
    symbol: str = ""
    side: str = ""
    order_type: str = ""
    qty: Decimal = Decimal(0)
    price: Decimal | None = None
    filled_qty: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    client_order_id: str = ""
    fills: tuple[Fill, ...] = ()
    placed_at: datetime | None = None
    updated_at: datetime | None = None
    message: str = ""
    time_in_force: str = ""
    provisional: bool = False
    unknown_status: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    #: Which call produced this snapshot (CoinW: the list or the status call). Internal: not
    #: a fact the broker stated, so never part of a comparison, never stored — a list answer
    #: and a per-order answer saying the same thing are the same snapshot, not a change.
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """The identity of the order: (connection, account, order id)."""
        return (self.broker, self.account_id, self.order_id)

    @property
    def final(self) -> bool:
        """True when nothing can change any more (terminal and not provisional)."""
        return self.status.terminal and not self.provisional

    def with_status(self, status: OrderStatus, broker_status: str | None = None) -> OrderSnapshot:
        """A copy with another status (used when a status value is not understood)."""
        return replace(
            self,
            status=status,
            broker_status=self.broker_status if broker_status is None else broker_status,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_json` reads back exactly."""
        return {
            "broker": self.broker,
            "broker_kind": self.broker_kind,
            "account_id": self.account_id,
            "order_id": self.order_id,
            "status": self.status.value,
            "broker_status": self.broker_status,
            "symbol": self.symbol,
            "side": self.side,
            "order_type": self.order_type,
            "qty": decimal_text(self.qty),
            "price": decimal_text(self.price),
            "filled_qty": decimal_text(self.filled_qty),
            "avg_fill_price": decimal_text(self.avg_fill_price),
            "client_order_id": self.client_order_id,
            "fills": [
                {
                    "fill_id": f.fill_id,
                    "qty": decimal_text(f.qty),
                    "price": decimal_text(f.price),
                    "time": exact_iso(f.time),
                }
                for f in self.fills
            ],
            "placed_at": exact_iso(self.placed_at),
            "updated_at": exact_iso(self.updated_at),
            "message": self.message,
            "time_in_force": self.time_in_force,
            "provisional": self.provisional,
            "unknown_status": self.unknown_status,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderSnapshot:
        """Rebuild a snapshot stored by :meth:`to_json`."""
        return cls(
            broker=data["broker"],
            broker_kind=data["broker_kind"],
            account_id=data["account_id"],
            order_id=data["order_id"],
            status=OrderStatus(data["status"]),
            broker_status=data["broker_status"],
            symbol=data.get("symbol", ""),
            side=data.get("side", ""),
            order_type=data.get("order_type", ""),
            qty=to_decimal(data.get("qty"), default=Decimal(0)) or Decimal(0),
            price=to_decimal(data.get("price")),
            filled_qty=to_decimal(data.get("filled_qty"), default=Decimal(0)) or Decimal(0),
            avg_fill_price=to_decimal(data.get("avg_fill_price")),
            client_order_id=data.get("client_order_id", ""),
            fills=tuple(
                Fill(
                    fill_id=f["fill_id"],
                    qty=to_decimal(f["qty"], default=Decimal(0)) or Decimal(0),
                    price=to_decimal(f.get("price")),
                    time=parse_iso(f.get("time")),
                )
                for f in data.get("fills", [])
            ),
            placed_at=parse_iso(data.get("placed_at")),
            updated_at=parse_iso(data.get("updated_at")),
            message=data.get("message", ""),
            time_in_force=data.get("time_in_force", ""),
            provisional=bool(data.get("provisional", False)),
            unknown_status=bool(data.get("unknown_status", False)),
            extra=dict(data.get("extra", {})),
        )


def iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with milliseconds and a ``Z``, as in the event JSON."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exact_iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with every microsecond (stored snapshots must read back exactly)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    """Read back what :func:`iso` wrote."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def utcnow() -> datetime:
    """The current time in UTC (one place to read the clock for event timestamps)."""
    return datetime.now(UTC)
