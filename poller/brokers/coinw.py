"""CoinW spot through its private REST API (brokers.md §5, seed 004).

Discovery is ``returnOpenOrders``, one call per configured pair (the endpoint takes exactly one
``currencyPair``). Finished orders drop out of that list, so the daemon confirms every order
that leaves it with a per-order read (:meth:`CoinWAdapter.fetch_order`) before anything is
concluded.

The per-order read is ``returnOrderTrades``, CoinW's order detail: one answer carries the
order's status, size, filled base and quote amounts, so one request sees any change, a
further partial fill included. ``returnOrderStatus`` (seed 004) has a status but no filled
quantity, so it could see a first fill but never the next; it is asked only when
``returnOrderTrades`` has nothing to say about an order (see :meth:`CoinWAdapter.fetch_order`).
JKorf's CoinW.Net, code nobody here wrote, reads the two calls the same way: its
``GetOrderAsync`` is ``returnOrderTrades`` into ``CoinWOrderDetails`` (``status`` the order
status 1–4, ``success_total`` the filled quantity, ``success_amount`` the filled quote).

Every private call is ``POST /api/v1/private?command=<cmd>&<params>&api_key=…&sign=…`` with
an empty body, signed with MD5 as :func:`sign` describes; there is no timestamp or nonce.

Known limits of what CoinW lets a poller see:

* An order placed and finished between two list calls never appears in ``returnOpenOrders``
  and is never reported (CoinW has no "orders changed since" call we could rely on).
* The per-order calls answer only for orders at most 7 days old; older orders that leave
  the open list are retired with an operator event (``retire_after``) instead of probed.
* Statuses 5 (triggered) and 6 (trigger failed) are mentioned for conditional orders by
  CoinW's own skill but not documented for these endpoints: they are flagged as unknown
  (``unknown_status``), never mapped by guess.

Over 400 lines: one broker's whole adapter (signing, config, its three answers' parsing,
its error table, the per-order read and its fallback), one broker per file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import httpx
from pydantic import AfterValidator, Field, SecretStr, field_validator

from poller import (
    Answer,
    BrokerAdapter,
    BrokerAuthError,
    BrokerConfig,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerUnavailable,
    ErrorAnswer,
    ErrorTable,
    LimitSpec,
    ListResult,
    ListScope,
    OrderSnapshot,
    OrderStatus,
    ParseCache,
    RateBudget,
    RequestKind,
    Success,
    hookimpl,
    to_decimal,
)

logger = logging.getLogger(__name__)

PRIVATE_PATH = "/api/v1/private"
#: CoinW renders ``returnOrderStatus``/``returnOrderTrades`` dates in Beijing time (JKorf
#: CoinW.Net subtracts 8 hours); ``returnOpenOrders`` dates are epoch milliseconds.
BEIJING = timezone(timedelta(hours=8))

#: Every documented CoinW spot status (brokers.md 5.6) → canonical status. 5/6 are left out
#: on purpose: they are UNVERIFIED for this endpoint and become ``unknown_status``.
STATUS_TABLE: dict[int, OrderStatus] = {
    1: OrderStatus.SUBMITTED,  # uncompleted (open, nothing filled)
    2: OrderStatus.PARTIAL_FILLED,  # partially completed, still working
    3: OrderStatus.FILLED,  # fully completed
    4: OrderStatus.CANCELLED,  # user cancelled, possibly after partial fills
}

SUCCESS_CODE = "200"

#: Error table (brokers.md 5.3). 29001 decides whatever the HTTP status (CoinW documents
#: none for it). -103 and -3 are CoinW's "invalid parameter", and -103 is also how it
#: refuses an unknown order (no code is documented for that), so the message decides:
#: "no such order" to a per-order read, a plain refusal otherwise.
#: The penalty: CoinW answers violations with 29001, then a 30 s total ban if errors
#: continue (brokers.md 5.4); 65 s leaves the ban and a full 10 s error-counting window with
#: a margin. We stop at the first 29001, far below the error count that opens CoinW's
#: 5-minute warning phase, so we do not wait that out.
ERRORS = ErrorTable(
    exact={
        "29001": BrokerRateLimited,
        "429": BrokerRateLimited,
        "1003": BrokerAuthError,
        "6000": BrokerAuthError,
        "-200": BrokerUnavailable,
    },
    broad={
        r"(?i)not\s*(?:exist|found)|does\s*n[o']?t\s+exist|no\s+such\s+order|不存在":
            BrokerNotFound,
    },
    meanings={"-103": "invalid parameter", "-3": "invalid parameter"},
    penalty=65.0,
)
#: What a ``returnOrderTrades`` answer says of the fills: filled base quantity and average
#: price, or ``None`` when CoinW had no detail for the order.
TradesRead = tuple[Decimal, Decimal | None] | None

#: Signed URLs kept at most (one or two per open order, one per pair's list call): about
#: 15 MB when full, room for four times the 5 000 open orders of ``bench.run``.
URL_CACHE_SIZE = 20_000

#: ``returnOrderStatus`` answers only for orders at most 7 days old (seed 004).
STATUS_WINDOW = 7 * 24 * 3600.0

DETAIL_SOURCE = "returnOrderTrades"
STATUS_SOURCE = "returnOrderStatus"
LIST_SOURCE = "returnOpenOrders"

T = TypeVar("T")

_PAIR = re.compile(r"^[A-Z0-9]+_[A-Z0-9]+$")
_DIGITS = re.compile(r"^-?\d+$")
_BEIJING_TIME = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2}) (\d{1,2}):(\d{1,2}):(\d{1,2})$")


# -- signing ----------------------------------------------------------------------------------


def signing_payload(params: Mapping[str, str], api_key: str, secret_key: str) -> str:
    """The exact text CoinW spot signs (brokers.md §5.2).

    Every parameter except ``sign`` and ``command``, plus ``api_key``, sorted by name and
    joined as ``k=v`` with ``&``, values *not* URL-encoded (the official sample warns that
    encoding breaks values like ``1,2``), then ``&secret_key=<secret>``.
    """
    fields = {k: v for k, v in params.items() if k not in ("sign", "command")}
    fields["api_key"] = api_key
    joined = "&".join(f"{name}={fields[name]}" for name in sorted(fields))
    return f"{joined}&secret_key={secret_key}"


def sign(params: Mapping[str, str], api_key: str, secret_key: str) -> str:
    """``UPPER(hex(MD5(utf8(signing_payload(...)))))``: 32 upper-case hex digits."""
    payload = signing_payload(params, api_key, secret_key).encode("utf-8")
    # MD5 is CoinW's protocol, not our choice of hash; say so for FIPS-mode Pythons.
    return hashlib.md5(payload, usedforsecurity=False).hexdigest().upper()


def signed_query(
    command: str, params: Mapping[str, str], api_key: str, secret_key: str
) -> list[tuple[str, str]]:
    """Query parameters of one private call, in the official sample's order."""
    return [
        ("command", command),
        *sorted(params.items()),
        ("api_key", api_key),
        ("sign", sign(params, api_key, secret_key)),
    ]


