"""Simulator of the Shioaji local HTTP API (brokers.md §4, seed 000).

Same paths and JSON as the seed: ``POST /api/v1/order/update_status`` (nested ``account``)
and ``POST /api/v1/order/trades`` (flat ``AccountRequest``) return ``[Trade]``; errors are
``{code, message, details}``. Orders start in ``PendingSubmit`` and move through
``Submitted`` → ``PartFilled`` → ``Filled`` / ``Cancelled`` / ``Failed`` with deals. The
orders group (place, update_status, update_qty, update_price, cancel) allows 250 calls per
10 s; a violation suspends the service for a minute, answered as HTTP 429 (how the real
server signals it is undocumented).

``GET /api/v1/stream/data/order_event`` streams the order and deal callbacks as server-sent
events, as the shioaji 1.7.9 server does (brokers.md §4.6; the evidence is in
:mod:`poller.brokers.shioajipush`): ``event: order_event`` with ``{"state": "StockOrder",
"data": {"StockOrder": {...}}}`` when an order is accepted (``New``), rejected (``New``
failed), cancelled or expired (``Cancel``), a cancel is refused (``Cancel`` failed) or it is
modified (``UpdateQty`` / ``UpdatePrice``), and ``StockDeal`` for each fill; a heartbeat every
``heartbeat`` seconds. Placing and a cancel request push nothing (Shioaji calls back when the
exchange answers). ``POST /api/v1/auth/subscribe_trade`` is accepted and recorded (a no-op, as
in simulation mode). Tests cut the streams with :meth:`ShioajiSim.drop_streams`.

Over 400 lines: one broker's whole simulated API (auth, order endpoints, limits, the Trade
JSON and the order event stream that renders the same orders) in one place.
"""

from __future__ import annotations

import hmac
import itertools
import json
import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

from poller.simulator import engine
from poller.simulator.base import BrokerSim
from poller.simulator.engine import SimOrder
from poller.simulator.httpserver import DropConnection, SimRequest, SimResponse, SlidingWindow

TAIPEI = timezone(timedelta(hours=8))
ORDERS_GROUP = "orders"
SUSPENSION = 60.0

_STATUS = {
    engine.PENDING: "PendingSubmit",
    engine.SUBMITTED: "Submitted",
    engine.PARTIAL: "PartFilled",
    engine.FILLED: "Filled",
    engine.CANCELLED: "Cancelled",
    engine.FAILED: "Failed",
    engine.EXPIRED: "Cancelled",  # Taiwan ROD orders lapse as cancelled at the close
    engine.PENDING_REPLACE: "Submitted",
}

ORDER_EVENT_PATH = "/api/v1/stream/data/order_event"
#: What a stream's queue may hold besides frames: end cleanly, or cut the connection.
_END, _DROP = b"", None


