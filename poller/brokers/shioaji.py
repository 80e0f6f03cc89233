"""Shioaji (SinoPac, Taiwan) through its local HTTP API (brokers.md §4, seed 000).

One ``POST /api/v1/order/update_status`` per configured account refreshes and returns every
trade of that account (the flat ``/api/v1/order/trades`` shape is accepted too). The API has
no per-order call. Bound to localhost the server needs no auth; elsewhere it wants
``Authorization: Bearer <api_key>:<secret_key>``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from poller import (
    Answer,
    BrokerAdapter,
    BrokerConfig,
    BrokerMalformed,
    ErrorAnswer,
    ErrorTable,
    Fill,
    LimitSpec,
    ListResult,
    ListScope,
    OrderSnapshot,
    OrderStatus,
    RequestKind,
    Success,
    hookimpl,
    is_loopback,
    to_decimal,
)

if TYPE_CHECKING:
    from .shioajipush import ShioajiEventStream

TAIPEI = timezone(timedelta(hours=8))

#: Every documented Shioaji status (brokers.md 4.4) → canonical status.
STATUS_TABLE: dict[str, OrderStatus] = {
    "PendingSubmit": OrderStatus.PENDING,
    "PreSubmitted": OrderStatus.PENDING,  # reservation order, not yet at the exchange
    "Submitted": OrderStatus.SUBMITTED,
    "PartFilled": OrderStatus.PARTIAL_FILLED,
    "Filling": OrderStatus.PARTIAL_FILLED,  # the pre-1.0 name of PartFilled (Shioaji#27)
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELLED,
    "Failed": OrderStatus.FAILED,
    # Shioaji mirrors Interactive Brokers' names, where Inactive is an order the system
    # accepted but will not work (usually a rejection); it never comes back to life.
    "Inactive": OrderStatus.FAILED,
}

_PRICE_TYPES = {"LMT": "LIMIT", "MKT": "MARKET", "MKP": "MARKET_RANGE"}
_PENALTY = 65.0  # the documented suspension is one minute (brokers.md 4.5); leave a margin


class ShioajiAccount(BaseModel):
    """One account to poll (the ``account`` object of update_status)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_id: str = Field(min_length=1, description="Branch code, e.g. 9A95.")
    account_id: str = Field(min_length=1, description="Account number.")
    account_type: Literal["S", "F"] = Field(default="S", description="S stock, F futures.")


class ShioajiConfig(BrokerConfig):
    """``[brokers.NAME]`` with ``kind = "shioaji"``."""

    kind: Literal["shioaji"] = "shioaji"
    base_url: str = Field(default="http://127.0.0.1:8080",
                          description="The `shioaji server` address.")
    api_key: SecretStr | None = Field(default=None, description="SJ_API_KEY (non-local only).")
    secret_key: SecretStr | None = Field(default=None, description="SJ_SEC_KEY (non-local only).")
    accounts: list[ShioajiAccount] = Field(min_length=1, description="Accounts to poll.")
    endpoint: Literal["update_status", "trades"] = Field(
        default="update_status",
        description="update_status (nested account, as in the docs) or trades (flat).",
    )

    @model_validator(mode="after")
    def _credentials(self) -> ShioajiConfig:
        has_key = self.api_key is not None and bool(self.api_key.get_secret_value())
        has_secret = self.secret_key is not None and bool(self.secret_key.get_secret_value())
        if has_key != has_secret:
            missing = "secret_key" if has_key else "api_key"
            raise ValueError(f"{missing} is required when the other key is set")
        if not has_key and not is_loopback(httpx.URL(self.base_url).host):
            raise ValueError(
                "api_key and secret_key are required when base_url is not on localhost"
            )
        return self