# -- config -----------------------------------------------------------------------------------


def _pair(value: str) -> str:
    if _PAIR.match(value):
        return value
    hint = re.sub(r"[-/: ]", "_", value.strip().upper())
    suggestion = f"; did you mean {hint!r}?" if _PAIR.match(hint) else ""
    raise ValueError(f"pair {value!r} is not like BTC_USDT (upper-case BASE_QUOTE){suggestion}")


Pair = Annotated[str, AfterValidator(_pair)]


class CoinWConfig(BrokerConfig):
    """``[brokers.NAME]`` with ``kind = "coinw"`` (spot)."""

    kind: Literal["coinw"] = "coinw"
    base_url: str = Field(default="https://api.coinw.com", description="CoinW's REST host.")
    api_key: SecretStr = Field(description="The spot API key (Access Key).")
    secret_key: SecretStr = Field(description="The spot Secret Key (signs every request).")
    pairs: list[Pair] = Field(
        min_length=1, description="Pairs to poll for open orders, e.g. [\"BTC_USDT\"]."
    )
    account_id: str = Field(
        default="spot", min_length=1, description="The account name shown in events."
    )

    @field_validator("api_key", "secret_key")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


# -- parsing ----------------------------------------------------------------------------------


def order_number(value: Any) -> str:
    """An order number as an exact string (they exceed 2**53 and arrive as number or string).

    :raises TypeError: for a float (it has already lost digits) or another type.
    :raises ValueError: for an empty or fractional value.
    """
    if isinstance(value, bool):
        raise TypeError("order number is a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"order number {value} is not an integer")
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("order number is empty")
        return str(int(text)) if _DIGITS.match(text) else text
    raise TypeError(f"order number is a {type(value).__name__}, expected an integer or string")


def read_status(value: Any) -> tuple[OrderStatus | None, str]:
    """Map a CoinW status (int or numeric string) through :data:`STATUS_TABLE`.

    :returns: the canonical status (``None`` when undocumented) and the raw value as text.
    """
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str) and _DIGITS.match(value.strip()):
        number = int(value.strip())
    if number is None:
        return None, str(value)
    return STATUS_TABLE.get(number), str(number)