class ShioajiSim(BrokerSim):
    """The Shioaji HTTP API on loopback.

    :param api_key: with ``secret_key``, require ``Authorization: Bearer key:secret`` (the
        real server does when bound beyond localhost).
    :param timestamps: ``"datetime"`` (``order_datetime``/``modified_time`` ISO, as in the
        seed) or ``"ts"`` (``order_ts``/``modified_ts`` epoch seconds); both are documented.
    :param heartbeat: seconds between the order event stream's heartbeats.
    :param push_events: whether :meth:`broker_config` lets poller subscribe to the order
        event stream (it is served either way).
    """

    kind: ClassVar[str] = "shioaji"
    symbols: ClassVar[list[tuple[str, Decimal]]] = [
        ("2890", Decimal("27.1")), ("2330", Decimal("1085")), ("0050", Decimal("195.3")),
    ]

    def __init__(self, *, seed: int | None = None, port: int = 0, api_key: str = "",
                 secret_key: str = "", timestamps: str = "datetime",
                 heartbeat: float = 30.0, push_events: bool = False) -> None:
        super().__init__(seed=seed, port=port)
        self.heartbeat = heartbeat
        self.push_events = push_events
        self._streams: set[queue.Queue[bytes | None]] = set()
        self._streams_lock = threading.Lock()
        self._connection_ids = itertools.count(1)
        #: ``subscribe_trade`` bodies received, in order; set at each (tests wait on it).
        self.trade_subscriptions: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.book.listeners.append(self._on_change)
        self.api_key = api_key
        self.secret_key = secret_key
        self.timestamps = timestamps
        self.account_list = [
            {"account_type": "S", "person_id": "A123456789", "broker_id": "9A95",
             "account_id": "1234567", "signed": True, "username": "demo"},
            {"account_type": "F", "person_id": "A123456789", "broker_id": "F002000",
             "account_id": "7654321", "signed": True, "username": "demo"},
        ]
        self.windows[ORDERS_GROUP] = SlidingWindow(250, 10.0)
        self.suspended_until = 0.0
        route = self.server.route
        route("POST", "/api/v1/order/update_status", self._update_status)
        route("POST", "/api/v1/order/trades", self._trades)
        route("POST", "/api/v1/order/place_order", self._place)
        route("POST", "/api/v1/order/cancel_order", self._cancel)
        route("POST", "/api/v1/order/update_price", self._update_price)
        route("POST", "/api/v1/order/update_qty", self._update_qty)
        route("GET", "/api/v1/auth/accounts", self._accounts)
        route("GET", "/api/v1/health", lambda r: SimResponse(200, {"status": "ok"}))
        route("GET", ORDER_EVENT_PATH, self._order_events)
        route("POST", "/api/v1/auth/subscribe_trade", self._subscribe_trade)

    # -- BrokerSim ----------------------------------------------------------------------

    def new_order_id(self, number: int) -> str:
        return f"{0xa647f23d + number * 7919:08x}"[-8:]

    def accounts(self) -> list[str]:
        return [str(a["account_id"]) for a in self.account_list if a["account_type"] == "S"]

    def broker_config(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = {
            "kind": "shioaji",
            "base_url": self.url,
            "interval": 1.0,
            "accounts": [
                {"broker_id": a["broker_id"], "account_id": a["account_id"]}
                for a in self.account_list if a["account_type"] == "S"
            ],
        }
        if self.api_key:
            table["api_key"] = self.api_key
            table["secret_key"] = self.secret_key
        if not self.push_events:
            # The stream is always served; a daemon subscribes only when asked to, so
            # polling-only scenarios stay as they were.
            table["push"] = False
        return table

    def is_list_request(self, request: Any) -> bool:
        return str(request.path) in ("/api/v1/order/update_status", "/api/v1/order/trades")

    def not_found(self, request: Any) -> SimResponse:
        return _error(404, "Not Found")

    # -- request handling -----------------------------------------------------------------

    def _guard(self, request: SimRequest, *, limited: bool = True) -> SimResponse | None:
        if self.api_key:
            expected = f"Bearer {self.api_key}:{self.secret_key}"
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return _error(401, "Unauthorized: invalid or missing API key")
        if not limited:
            return None
        now = request.arrived
        if now < self.suspended_until:
            return _error(429, "Rate limit exceeded: service suspended for 1 minute")
        if not self.windows[ORDERS_GROUP].admit(now):
            self.suspended_until = now + SUSPENSION
            return _error(429, "Rate limit exceeded: service suspended for 1 minute")
        return None

    def _account_of(self, account_id: str | None, broker_id: str | None) -> dict[str, Any] | None:
        for account in self.account_list:
            if account["account_id"] == account_id and (
                broker_id in (None, "", account["broker_id"])
            ):
                return account
        return None

    def _trades_for(self, account: dict[str, Any]) -> SimResponse:
        with self.book.lock:
            orders = [o for o in self.book.orders.values()
                      if o.account_id == account["account_id"]]
            return SimResponse(200, [self.render(o, account) for o in orders])

    def _update_status(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("account"), dict):
            return _error(400, "Invalid request body: field `account` is required")
        wanted = body["account"]
        account = self._account_of(wanted.get("account_id"), wanted.get("broker_id"))
        if account is None:
            return _error(404, "Account not found")
        return self._trades_for(account)

    def _trades(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        body = request.json() or {}
        if not isinstance(body, dict):
            return _error(400, "Invalid request body")
        account = self._account_of(body.get("account_id"), body.get("broker_id"))
        if account is None and not body.get("account_id"):
            kind = body.get("account_type", "S")
            account = next((a for a in self.account_list if a["account_type"] == kind), None)
        if account is None:
            return _error(404, "Account not found")
        return self._trades_for(account)

    def _accounts(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, limited=False)
        return refused or SimResponse(200, self.account_list)

    def _place(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        body = request.json() or {}
        order = body.get("stock_order") or body.get("futures_order") or {}
        contract = body.get("contract") or {}
        account = order.get("account") or {}
        account_id = account.get("account_id") or self.accounts()[0]
        if not contract.get("code") or not order.get("quantity"):
            return _error(400, "contract.code and quantity are required")
        side = "BUY" if order.get("action", "Buy") == "Buy" else "SELL"
        placed = self.book.place(account_id, contract["code"], side, order["quantity"],
                                 Decimal(str(order.get("price", 0))))
        acc = self._account_of(account_id, None) or self.account_list[0]
        return SimResponse(200, self.render(placed, acc))

    def _order_of(self, request: SimRequest) -> tuple[SimOrder | None, SimResponse | None]:
        refused = self._guard(request)
        if refused:
            return None, refused
        body = request.json() or {}
        trade_id = body.get("trade_id")
        if not trade_id or trade_id not in self.book.orders:
            return None, _error(404, f"Trade not found: {trade_id}")
        order = self.book.get(trade_id)
        if order.terminal:
            return None, _error(400, f"Trade {trade_id} is already {_STATUS[order.status]}")
        return order, None

    def _cancel(self, request: SimRequest) -> SimResponse:
        order, refused = self._order_of(request)
        if refused or order is None:
            return refused or _error(500, "internal error")
        self.book.cancel(order.order_id)
        return SimResponse(200, self.render(order, self._acc(order)))

    def _update_price(self, request: SimRequest) -> SimResponse:
        order, refused = self._order_of(request)
        if refused or order is None:
            return refused or _error(500, "internal error")
        price = (request.json() or {}).get("price")
        if price is None or Decimal(str(price)) <= 0:
            return _error(400, "price must be positive")
        self.book.modify(order.order_id, price=Decimal(str(price)))
        return SimResponse(200, self.render(order, self._acc(order)))

    def _update_qty(self, request: SimRequest) -> SimResponse:
        order, refused = self._order_of(request)
        if refused or order is None:
            return refused or _error(500, "internal error")
        quantity = (request.json() or {}).get("quantity")
        try:
            new_qty = Decimal(str(quantity))
        except ArithmeticError:
            return _error(400, "quantity must be a number")
        # "quantity: new quantity (decrease only)", as the shioaji 1.7.9 HTTP reference and
        # CLI help put it (see ShioajiAdapter.replace_order for the evidence).
        if not order.filled < new_qty < order.qty:
            return _error(400, "quantity can only decrease, and must stay above the filled "
                               "quantity")
        self.book.modify(order.order_id, qty=new_qty)
        return SimResponse(200, self.render(order, self._acc(order)))

    def _acc(self, order: SimOrder) -> dict[str, Any]:
        return self._account_of(order.account_id, None) or self.account_list[0]

    # -- the order event stream ----------------------------------------------------------

    def stop(self) -> None:
        """Stop the autopilot, end the streams and stop the server."""
        self.drop_streams()
        super().stop()

    def stream_count(self) -> int:
        """How many order event streams are connected."""
        with self._streams_lock:
            return len(self._streams)

    def push_frame(self, frame: bytes) -> None:
        """Send raw SSE bytes to every stream (tests: unreadable or odd events)."""
        self._broadcast(frame)

    def push_event(self, event: str, data: Any) -> None:
        """Send one event to every stream (``data`` as JSON unless already text)."""
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        self._broadcast(_frame(event, text))

    def drop_streams(self) -> None:
        """Cut every stream's connection mid-answer, as a network drop would."""
        self._broadcast(_DROP)

    def end_streams(self) -> None:
        """Finish every stream's answer cleanly (the server closing it)."""
        self._broadcast(_END)

    def _broadcast(self, item: bytes | None) -> None:
        with self._streams_lock:
            for stream in self._streams:
                stream.put(item)

    def _subscribe_trade(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, limited=False)
        if refused:
            return refused
        body = request.json()
        if not isinstance(body, dict) or not body.get("account_id"):
            return _error(400, "Invalid request body: field `account_id` is required")
        self.trade_subscriptions.append(body)
        self.subscribed.set()
        return SimResponse(200, {"success": True})

    def _order_events(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, limited=False)
        if refused:
            return refused
        frames: queue.Queue[bytes | None] = queue.Queue()
        with self._streams_lock:
            self._streams.add(frames)
        return SimResponse(200, stream=self._serve_stream(frames, next(self._connection_ids)))

    def _serve_stream(self, frames: queue.Queue[bytes | None], number: int) -> Iterator[bytes]:
        try:
            while True:
                try:
                    frame = frames.get(timeout=self.heartbeat)
                except queue.Empty:
                    frame = _frame("heartbeat", json.dumps({
                        "type": "heartbeat", "timestamp": datetime.now(UTC).isoformat(),
                        "connection_id": f"sim-{number}"}))
                if frame is _DROP:
                    raise DropConnection
                if frame == _END:
                    return
                yield frame
        finally:
            with self._streams_lock:
                self._streams.discard(frames)

    def _on_change(self, order: SimOrder, what: str,
                   before: tuple[str, Decimal, Decimal, float, str] | None) -> None:
        """Push the callbacks Shioaji sends for one book change (under the book lock)."""
        with self._streams_lock:
            if not self._streams:
                return
        account = self._acc(order)
        if what.startswith("fill "):
            self.push_event("order_event", {"state": "StockDeal",
                                            "data": {"StockDeal": self.render_deal(order)}})
            return
        operations: list[tuple[str, str, str]] = []
        if what == "accepted":
            operations.append(("New", "00", ""))
        elif what == "rejected":
            operations.append(("New", "88", order.message))
        elif what in ("cancelled", "expired"):
            operations.append(("Cancel", "00", ""))
        elif what == "cancel refused":
            operations.append(("Cancel", "88", "cancel refused"))
        elif what == "modified" and before is not None:
            if order.qty != before[1]:
                operations.append(("UpdateQty", "00", ""))
            if order.price != before[2]:
                operations.append(("UpdatePrice", "00", ""))
        for op_type, op_code, op_msg in operations:
            event = self.render_order_event(order, account, op_type, op_code, op_msg)
            self.push_event("order_event", {"state": "StockOrder",
                                            "data": {"StockOrder": event}})

    def render_order_event(self, order: SimOrder, account: dict[str, Any], op_type: str,
                           op_code: str, op_msg: str) -> dict[str, Any]:
        """An order callback (``StockOrderEvent`` of shioaji 1.7.9's ``_core.pyi``)."""
        trade = self.render(order, account)
        state = trade["status"]
        return {
            "event_id": f"{order.order_id}-{len(order.history)}",
            "operation": {"op_type": op_type, "op_code": op_code, "op_msg": op_msg},
            "order": {key: trade["order"][key] for key in (
                "id", "seqno", "ordno", "account", "action", "price", "quantity", "order_type",
                "price_type", "order_cond", "order_lot", "custom_field")},
            "status": {"id": order.order_id, "exchange_ts": order.updated,
                       "modified_price": state["modified_price"],
                       "cancel_quantity": state["cancel_quantity"],
                       "order_quantity": state["order_quantity"], "web_id": "137"},
            "contract": trade["contract"],
        }

    def render_deal(self, order: SimOrder) -> dict[str, Any]:
        """A deal callback for the order's last fill (``StockDealEvent``); its
        ``exchange_seq`` is the deal's ``seq`` in the polled Trade."""
        deal = order.deals[-1]
        account = self._acc(order)
        ordno = order.order_id[:5].upper()
        return {
            "event_id": f"{order.order_id}-deal-{deal.seq}",
            "trade_id": order.order_id,
            "seqno": f"{int(order.order_id, 16) % 1000000:06d}",
            "ordno": ordno + deal.seq[-3:],
            "exchange_seq": deal.seq,
            "broker_id": account["broker_id"],
            "account_id": account["account_id"],
            "action": "Buy" if order.side == "BUY" else "Sell",
            "code": order.symbol,
            "order_cond": "Cash",
            "order_lot": "Common",
            "price": _num(deal.price),
            "quantity": _num(deal.qty),
            "web_id": "137",
            "custom_field": "",
            "ts": deal.at,
        }

    # -- rendering --------------------------------------------------------------------------

    def render(self, order: SimOrder, account: dict[str, Any]) -> dict[str, Any]:
        """One Trade in the seed's JSON shape."""
        original = Decimal(str(order.extra.setdefault("original_qty", str(order.qty))))
        original_price = Decimal(str(order.extra.setdefault("original_price", str(order.price))))
        status = order.status
        if status == engine.PENDING_CANCEL:
            status = order.extra.get("before_cancel", engine.SUBMITTED)
        # As Shioaji's tutorial shows: order_quantity is net of reductions and cancels (an
        # order of 2 reduced by 1: 1 and cancel_quantity 1; then cancelled: 0 and 2), and
        # order.quantity stays as placed.
        finished = order.status in (engine.CANCELLED, engine.EXPIRED, engine.FAILED)
        net = order.filled if finished else order.qty
        cancelled = original - net
        created = datetime.fromtimestamp(order.created, UTC).astimezone(TAIPEI)
        modified = datetime.fromtimestamp(order.updated, UTC).astimezone(TAIPEI)
        state: dict[str, Any] = {
            "id": order.order_id,
            "status": _STATUS[status],
            "status_code": "00" if status != engine.FAILED else "88",
            "web_id": "137",
            "msg": order.message,
            "modified_price": _num(order.price) if order.price != original_price else 0,
            "order_quantity": _num(net),
            "deal_quantity": _num(order.filled),
            "cancel_quantity": _num(cancelled),
            "deals": [
                {"seq": d.seq, "price": _num(d.price), "quantity": _num(d.qty), "ts": d.at}
                for d in order.deals
            ],
        }
        if self.timestamps == "ts":
            state["order_ts"] = order.created
            state["modified_ts"] = order.updated
        else:
            state["order_datetime"] = created.isoformat(timespec="seconds")
            state["modified_time"] = modified.isoformat(timespec="seconds")
        return {
            "contract": {"security_type": "STK", "exchange": "TSE", "code": order.symbol},
            "order": {
                "id": order.order_id,
                "action": "Buy" if order.side == "BUY" else "Sell",
                "price": _num(original_price),
                "quantity": _num(original),
                "seqno": f"{int(order.order_id, 16) % 1000000:06d}",
                "ordno": order.order_id[:5].upper(),
                "order_type": "ROD",
                "price_type": "LMT",
                "account": {**account},
                "order_cond": "Cash",
                "order_lot": "Common",
                "custom_field": "",
            },
            "status": state,
        }


def _num(value: Decimal) -> int | float:
    """Shioaji sends plain JSON numbers (ints for lots, floats for prices)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _frame(event: str, data: str) -> bytes:
    """One server-sent event."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


def _error(status: int, message: str) -> SimResponse:
    return SimResponse(status, {"code": status, "message": message, "details": None})