class ShioajiAdapter(BrokerAdapter[ShioajiConfig]):
    """Polls Shioaji accounts with ``update_status``."""

    kind: ClassVar[str] = "shioaji"
    Config: ClassVar[type[BrokerConfig]] = ShioajiConfig
    limits: ClassVar[dict[str, LimitSpec]] = {"orders": LimitSpec(250, 10.0)}
    # One group covers every order call (brokers.md 4.5); update_price and update_qty are
    # the two halves of a replace.
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        RequestKind.LIST: ("orders",),
        RequestKind.REPLACE: ("orders",),
        RequestKind.CANCEL: ("orders",),
    }
    # The error body's code is only the HTTP status again (brokers.md 4.2): the status
    # sorts every answer, and a 429 pauses past the one-minute suspension.
    errors: ClassVar[ErrorTable] = ErrorTable(penalty=_PENALTY)
    supports_fetch: ClassVar[bool] = False
    #: The HTTP API's order and deal callbacks as server-sent events
    #: (:mod:`poller.brokers.shioajipush`, needs ``httpx-sse`` from the ``push`` extra).
    supports_push: ClassVar[bool] = True

    def headers(self) -> dict[str, str]:
        """Auth header when credentials are configured."""
        cfg = self.config
        if cfg.api_key is None or cfg.secret_key is None:
            return {}
        key, secret = cfg.api_key.get_secret_value(), cfg.secret_key.get_secret_value()
        if not key:
            return {}
        return {"Authorization": f"Bearer {key}:{secret}"}

    def scopes(self) -> list[ListScope]:
        return [ListScope(a.account_id) for a in self.config.accounts]

    # -- push -------------------------------------------------------------------------

    @classmethod
    def push_problem(cls, config: ShioajiConfig) -> str | None:
        """Also: the push extra is missing, or the stream would leave the machine unencrypted
        (plain ``http://`` or ``push_tls = false`` are for a loopback address only)."""
        problem = super().push_problem(config)
        if problem is not None:
            return problem
        try:
            from . import shioajipush  # needs httpx_sse
        except ImportError as err:
            return (f"the push extra is missing ({err.name or 'httpx_sse'} cannot be "
                    "imported): pip install '.[push]'")
        url = httpx.URL(config.base_url).join(config.push_url or shioajipush.ORDER_EVENT_PATH)
        if is_loopback(url.host):
            return None
        if not config.push_tls:
            return f"push_tls = false is allowed for a loopback address only, not {url.host}"
        if url.scheme != "https":
            return (f"the order event stream at {url.scheme}://{url.host} would not be "
                    "encrypted: use an https:// base_url or push_url (plain http is for "
                    "loopback only)")
        return None

    def open_push(self) -> ShioajiEventStream:
        """A new subscription to the order event stream of the configured accounts, over
        this connection's client, with the polls' credentials."""
        from . import shioajipush

        cfg = self.config
        secrets = tuple(s.get_secret_value() for s in (cfg.api_key, cfg.secret_key)
                        if s is not None and s.get_secret_value())
        return shioajipush.ShioajiEventStream(shioajipush.StreamSettings(
            connection=self.name,
            url=cfg.push_url or shioajipush.ORDER_EVENT_PATH,
            accounts=tuple(shioajipush.TradeAccount(a.broker_id, a.account_id, a.account_type)
                           for a in cfg.accounts),
            status_table=STATUS_TABLE, quantity=_quantity, headers=self.headers(),
            secrets=secrets, connect_timeout=min(cfg.timeout, 5.0),
        ), self.client)

    async def list_orders(self, scope: ListScope) -> ListResult:
        account = next(a for a in self.config.accounts if a.account_id == scope.account_id)
        if self.config.endpoint == "update_status":
            path = "/api/v1/order/update_status"
            body: dict[str, Any] = {
                "account": {"broker_id": account.broker_id, "account_id": account.account_id}
            }
        else:
            path = "/api/v1/order/trades"
            body = {"account_type": account.account_type, "broker_id": account.broker_id,
                    "account_id": account.account_id}
        request = self.client.build_request("POST", path, json=body, headers=self.headers())
        trades = self.unwrap(RequestKind.LIST, await self.request(RequestKind.LIST, request))
        if not isinstance(trades, list):
            raise BrokerMalformed(
                f"{path} answered {type(trades).__name__}, expected a list of trades",
                connection=self.name)
        orders, problems = [], []
        for index, item in enumerate(trades):
            try:
                orders.append(parse_trade(item, broker=self.name, account_id=account.account_id))
            except (KeyError, TypeError, ValueError, ArithmeticError) as err:
                problems.append(f"trade #{index}: {type(err).__name__}: {err}")
        return ListResult(scope, orders, problems)

    # -- order actions: the orders group (250/10s) covers them too ----------------------------

    supports_replace: ClassVar[bool] = True
    supports_cancel: ClassVar[bool] = True

    def check_action(self, known: OrderSnapshot, kind: str, qty: Decimal | None,
                     price: Decimal | None) -> str | None:
        """Shioaji's update_qty only reduces an order (brokers.md 4.3)."""
        if kind == "replace" and qty is not None and qty > known.qty:
            return (f"Shioaji can only decrease an order's quantity ({known.qty} → {qty} is an "
                    "increase)")
        return super().check_action(known, kind, qty, price)

    async def replace_order(self, known: OrderSnapshot, *, qty: Decimal | None,
                            price: Decimal | None) -> None:
        """``update_price`` and/or ``update_qty`` with the new quantity.

        What ``update_qty``'s ``quantity`` means is not settled by the sources
        (brokers.md §4.3), so the reading chosen is the one of the API poller calls, the
        ``shioaji server`` HTTP API of shioaji 1.7.9: its HTTP reference says "quantity: new
        quantity (decrease only)", and its own CLI help (``shioaji order update-qty
        --help``) "--quantity <QUANTITY>  New quantity". The other reading, "the qty you
        want to subtract", is the docstring of the old pure-Python SDK (1.2.9,
        ``update_order(qty=…)``) and of a tutorial generation whose ``order_quantity`` did not
        net out reductions either — a different API. The tutorial's current example (2,
        reduced with 1, leaves 1) fits both. Should a server read it the other way, the
        action does not fail silently: verification waits for the order to show exactly
        the quantity asked for, else reports MODIFY_FAILED with what the broker shows."""
        if price is not None and price != known.price:
            await self._action(RequestKind.REPLACE, "update_price",
                               {"trade_id": known.order_id, "price": _number(price)})
        if qty is not None and qty != known.qty:
            await self._action(RequestKind.REPLACE, "update_qty",
                               {"trade_id": known.order_id, "quantity": _number(qty)})

    async def cancel_order(self, known: OrderSnapshot) -> None:
        """``cancel_order`` by trade id."""
        await self._action(RequestKind.CANCEL, "cancel_order", {"trade_id": known.order_id})

    async def _action(self, kind: RequestKind, call: str, body: dict[str, Any]) -> None:
        request = self.client.build_request(
            "POST", f"/api/v1/order/{call}", json=body, headers=self.headers())
        self.unwrap(kind, await self.request(kind, request))

    # -- errors: only the envelope reading is Shioaji's --------------------------------------

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        """A 2xx body is the data; an error's words are its ``message`` and ``details``."""
        body = answer.body
        if 200 <= answer.status < 300:
            return super().read_answer(answer)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            details = body.get("details")
            return ErrorAnswer(message=str(body["message"]) + (f" ({details})" if details else ""))
        return ErrorAnswer()