def _moment(value: Any) -> datetime | None:
    """Epoch milliseconds (``returnOpenOrders``) or ``YYYY-MM-DD HH:MM:SS`` Beijing time."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not _DIGITS.match(value.strip()):
        # What strptime("%Y-%m-%d %H:%M:%S") reads, at a fraction of its CPU (every status
        # answer carries a date); an impossible date still raises ValueError.
        found = _BEIJING_TIME.match(value.strip())
        if found is None:
            raise ValueError(f"time data {value!r} does not match YYYY-MM-DD HH:MM:SS")
        year, month, day, hour, minute, second = map(int, found.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)
    number = to_decimal(value)
    if not number:  # 0 means "no date", not 1970 (which would retire the order at once)
        return None
    # Milliseconds are documented; tolerate seconds (anything before 1973 in ms is seconds).
    millis = int(number) if number > Decimal(10) ** 11 else int(number * 1000)
    return datetime.fromtimestamp(millis // 1000, UTC) + timedelta(milliseconds=millis % 1000)


def _lenient_moment(value: Any) -> datetime | None:
    """Like :func:`_moment`, but an unreadable date is ``None``: a probe must not fail (and
    hold back a FILLED or CANCELLED) over a field that only feeds ``placed_at``."""
    try:
        return _moment(value)
    except (TypeError, ValueError, ArithmeticError):
        return None


def _amount(value: Any) -> Decimal:
    return to_decimal(value, default=Decimal(0)) or Decimal(0)


def _side(value: Any) -> str:
    text = str(value or "").strip()
    return {"buy": "BUY", "sell": "SELL"}.get(text.lower(), text.upper())


def average_price(base_filled: Decimal, quote_filled: Decimal) -> Decimal | None:
    """Average fill price from filled base and quote amounts (``None`` before any fill)."""
    if base_filled <= 0 or quote_filled <= 0:
        return None
    return (quote_filled / base_filled).quantize(Decimal("1e-10")).normalize()


def parse_open_order(item: Any, *, broker: str, account_id: str, pair: str) -> OrderSnapshot:
    """Read one ``returnOpenOrders`` item into an :class:`OrderSnapshot`.

    Fields: ``orderNumber``, ``date`` (ms), ``startingAmount`` (quote), ``total`` (base size,
    the order quantity), ``type`` (buy/sell), ``prize`` (limit price), ``success_count``
    (filled base), ``success_amount`` (filled quote, so the average fill price is
    ``success_amount / success_count``; JKorf CoinW.Net reads them the same way), ``status``.

    :raises KeyError, TypeError, ValueError: when the item is not a readable order.
    """
    if not isinstance(item, dict):
        raise TypeError(f"expected an object, got {type(item).__name__}")
    number = order_number(item["orderNumber"])
    status, raw = read_status(item["status"])
    filled = _amount(item.get("success_count"))
    price = to_decimal(item.get("prize"))
    return OrderSnapshot(
        broker=broker,
        broker_kind="coinw",
        account_id=account_id,
        order_id=number,
        status=status or OrderStatus.SUBMITTED,
        unknown_status=status is None,
        broker_status=raw,
        symbol=str(item.get("currencyPair") or pair),
        side=_side(item.get("type")),
        # An order with a limit price is a limit order; the list does not say more.
        order_type="LIMIT" if price else "",
        qty=_amount(item["total"]),
        price=price or None,
        filled_qty=filled,
        avg_fill_price=average_price(filled, _amount(item.get("success_amount"))),
        placed_at=_moment(item.get("date")),
        extra={"starting_amount": str(item.get("startingAmount") or "")},
        origin=LIST_SOURCE,
    )


def _order_answer(data: Any, *, broker: str, account_id: str, order_id: str, origin: str,
                  amount_field: str, filled: Decimal = Decimal(0),
                  average: Decimal | None = None) -> OrderSnapshot:
    """What both per-order answers say alike: status, pair, side, size, placement date (in
    Beijing time), and the order's amount in the quote currency (``amount_field``)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    status, raw = read_status(data["status"])
    return OrderSnapshot(
        broker=broker,
        broker_kind="coinw",
        account_id=account_id,
        order_id=order_id,
        status=status or OrderStatus.SUBMITTED,
        unknown_status=status is None,
        broker_status=raw,
        symbol=str(data.get("currencyPair") or ""),
        side=_side(data.get("type")),
        qty=_amount(data["total"]),
        filled_qty=filled,
        avg_fill_price=average,
        placed_at=_lenient_moment(data.get("date")),
        extra={"starting_amount": str(data.get(amount_field) or "")},
        origin=origin,
    )


