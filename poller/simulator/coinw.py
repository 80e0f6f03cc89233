"""Simulator of CoinW's spot private REST API (brokers.md §5, seed 004).

One route, ``POST /api/v1/private``, dispatching on the ``command`` parameter:
``returnOpenOrders``, ``returnOrderStatus``, ``returnOrderTrades``, ``cancelOrder`` and
``doTrade``. Parameters are read from the query string (the official sample) and from a form
body (a third-party SDK's way). Like the real API:

* every request must carry ``api_key`` and a valid MD5 ``sign`` (brokers.md §5.2), else
  ``{"code": 1003, ...}``, CoinW's authentication error;
* success is ``{"code": "200", "data": ..., "msg": "SUCCESS", ...}`` with a *string* code;
* order numbers are big integers (from 4624544807079846405, the seed's example) written as
  exact JSON numbers in ``returnOpenOrders``, ``doTrade`` and ``returnOrderTrades``;
* ``returnOrderStatus`` (and ``returnOrderTrades``) answer only for orders at most 7 days
  old; older or unknown orders get ``{"code": -103, "msg": "Order does not exist"}`` (how the
  real API words this is undocumented);
* 30 requests / 2 s per endpoint and 300 / s per user across endpoints, counted on arrival
  time. A violation is answered ``{"code": 29001, "msg": "API access frequently"}`` and
  starts the documented escalation, simplified: a 30 s ban in which every request gets
  29001, then a 5-minute warning phase with per-endpoint limits halved (a violation there
  bans again), and an 8-hour blacklist after 10 bans within 8 hours. CoinW counts errors
  per 10 s before escalating; the simulator escalates at the first violation, which is
  stricter, so a client that passes here passes there.

Errors come back with HTTP 200, as CoinW puts its codes in the body.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from poller.brokers.coinw import PRIVATE_PATH, sign
from poller.models import decimal_text
from poller.simulator import engine
from poller.simulator.base import BrokerSim
from poller.simulator.engine import SimOrder
from poller.simulator.httpserver import SimRequest, SimResponse, SlidingWindow

BEIJING = timezone(timedelta(hours=8))
FIRST_ORDER_NUMBER = 4624544807079846405
TEST_API_KEY = "coinw-sim-api-key-0001"
TEST_SECRET_KEY = "coinw-sim-secret-key-0001"

#: Endpoints with their own 30 / 2 s per-user limit (brokers.md 5.4).
LIMITED = ("returnOpenOrders", "returnOrderStatus", "returnOrderTrades", "cancelOrder",
           "doTrade")
UID_GROUP = "uid"
BAN = 30.0
WARNING = 300.0
BLACKLIST = 8 * 3600.0
BLACKLIST_AFTER = 10
STATUS_WINDOW = 7 * 24 * 3600.0
FEE_RATE = Decimal("0.002")

RATE_LIMITED = {"code": 29001, "msg": "API access frequently"}


def render_status(order: SimOrder) -> int:
    """The CoinW status of an engine order (brokers.md 5.6).

    CoinW has no pending, rejected or expired status: a refused ``doTrade`` never creates an
    order, so an engine order that fails or expires after it was listed can only show as
    4 (cancelled by the system). A cancel in flight shows the status it is cancelling.
    """
    status = order.status
    if status == engine.PENDING_CANCEL:
        status = order.extra.get("before_cancel", engine.SUBMITTED)
    if status == engine.PARTIAL:
        return 2
    if status == engine.FILLED:
        return 3
    if status in (engine.CANCELLED, engine.EXPIRED, engine.FAILED):
        return 4
    # PENDING, SUBMITTED, PENDING_REPLACE: working; 2 once something filled.
    return 2 if order.filled > 0 else 1


def _text(value: Decimal) -> str:
    return decimal_text(value) or "0"


def _beijing(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _ok(data: Any) -> SimResponse:
    return SimResponse(200, {"code": "200", "data": data, "msg": "SUCCESS", "success": True,
                             "failed": False})


def _error(code: int, message: str) -> SimResponse:
    return SimResponse(200, {"code": code, "msg": message})


class CoinWSim(BrokerSim):
    """CoinW spot's private API on loopback, for one user (one API key).

    :param api_key: the key requests must carry.
    :param secret_key: the secret their ``sign`` must be made with.
    :param account_id: the account name the simulated orders belong to.
    """

    kind: ClassVar[str] = "coinw"
    symbols: ClassVar[list[tuple[str, Decimal]]] = [
        ("BTC_USDT", Decimal("67000")), ("ETH_USDT", Decimal("3500")),
    ]

    def __init__(self, *, seed: int | None = None, port: int = 0, api_key: str = TEST_API_KEY,
                 secret_key: str = TEST_SECRET_KEY, account_id: str = "spot") -> None:
        super().__init__(seed=seed, port=port)
        self.api_key = api_key
        self.secret_key = secret_key
        self.account_id = account_id
        for command in LIMITED:
            self.windows[command] = SlidingWindow(30, 2.0)
        self.windows[UID_GROUP] = SlidingWindow(300, 1.0)
        # The warning phase's halved limits, counted all along so they are exact when the
        # phase starts; only consulted during the phase.
        self._halved = {command: SlidingWindow(15, 2.0) for command in LIMITED}
        self.banned_until = 0.0
        self.warning_until = 0.0
        self.blacklisted_until = 0.0
        self.bans: list[float] = []
        self.warning_refusals = 0
        #: Wall clock for the 7-day window (order times are wall-clock seconds).
        self.wall: Callable[[], float] = time.time
        self._commands: dict[str, Callable[[dict[str, str]], SimResponse]] = {
            "returnOpenOrders": self._open_orders,
            "returnOrderStatus": self._order_status,
            "returnOrderTrades": self._order_trades,
            "cancelOrder": self._cancel,
            "doTrade": self._do_trade,
        }
        self.server.route("POST", PRIVATE_PATH, self._private)

    # -- BrokerSim ------------------------------------------------------------------------

    def new_order_id(self, number: int) -> str:
        return str(FIRST_ORDER_NUMBER + number - 1)

    def accounts(self) -> list[str]:
        return [self.account_id]

    def broker_config(self, name: str) -> dict[str, Any]:
        return {
            "kind": "coinw",
            "base_url": self.url,
            "api_key": self.api_key,
            "secret_key": self.secret_key,
            "pairs": [symbol for symbol, _ in self.symbols],
            "account_id": self.account_id,
            "interval": 1.0,
        }

    def is_list_request(self, request: Any) -> bool:
        """``returnOpenOrders`` is CoinW's list call (one pair per call)."""
        return bool(request.path == PRIVATE_PATH
                    and self.params(request).get("command") == "returnOpenOrders")

    def polled_order(self, request: Any) -> str | None:
        """The order a ``returnOrderStatus``/``returnOrderTrades`` call asked about."""
        if request.path != PRIVATE_PATH:
            return None
        params = self.params(request)
        if params.get("command") not in ("returnOrderStatus", "returnOrderTrades"):
            return None
        return params.get("orderNumber") or None

    def not_found(self, request: Any) -> SimResponse:
        return SimResponse(404, {"code": 404, "msg": "Not Found"})

    def violations(self) -> int:
        """Requests refused for breaking a limit, warning-phase refusals included."""
        return super().violations() + self.warning_refusals

    # -- request handling -------------------------------------------------------------------

    @staticmethod
    def params(request: SimRequest) -> dict[str, str]:
        """Parameters from the query string and, when present, a form-encoded body."""
        params = dict(request.params)
        if request.body and not request.body.lstrip().startswith((b"{", b"[")):
            params.update(parse_qsl(request.body.decode("utf-8", "replace"),
                                    keep_blank_values=True))
        return params

    def _private(self, request: SimRequest) -> SimResponse:
        params = self.params(request)
        handler = self._commands.get(params.get("command", ""))
        if handler is None:
            return _error(-103, "Invalid parameter: unknown command")
        refused = self._authenticate(params) or self.check_limits(params["command"],
                                                                  request.arrived)
        if refused is not None:
            return refused
        with self.book.lock:
            return handler(params)

    def _authenticate(self, params: dict[str, str]) -> SimResponse | None:
        given_key = params.get("api_key", "")
        given_sign = params.get("sign", "")
        if not given_key or not given_sign:
            return _error(1003, "Authentication error: api_key and sign are required")
        if not hmac.compare_digest(given_key.encode(), self.api_key.encode()):
            return _error(1003, "Authentication error: invalid api_key")
        expected = sign(params, self.api_key, self.secret_key)
        if not hmac.compare_digest(given_sign.encode(), expected.encode()):
            return _error(1003, "Authentication error: invalid sign")
        return None

    def check_limits(self, command: str, now: float) -> SimResponse | None:
        """Count one arrival of ``command`` at ``now``; the 29001 answer when it is refused.

        Public so tests can drive many arrivals on a fake clock without HTTP round trips.
        """
        if now < self.blacklisted_until or now < self.banned_until:
            return SimResponse(200, dict(RATE_LIMITED))
        endpoint_ok = self.windows[command].admit(now)
        uid_ok = self.windows[UID_GROUP].admit(now)
        halved_ok = self._halved[command].admit(now)
        violated = not (endpoint_ok and uid_ok)
        if not violated and now < self.warning_until and not halved_ok:
            self.warning_refusals += 1
            violated = True
        if violated:
            self._escalate(now)
            return SimResponse(200, dict(RATE_LIMITED))
        return None

    def _escalate(self, now: float) -> None:
        self.bans = [t for t in self.bans if t > now - BLACKLIST] + [now]
        self.banned_until = now + BAN
        self.warning_until = now + BAN + WARNING
        if len(self.bans) >= BLACKLIST_AFTER:
            self.blacklisted_until = now + BLACKLIST

    def _order(self, params: dict[str, str], *, window: bool = True) -> SimOrder | None:
        """The user's order named by ``orderNumber`` (within 7 days when ``window``)."""
        raw = params.get("orderNumber", "").strip()
        key = str(int(raw)) if raw.isdigit() else raw
        order = self.book.orders.get(key)
        if order is None or order.account_id != self.account_id:
            return None
        if window and order.created < self.wall() - STATUS_WINDOW:
            return None
        return order

    def _open_orders(self, params: dict[str, str]) -> SimResponse:
        pair = params.get("currencyPair", "")
        if not pair:
            return _error(-103, "Invalid parameter: currencyPair is required")
        try:
            start = int(params["startAt"]) if params.get("startAt") else None
            end = int(params["endAt"]) if params.get("endAt") else None
        except ValueError:
            return _error(-103, "Invalid parameter: startAt/endAt must be milliseconds")
        orders = []
        for order in sorted(self.book.orders.values(), key=lambda o: o.created):
            created_ms = int(order.created * 1000)
            if (order.account_id != self.account_id or order.symbol != pair
                    or render_status(order) not in (1, 2)
                    or (start is not None and created_ms < start)
                    or (end is not None and created_ms > end)):
                continue
            orders.append(self.render_open(order))
        return _ok(orders)

    def _order_status(self, params: dict[str, str]) -> SimResponse:
        order = self._order(params)
        if order is None:
            return _error(-103, "Order does not exist")
        return _ok({
            "status": render_status(order),
            "currencyPair": order.symbol,
            "date": _beijing(order.created),
            "total": _text(order.qty),
            "type": order.side.lower(),
            "startingAmount": _text(order.qty * self.placed_price(order)),
        })

    def _order_trades(self, params: dict[str, str]) -> SimResponse:
        order = self._order(params)
        if order is None:
            return _error(-103, "Order does not exist")
        filled_quote = sum((d.qty * d.price for d in order.deals), Decimal(0))
        return _ok({
            "tradeID": int(order.order_id),
            "currencyPair": order.symbol,
            "type": order.side.lower(),
            "amount": _text(order.qty * self.placed_price(order)),
            "success_amount": _text(filled_quote),
            "total": _text(order.qty),
            "success_total": _text(order.filled),
            "fee": _text(filled_quote * FEE_RATE),
            "date": _beijing(order.created),
            "status": render_status(order),
        })

    def _cancel(self, params: dict[str, str]) -> SimResponse:
        order = self._order(params, window=False)
        if order is None:
            return _error(-103, "Order does not exist")
        if order.terminal:
            return _error(-103, "Order is already completed or cancelled")
        self.book.cancel(order.order_id)
        return _ok({"clientOrderId": order.order_id})

    def _do_trade(self, params: dict[str, str]) -> SimResponse:
        symbol = params.get("symbol", "")
        side = {"0": "BUY", "1": "SELL"}.get(params.get("type", ""))
        market = params.get("isMarket", "false").lower() == "true"
        try:
            amount = Decimal(params.get("amount", ""))
            rate = Decimal(params.get("rate") or "0")
        except InvalidOperation:
            return _error(-103, "Invalid parameter: amount and rate must be numbers")
        if not symbol or side is None or amount <= 0 or (rate <= 0 and not market):
            return _error(-103, "Invalid parameter: symbol, type (0/1), amount, rate")
        if market:
            rate = dict(self.symbols).get(symbol, rate)
        order = self.book.place(self.account_id, symbol, side, amount, rate,
                                client_order_id=params.get("out_trade_no", ""),
                                order_type="MARKET" if market else "LIMIT")
        self.book.accept(order.order_id)
        return _ok({"orderNumber": int(order.order_id)})

    # -- rendering --------------------------------------------------------------------------

    @staticmethod
    def placed_price(order: SimOrder) -> Decimal:
        """The price the order was placed with.

        CoinW spot has no amend endpoint, so a price change the engine makes (the autopilot
        does) cannot exist there: the simulator keeps showing the original price.
        """
        return order.history[0][2] if order.history else order.price

    def render_open(self, order: SimOrder) -> dict[str, Any]:
        """One ``returnOpenOrders`` item."""
        price = self.placed_price(order)
        filled_quote = sum((d.qty * d.price for d in order.deals), Decimal(0))
        return {
            "orderNumber": int(order.order_id),  # an exact JSON integer beyond 2**53
            "date": int(order.created * 1000),
            "startingAmount": _text(order.qty * price),
            "total": _text(order.qty),
            "type": order.side.lower(),
            "prize": _text(price),
            "success_count": _text(order.filled),
            "success_amount": _text(filled_quote),
            "status": render_status(order),
        }


__all__ = ["FIRST_ORDER_NUMBER", "TEST_API_KEY", "TEST_SECRET_KEY", "CoinWSim", "render_status"]