def _number(value: Decimal) -> int | float:
    """A JSON number for Shioaji, which takes plain numbers. Prices have at most a few
    decimals, whose shortest float text is exactly the decimal (27.05 → ``27.05``)."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _moment(state: dict[str, Any], iso_key: str, ts_key: str) -> datetime | None:
    """Either documented timestamp spelling: ISO (``+08:00``) or epoch seconds."""
    value = state.get(iso_key)
    if isinstance(value, str) and value:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=TAIPEI)
    ts = state.get(ts_key)
    if ts is not None and ts != "":
        seconds = to_decimal(ts) or Decimal(0)
        # Some payloads carry nanoseconds; anything past year 2286 in seconds is not seconds.
        while seconds > Decimal(10) ** 10:
            seconds /= 1000
        return datetime.fromtimestamp(float(seconds), UTC)
    return None


def _quantity(status: OrderStatus | None, placed: Decimal | None, net: Decimal | None,
              cancelled: Decimal) -> Decimal:
    """The order's quantity as poller reports it.

    ``status.order_quantity`` is already net of reductions and cancels (brokers.md §4.3,
    from Shioaji's own stock-order tutorial, whose examples are test vectors here: placed 2,
    reduced by 1 → ``order_quantity=1, cancel_quantity=1``; cancelled → ``order_quantity=0,
    cancel_quantity=2``). So a working or filled order's quantity is ``order_quantity`` as
    it stands — subtracting ``cancel_quantity`` again counted every reduction twice. A
    cancelled or failed order reports 0 there; its quantity is the one placed
    (``order.quantity``, else ``order_quantity + cancel_quantity``), and the diff never reads a
    finished order's quantity as a modification.
    """
    if status in (OrderStatus.CANCELLED, OrderStatus.FAILED):
        if placed is not None and placed > 0:
            return placed
        return (net or Decimal(0)) + cancelled
    if net is not None:
        return net
    return (placed or Decimal(0)) - cancelled


def parse_trade(trade: Any, *, broker: str, account_id: str) -> OrderSnapshot:
    """Read one Shioaji Trade into an :class:`OrderSnapshot`.

    :raises KeyError, TypeError, ValueError: when the item is not a readable Trade.
    """
    if not isinstance(trade, dict):
        raise TypeError(f"expected an object, got {type(trade).__name__}")
    order, state = trade["order"], trade["status"]
    contract = trade.get("contract") or {}
    if not isinstance(order, dict) or not isinstance(state, dict):
        raise TypeError("order and status must be objects")
    order_id = str(order.get("id") or state["id"])
    raw_status = str(state["status"])
    status = STATUS_TABLE.get(raw_status)
    placed = to_decimal(order.get("quantity"), default=None)
    net = to_decimal(state.get("order_quantity"), default=None)
    cancelled = to_decimal(state.get("cancel_quantity"), default=Decimal(0)) or Decimal(0)
    deals = state.get("deals") or []
    fills: list[Fill] = []
    for deal in deals:
        ts = deal.get("ts")
        fills.append(Fill(
            fill_id=str(deal["seq"]),
            qty=to_decimal(deal["quantity"], default=Decimal(0)) or Decimal(0),
            price=to_decimal(deal.get("price")),
            time=_moment({"ts": ts}, "-", "ts") if ts is not None else None,
        ))
    deal_sum = sum((f.qty for f in fills), Decimal(0))
    filled = max(to_decimal(state.get("deal_quantity"), default=Decimal(0)) or Decimal(0),
                 deal_sum)
    spent = sum((f.qty * f.price for f in fills if f.price is not None), Decimal(0))
    avg = (spent / deal_sum).quantize(Decimal("0.0001")).normalize() if deal_sum else None
    qty = _quantity(status, placed, net, cancelled)
    modified_price = to_decimal(state.get("modified_price"), default=Decimal(0)) or Decimal(0)
    price = modified_price if modified_price else to_decimal(order.get("price"))
    price_type = str(order.get("price_type", ""))
    action = str(order.get("action", ""))
    return OrderSnapshot(
        broker=broker,
        broker_kind="shioaji",
        account_id=str((order.get("account") or {}).get("account_id") or account_id),
        order_id=order_id,
        status=status or OrderStatus.SUBMITTED,
        unknown_status=status is None,
        broker_status=raw_status,
        symbol=str(contract.get("code", "")),
        side={"Buy": "BUY", "Sell": "SELL"}.get(action, action.upper()),
        order_type=_PRICE_TYPES.get(price_type, price_type),
        qty=qty,
        price=price,
        filled_qty=filled,
        avg_fill_price=avg,
        client_order_id=str(order.get("custom_field") or order.get("seqno") or ""),
        fills=tuple(fills),
        placed_at=_moment(state, "order_datetime", "order_ts"),
        updated_at=_moment(state, "modified_time", "modified_ts"),
        message=str(state.get("msg") or ""),
        time_in_force=str(order.get("order_type", "")),
        extra={"ordno": str(order.get("ordno", "")), "seqno": str(order.get("seqno", ""))},
    )


@hookimpl
def register_brokers(register: Callable[[type[BrokerAdapter[Any]]], None]) -> None:
    """Register the Shioaji adapter."""
    register(ShioajiAdapter)


__all__ = ["STATUS_TABLE", "ShioajiAdapter", "ShioajiConfig", "parse_trade"]