def parse_order_status(
    data: Any, *, broker: str, account_id: str, order_id: str
) -> OrderSnapshot:
    """Read a ``returnOrderStatus`` answer (seed 004) into an :class:`OrderSnapshot`.

    The answer has no price and no filled quantity; :meth:`CoinWAdapter.fetch_order` adds
    them. ``date`` is read as the placement time in Beijing time.

    :raises KeyError, TypeError, ValueError: when the answer is not a readable order.
    """
    return _order_answer(data, broker=broker, account_id=account_id, order_id=order_id,
                         origin=STATUS_SOURCE, amount_field="startingAmount")


def parse_order_trades(data: Any) -> tuple[Decimal, Decimal | None]:
    """Filled base quantity and average price from a ``returnOrderTrades`` answer.

    Documented fields (brokers.md 5.5): ``tradeID, currencyPair, type, amount,
    success_amount, total, success_total, fee, date, status``; ``success_total`` is the
    filled base quantity and ``success_amount`` the filled quote amount (JKorf CoinW.Net).

    :raises KeyError, TypeError, ValueError: when the answer is not readable.
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    filled = _amount(data["success_total"])
    return filled, average_price(filled, _amount(data.get("success_amount")))


def parse_order_detail(
    data: Any, *, broker: str, account_id: str, order_id: str
) -> OrderSnapshot:
    """Read a ``returnOrderTrades`` answer, CoinW's order detail, into an
    :class:`OrderSnapshot`: status, size, filled quantity and average price in one answer.

    ``tradeID`` is the order number, ``status`` the order's status (1–4, as
    ``returnOrderStatus`` reports it), ``total`` its size, ``amount`` its size in the
    quote currency, and ``success_total`` / ``success_amount`` the filled base / quote
    amounts; ``date`` is read as the placement time in Beijing time (JKorf CoinW.Net:
    ``CoinWOrderDetails``, "CreateTime", minus 8 hours). The answer has no limit price:
    :func:`carry_over` keeps the list's.

    :raises KeyError, TypeError, ValueError: when the answer is not a readable order.
    """
    filled, average = parse_order_trades(data)
    return _order_answer(data, broker=broker, account_id=account_id, order_id=order_id,
                         origin=DETAIL_SOURCE, amount_field="amount", filled=filled,
                         average=average)


def carry_over(known: OrderSnapshot | None, probed: OrderSnapshot) -> OrderSnapshot:
    """Complete a per-order snapshot (``returnOrderTrades`` or ``returnOrderStatus``) with
    what the open-orders list said.

    Neither per-order answer has the limit price, and their ``date`` has a second's
    resolution. CoinW spot has no amend endpoint, so price, quantity, starting amount and
    placement time never change after placement: the list's values are the order's values,
    and keeping them avoids a false MODIFY_SUCCESS, a price disappearing from the final
    event, or a snapshot that differs from the list's only in how the two calls write
    the same facts (a false change, stored and re-polled for nothing).
    """
    if known is None or probed.origin == LIST_SOURCE:
        return probed
    if known.order_id != probed.order_id:
        return probed
    qty = known.qty or probed.qty
    return replace(
        probed,
        price=known.price if known.price is not None else probed.price,
        qty=qty,
        # A filled order filled exactly its quantity.
        filled_qty=qty if probed.status is OrderStatus.FILLED else probed.filled_qty,
        side=known.side or probed.side,
        order_type=known.order_type or probed.order_type,
        symbol=probed.symbol or known.symbol,
        placed_at=known.placed_at or probed.placed_at,
        extra=known.extra or probed.extra,
    )


def url_key(command: str, params: Mapping[str, str]) -> tuple[Any, ...]:
    """What identifies one call's signed URL: the command and its parameters, in order."""
    return (command, *sorted(params.items()))


# -- the adapter -------------------------------------------------------------------------------


class CoinWAdapter(BrokerAdapter[CoinWConfig]):
    """Polls CoinW spot open orders per pair and confirms finished ones per order."""

    kind: ClassVar[str] = "coinw"
    Config: ClassVar[type[BrokerConfig]] = CoinWConfig
    # brokers.md 5.4: 30 requests / 2 s per endpoint per user, and 300/s per UID across all
    # spot endpoints, which every private request also consumes.
    limits: ClassVar[dict[str, LimitSpec]] = {
        "returnOpenOrders": LimitSpec(30, 2.0),
        "returnOrderStatus": LimitSpec(30, 2.0),
        "returnOrderTrades": LimitSpec(30, 2.0),
        "cancelOrder": LimitSpec(30, 2.0),
        "uid": LimitSpec(300, 1.0),
    }
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        RequestKind.LIST: ("returnOpenOrders", "uid"),
        # The per-order read: status and fills in one answer (see fetch_order).
        RequestKind.DETAIL: ("returnOrderTrades", "uid"),
        # Only when returnOrderTrades has nothing to say about an order.
        RequestKind.FOLLOW_UP: ("returnOrderStatus", "uid"),
        RequestKind.CANCEL: ("cancelOrder", "uid"),
    }
    errors: ClassVar[ErrorTable] = ERRORS
    supports_fetch: ClassVar[bool] = True
    retire_after: ClassVar[float | None] = STATUS_WINDOW

    def __init__(
        self, name: str, config: CoinWConfig, client: httpx.AsyncClient, budget: RateBudget
    ) -> None:
        super().__init__(name, config, client, budget)
        # The last list snapshot of each order, so a per-order read can keep the price the
        # per-order answers do not give (see carry_over). Dropped once the order is final.
        self._listed: dict[str, OrderSnapshot] = {}
        self._cache = ParseCache()
        self._private: httpx.URL | None = None
        # (command, *params) → the signed URL and its sign (see _signed_url).
        self._urls: dict[tuple[Any, ...], tuple[httpx.URL, str]] = {}

    @classmethod
    def check(cls, config: CoinWConfig) -> list[tuple[str, str]]:
        """Pairs listed twice (each would be polled twice, halving its share of the budget).

        An interval the ``returnOpenOrders`` budget cannot keep is refused by the daemon's
        generic budget check (one list call per pair).
        """
        problems: list[tuple[str, str]] = []
        seen: set[str] = set()
        for pair in config.pairs:
            if pair in seen:
                problems.append(("pairs", f"{pair} is listed more than once"))
            seen.add(pair)
        return problems

    def scopes(self) -> list[ListScope]:
        cfg = self.config
        return [ListScope(cfg.account_id, symbol=pair, open_only=True) for pair in cfg.pairs]

    async def list_orders(self, scope: ListScope) -> ListResult:
        pair = scope.symbol or ""
        data = await self._call(RequestKind.LIST, "returnOpenOrders", {"currencyPair": pair})
        if data is None:  # no open orders may come back as null
            data = []
        if not isinstance(data, list):
            raise BrokerMalformed(
                f"returnOpenOrders answered {type(data).__name__}, expected a list of orders",
                connection=self.name)
        orders: list[OrderSnapshot] = []
        problems: list[str] = []
        for index, item in enumerate(data):
            number = item.get("orderNumber") if isinstance(item, dict) else None

            def read(item: Any = item) -> OrderSnapshot:
                return parse_open_order(item, broker=self.name, account_id=scope.account_id,
                                        pair=pair)

            try:
                snapshot = self._cache.get(scope.label, str(number), item, read)
            except (KeyError, TypeError, ValueError, ArithmeticError) as err:
                label = f"order {number}" if number is not None else f"order #{index}"
                problems.append(f"{pair} {label}: {type(err).__name__}: {err}")
                continue
            orders.append(snapshot)
            self._listed[snapshot.order_id] = snapshot
        self._cache.done(scope.label)
        return ListResult(scope, orders, problems)

    async def fetch_order(self, account_id: str, order_id: str) -> OrderSnapshot | None:
        """One order by its number: ``returnOrderTrades``, whose one answer has the status,
        the filled quantity and the average price (see the module docstring).

        Only when that answer says nothing of the order (no such order, or no data) does
        ``returnOrderStatus`` decide, as a second request of the same poll: whether CoinW
        knows the order at all must not rest on an answer about its trades. An answer
        without a ``status`` (a detail shaped unlike the documented one) still gives the
        fills, and ``returnOrderStatus`` the status; so does one whose ``status`` is null.

        :returns: ``None`` when CoinW does not know the order (or it is older than 7 days).
        """
        try:
            data = await self._call(RequestKind.DETAIL, DETAIL_SOURCE, {"orderNumber": order_id})
        except BrokerNotFound:
            data = None
        if not data:
            return await self._by_status(account_id, order_id, None)
        if isinstance(data, dict) and data.get("status") is None:
            fills = self._readable(DETAIL_SOURCE, order_id, lambda: parse_order_trades(data))
            return await self._by_status(account_id, order_id, fills)
        return self._completed(self._readable(DETAIL_SOURCE, order_id, lambda: parse_order_detail(
            data, broker=self.name, account_id=account_id, order_id=order_id)))

    async def _by_status(self, account_id: str, order_id: str,
                         fills: TradesRead) -> OrderSnapshot | None:
        """``returnOrderStatus`` for an order ``returnOrderTrades`` did not describe, with
        the fills that answer gave (``None``: none, so nothing filled unless the list said
        so, or the status is 3 and the order's size filled)."""
        try:
            # Part of a poll the budget already admitted (its returnOrderTrades request).
            data = await self._call(RequestKind.FOLLOW_UP, STATUS_SOURCE,
                                    {"orderNumber": order_id}, companion=True)
        except BrokerNotFound:
            data = None
        if not data:
            self._forget(order_id)
            return None
        snapshot = self._readable(STATUS_SOURCE, order_id, lambda: parse_order_status(
            data, broker=self.name, account_id=account_id, order_id=order_id))
        if fills is not None:
            snapshot = replace(snapshot, filled_qty=fills[0], avg_fill_price=fills[1])
        return self._completed(snapshot)

    def _readable(self, command: str, order_id: str, read: Callable[[], T]) -> T:
        """What ``read`` makes of an answer; a parse error as :class:`BrokerMalformed`."""
        try:
            return read()
        except (KeyError, TypeError, ValueError, ArithmeticError) as err:
            raise BrokerMalformed(f"{command} answer for order {order_id} is not readable: "
                                  f"{type(err).__name__}: {err}", connection=self.name) from err

    def _completed(self, snapshot: OrderSnapshot) -> OrderSnapshot:
        """A per-order snapshot with the list's facts (:func:`carry_over`), the size of a
        filled order as its filled quantity, and the list's filled quantity when it saw
        more (a filled quantity only grows: the larger one is the newer)."""
        order_id = snapshot.order_id
        listed = self._listed.get(order_id)
        snapshot = carry_over(listed, snapshot)
        if snapshot.status is OrderStatus.FILLED and snapshot.qty:
            # A filled order filled exactly its size (returnOrderStatus gives no quantity).
            snapshot = replace(snapshot, filled_qty=snapshot.qty)
        elif listed is not None and listed.filled_qty > snapshot.filled_qty:
            snapshot = replace(snapshot, filled_qty=listed.filled_qty,
                               avg_fill_price=listed.avg_fill_price)
        if snapshot.final:
            self._forget(order_id)
        return snapshot

    def _forget(self, order_id: str) -> None:
        """Drop what is kept for an order that is final or that CoinW no longer knows: its
        list snapshot and its signed URLs. (Should CoinW list it again, both come back.)"""
        self._listed.pop(order_id, None)
        for command in (DETAIL_SOURCE, STATUS_SOURCE, "cancelOrder"):
            self._urls.pop(url_key(command, {"orderNumber": order_id}), None)

    async def refine(
        self, previous: OrderSnapshot | None, current: OrderSnapshot
    ) -> OrderSnapshot:
        """Keep price, quantity and placement time of a probed order (see :func:`carry_over`).

        Covers the probes :meth:`fetch_order` could not complete from its own memory, e.g.
        after a restart.
        """
        return carry_over(previous, current)

    supports_cancel: ClassVar[bool] = True

    def check_action(self, known: OrderSnapshot, kind: str, qty: Decimal | None,
                     price: Decimal | None) -> str | None:
        """CoinW spot has no amend endpoint: a replace is refused with the way out."""
        if kind == "replace":
            return ("CoinW spot cannot modify an order (there is no amend endpoint); cancel it "
                    "and place a new one")
        return super().check_action(known, kind, qty, price)

    async def cancel_order(self, known: OrderSnapshot) -> None:
        """Ask CoinW to cancel an order (``cancelOrder``); the poll reports the outcome.

        :raises BrokerRejected: CoinW refused (e.g. the order is already finished).
        """
        await self._call(RequestKind.CANCEL, "cancelOrder", {"orderNumber": known.order_id})

    # -- wire -------------------------------------------------------------------------------

    async def _call(self, kind: RequestKind, command: str, params: Mapping[str, str], *,
                    companion: bool = False) -> Any:
        """Sign and send one private call; return its ``data`` (``companion``: see
        :meth:`BrokerAdapter.request`)."""
        url, signature = self._signed_url(command, params)
        request = self.client.build_request("POST", url,
                                            headers={"Content-Type": "application/json"})
        answer = await self.request(kind, request, companion=companion)
        # The sign travels in the URL: a message echoing the request must not carry it.
        return self.unwrap(kind, answer, context=f"{command}: ", secrets=(signature,))

    def _signed_url(self, command: str, params: Mapping[str, str]) -> tuple[httpx.URL, str]:
        """The signed URL of one call and its sign, made once per command and parameters.

        CoinW spot signs no timestamp or nonce, so the same call always carries the same
        sign: an order polled every few seconds would otherwise be signed and its URL
        encoded and parsed again each time (about a sixth of a poll's CPU, py-spy on
        ``bench.run``). The cache holds the calls of open orders and the list calls; an
        order's entries go when it is final or unknown to CoinW (:meth:`_forget`), and all of
        them past :data:`URL_CACHE_SIZE` (about 0.75 kB each), which covers orders retired
        unseen.
        """
        key = url_key(command, params)
        known = self._urls.get(key)
        if known is not None:
            return known
        cfg = self.config
        query = signed_query(command, params, cfg.api_key.get_secret_value(),
                             cfg.secret_key.get_secret_value())
        if self._private is None:  # the client's base URL joined with the path, once
            self._private = self.client.build_request("POST", PRIVATE_PATH).url
        # The query encoded as httpx encodes params, set on the prepared URL: one URL parse
        # instead of the three build_request(params=…) makes.
        url = self._private.copy_with(query=str(httpx.QueryParams(tuple(query))).encode("ascii"))
        if len(self._urls) >= URL_CACHE_SIZE:
            self._urls.clear()
        signed = self._urls[key] = (url, query[-1][1])
        return signed

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        """``data`` of a 2xx envelope with code ``"200"``; else the envelope's code and
        ``msg`` (a bare error page has neither).

        :raises BrokerMalformed: a 2xx answer that is no envelope, or a success without data.
        """
        body = answer.body
        if not (isinstance(body, dict) and "code" in body):
            if 200 <= answer.status < 300:
                raise BrokerMalformed(f"answer is not a CoinW envelope ({_shape(body)})",
                                      connection=self.name)
            return ErrorAnswer()
        code = _code_text(body["code"])
        if code == SUCCESS_CODE and 200 <= answer.status < 300:
            if "data" not in body:
                raise BrokerMalformed("success answer without data", connection=self.name)
            return Success(body["data"])
        return ErrorAnswer(code, _envelope_message(body))


def _code_text(value: Any) -> str:
    """The envelope ``code`` as text: ``"200"`` and ``200`` are the same code."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    return str(value).strip()


def _envelope_message(envelope: dict[str, Any]) -> str:
    for key in ("msg", "message"):
        if isinstance(envelope.get(key), str) and envelope[key]:
            return str(envelope[key])
    return ""


def _shape(body: Any) -> str:
    if isinstance(body, dict):
        keys = ", ".join(sorted(str(k) for k in body)[:5])
        return f"an object with keys {keys}" if keys else "an empty object"
    return f"a JSON {type(body).__name__}" if body is not None else "an empty body"


@hookimpl
def register_brokers(register: Callable[[type[BrokerAdapter[Any]]], None]) -> None:
    """Register the CoinW spot adapter."""
    register(CoinWAdapter)


__all__ = [
    "STATUS_TABLE",
    "CoinWAdapter",
    "CoinWConfig",
    "carry_over",
    "order_number",
    "parse_open_order",
    "parse_order_status",
    "parse_order_trades",
    "read_status",
    "sign",
    "signed_query",
    "signing_payload",
]
