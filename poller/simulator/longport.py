"""Simulator of the LongPort (Longbridge) OpenAPI trade endpoints (brokers.md §2, seed 002).

Same paths and envelopes as the real API: ``GET /v1/trade/order/today`` (``{orders}``),
``GET /v1/trade/order`` (order detail with ``history[]``), ``POST`` (submit), ``PUT``
(replace) and ``DELETE`` (withdraw, ``order_id`` in the query or the JSON body) on
``/v1/trade/order``; every answer is ``{code, message, data}``. Numbers are strings, times
unix-second strings, order ids 18-digit strings. Requests must carry a valid legacy API-key
signature, checked here with an implementation independent of the adapter's (or an OAuth
bearer token when the simulator runs in ``oauth`` mode); a reused timestamp+signature is
refused as ``403202 duplicate request``. All trade calls share the documented limit, enforced
on arrival time: 30 per 30 s and at least 20 ms apart, answered ``429 {code: 429002}``.

A simulator made with ``dc_region="us"`` is a US data-centre account, as the official SDK
(longbridge 5.3) sees one: its credentials start ``us_``, every request must say
``x-dc-region: us`` (an absent header means ``ap``, the gateway default), and order details
come from ``GET /v1/us/orders/{id}`` (``{order, current_attached_order,
current_millisecond}``, the SDK's ``USOrderDetailResponse``); the plain detail answers a
region error. Its answers are parsed by the official SDK in tests/oracles.

With ``push_events=True`` a :class:`~poller.simulator.longportpush.LongPortPushServer` (the
trade push WebSocket, needs the ``push`` extra) runs beside it, authenticating the one-time
passwords ``GET /v1/socket/token`` issues, and pushes an ``order_changed_lb`` notification
each time an order in the book changes.

Over 400 lines: one broker's whole simulated API (signature check, endpoints, envelopes,
status lifecycle, limits) in one place, each part short and mirrored from brokers.md §2.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from poller.models import decimal_text
from poller.simulator import engine
from poller.simulator.base import BrokerSim
from poller.simulator.engine import Change, SimOrder
from poller.simulator.httpserver import SimRequest, SimResponse, SlidingWindow

if TYPE_CHECKING:
    from poller.simulator.longportpush import LongPortPushServer

TRADE_GROUP = "trade"
SPACING = 0.02
#: How long a timestamp+signature pair is remembered for the duplicate-request check.
REPLAY_MEMORY = 600.0

CODE_SIGNATURE_INVALID = 403201
CODE_DUPLICATE = 403202
CODE_APIKEY_ILLEGAL = 403203
CODE_TOKEN_EXPIRED = 401003
CODE_RATE_LIMITED = 429002
CODE_ORDER_UNKNOWN = 602023  # what the order detail answers for unknown orders (#1256)
# Not documented: the simulator's choices for requests the real API also refuses.
CODE_BAD_PARAMETER = 400000
CODE_STATUS_REFUSED = 602012
CODE_WRONG_REGION = 403210
US_ORDERS_PREFIX = "/v1/us/orders/"
SOCKET_TOKEN_PATH = "/v1/socket/token"

_SIGNATURE = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[a-z;-]+), "
                        r"Signature=(?P<sig>[0-9a-f]{64})$")
_TIMESTAMP = re.compile(r"^\d{9,11}(?:\.\d{1,6})?$")

_TIME_IN_FORCE = {"DAY": "Day", "GTC": "GTC", "GTD": "GTD"}
_ORDER_TYPE = {"LIMIT": "LO", "MARKET": "MO"}
_CURRENCY = {"US": "USD", "HK": "HKD", "SG": "SGD", "SH": "CNY", "SZ": "CNY"}
_NAMES = {"AAPL.US": "Apple", "700.HK": "Tencent", "TSLA.US": "Tesla"}


def expected_signature(method: str, path: str, query: str, body: bytes, *, app_key: str,
                       app_secret: str, token: str, timestamp: str) -> str:
    """The ``Signature=`` hex LongPort computes for a request (brokers.md 2.2)."""
    canonical = (f"{method}|{path}|{query}|authorization:{token}\nx-api-key:{app_key}\n"
                 f"x-timestamp:{timestamp}\n|authorization;x-api-key;x-timestamp|")
    if body:
        canonical += hashlib.sha1(body).hexdigest()
    to_sign = "HMAC-SHA256|" + hashlib.sha1(canonical.encode()).hexdigest()
    return hmac.new(app_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


class LongPortSim(BrokerSim):
    """The LongPort trade REST API on loopback.

    :param auth: ``"apikey"`` (verify the HMAC signature) or ``"oauth"`` (accept
        ``Authorization: Bearer <access_token>`` without a signature).
    :param swap_time_in_force: answer today's list with Day and GTC swapped, as users
        reported (longbridge/openapi#247); the order detail stays right.
    :param instant_cancel: a withdraw finishes at once (PendingCancel then Canceled in the
        history); otherwise the order waits in ``PendingCancelStatus`` for the autopilot.
    """

    kind: ClassVar[str] = "longport"
    symbols: ClassVar[list[tuple[str, Decimal]]] = [
        ("AAPL.US", Decimal("190.5")), ("700.HK", Decimal("320.2")),
        ("TSLA.US", Decimal("250.3")),
    ]

    def __init__(self, *, seed: int | None = None, port: int = 0,
                 app_key: str = "lp-app-key-0001", app_secret: str = "lp-app-secret-0001",
                 access_token: str = "lp-access-token-0001",
                 auth: Literal["apikey", "oauth"] = "apikey",
                 swap_time_in_force: bool = False, instant_cancel: bool = True,
                 dc_region: Literal["ap", "us"] = "ap", push_events: bool = False) -> None:
        super().__init__(seed=seed, port=port)
        self.dc_region = dc_region
        # Longbridge credentials carry their data centre as a prefix (the SDK's
        # DcRegion::from_credential): a US account's are ``us_…``.
        prefix = "us_" if dc_region == "us" else ""
        self.app_key = app_key if app_key.startswith(prefix) else prefix + app_key
        self.app_secret = app_secret if app_secret.startswith(prefix) else prefix + app_secret
        self.access_token = (access_token if access_token.startswith(prefix)
                             else prefix + access_token)
        self.auth = auth
        self.swap_time_in_force = swap_time_in_force
        self.instant_cancel = instant_cancel
        self.account_no = "LB60012345"
        self.windows[TRADE_GROUP] = SlidingWindow(30, 30.0)
        self.spacing_violations = 0
        self.refusals: dict[int, int] = {}
        self._last_arrival: float | None = None
        self._seen: dict[tuple[str, str], float] = {}
        route = self.server.route
        route("GET", "/v1/trade/order/today", self._today)
        route("GET", "/v1/trade/order", self._detail)
        route("POST", "/v1/trade/order", self._submit)
        route("PUT", "/v1/trade/order", self._replace)
        route("DELETE", "/v1/trade/order", self._withdraw)
        self.server.route_prefix("GET", US_ORDERS_PREFIX, self._us_detail)
        route("GET", SOCKET_TOKEN_PATH, self._socket_token)
        #: One-time passwords issued by ``GET /v1/socket/token`` and not used yet.
        self.socket_tokens: set[str] = set()
        self.push: LongPortPushServer | None = None
        if push_events:
            self._enable_push()

    # -- trade push -----------------------------------------------------------------------

    def _enable_push(self) -> None:
        # Imported here: the push server needs the push extra (websockets, protobuf).
        from poller.simulator.longportpush import LongPortPushServer

        self.push = LongPortPushServer(accept_token=self.take_socket_token)
        def changed(order: SimOrder, what: str, before: Any) -> None:
            if self.push is not None and order.account_id == self.account_no:
                self.push.push("order_changed_lb", self.order_changed(order))

        self.book.listeners.append(changed)

    def take_socket_token(self, token: str) -> bool:
        """Use up a one-time password; True when ``GET /v1/socket/token`` issued it."""
        with self.book.lock:
            if token in self.socket_tokens:
                self.socket_tokens.discard(token)
                return True
            return False

    def order_changed(self, order: SimOrder) -> dict[str, Any]:
        """The ``data`` of an ``order_changed_lb`` push (the SDK's ``PushOrderChanged``,
        rust/src/trade/push_types.rs: every field it requires)."""
        item = self.render(order)
        deal = order.deals[-1] if order.deals else None
        data = {key: item[key] for key in (
            "side", "stock_name", "symbol", "order_type", "executed_quantity",
            "executed_price", "order_id", "currency", "status", "submitted_at", "updated_at",
            "trigger_price", "msg", "tag", "trigger_status", "trigger_at", "trailing_amount",
            "trailing_percent", "limit_offset", "remark")}
        data.update({
            "submitted_quantity": item["quantity"], "submitted_price": item["price"],
            "account_no": self.account_no,
            "last_share": decimal_text(deal.qty) if deal is not None else "",
            "last_price": _price(deal.price) if deal is not None else "",
        })
        return data

    def start(self) -> LongPortSim:
        """Start answering requests (and the push server, with ``push_events``)."""
        super().start()
        if self.push is not None:
            self.push.start()
        return self

    def stop(self) -> None:
        """Stop the push server, the autopilot and the HTTP server."""
        if self.push is not None:
            self.push.stop()
        super().stop()

    # -- BrokerSim ----------------------------------------------------------------------

    def new_order_id(self, number: int) -> str:
        # 18 digits like the seed's 828940451093708800: far beyond 2**53.
        return str(701276261045858304 + number * 4099)

    def accounts(self) -> list[str]:
        return [self.account_no]

    def is_list_request(self, request: Any) -> bool:
        return bool(request.path == "/v1/trade/order/today")

    def broker_config(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = {
            "kind": "longport",
            "base_url": self.url,
            # 30 calls per 30 s cover every trade call: a list every 1.5 s leaves room for
            # the order details that recover fills.
            "interval": 1.5,
            "account_id": self.account_no,
            "access_token": self.access_token,
            "auth": self.auth,
        }
        if self.auth == "apikey":
            table["app_key"] = self.app_key
            table["app_secret"] = self.app_secret
        if self.push is not None:
            table.update(push=True, push_url=self.push.url, push_tls=False)
        else:
            table["push"] = False  # never the real stream's default address from a test
        return table

    def not_found(self, request: Any) -> SimResponse:
        return _error(404, 404001, "api not found")

    def violations(self) -> int:
        return super().violations() + self.spacing_violations

    def revive(self, order_id: str) -> SimOrder:
        """Take back an ``ExpiredStatus`` (a GTC order between sessions, OpenAlice#1125)."""
        book = self.book
        with book.lock:
            order = book.get(order_id)
            if order.status != engine.EXPIRED:
                raise ValueError(f"order {order_id} is {order.status}, not expired")
            order.status = engine.PARTIAL if order.deals else engine.SUBMITTED
            order.updated = time.time()
            order.history.append((order.status, order.qty, order.price, order.updated,
                                  "revived"))
            book.changes.append(Change(book.clock(), order_id, "revived"))
            return order

    # -- the gateway: limits, auth, replay ----------------------------------------------

    def _guard(self, request: SimRequest) -> SimResponse | None:
        refused = (self._limit(request) or self._authenticate(request)
                   or self._route_region(request))
        if refused is not None:
            code = refused.body.get("code", 0) if isinstance(refused.body, dict) else 0
            self.refusals[code] = self.refusals.get(code, 0) + 1
        return refused

    def _limit(self, request: SimRequest) -> SimResponse | None:
        now = request.arrived
        within_window = self.windows[TRADE_GROUP].admit(now)
        spaced = self._last_arrival is None or now - self._last_arrival >= SPACING
        self._last_arrival = now
        if not spaced:
            self.spacing_violations += 1
        if within_window and spaced:
            return None
        return _error(429, CODE_RATE_LIMITED, "api request is limited")

    def _authenticate(self, request: SimRequest) -> SimResponse | None:
        headers = request.headers
        given_token = headers.get("authorization", "")
        if self.auth == "oauth":
            if not hmac.compare_digest(given_token.encode(),
                                       f"Bearer {self.access_token}".encode()):
                return _error(401, CODE_TOKEN_EXPIRED, "token expired")
            return None
        if not hmac.compare_digest(headers.get("x-api-key", "").encode(), self.app_key.encode()):
            return _error(403, CODE_APIKEY_ILLEGAL, "apikey illegal")
        if not hmac.compare_digest(given_token.encode(), self.access_token.encode()):
            return _error(401, CODE_TOKEN_EXPIRED, "token expired")
        timestamp = headers.get("x-timestamp", "")
        match = _SIGNATURE.match(headers.get("x-api-signature", ""))
        # Integer seconds (the SDK) and the documented float ("1539095200.123") both pass.
        if (not _TIMESTAMP.match(timestamp) or match is None
                or match["headers"] != "authorization;x-api-key;x-timestamp"):
            return _error(403, CODE_SIGNATURE_INVALID, "signature invalid")
        expected = expected_signature(
            request.method, request.path, request.query, request.body, app_key=self.app_key,
            app_secret=self.app_secret, token=self.access_token, timestamp=timestamp)
        if not hmac.compare_digest(match["sig"], expected):
            return _error(403, CODE_SIGNATURE_INVALID, "signature invalid")
        seen = self._seen
        for key in [k for k, at in seen.items() if at < request.arrived - REPLAY_MEMORY]:
            del seen[key]
        key = (timestamp, match["sig"])
        if key in seen:
            return _error(403, CODE_DUPLICATE, "duplicate request")
        seen[key] = request.arrived
        return None

    def _route_region(self, request: SimRequest) -> SimResponse | None:
        """Refuse a request routed to the other data centre (header absent: ``ap``)."""
        routed = request.headers.get("x-dc-region", "ap").strip().lower()
        if routed != self.dc_region:
            return _error(403, CODE_WRONG_REGION,
                          f"account belongs to data center {self.dc_region}, request routed "
                          f"to {routed} (x-dc-region)")
        return None

    # -- endpoints ------------------------------------------------------------------------

    def _today(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        statuses = {value for key, value in request.params if key == "status"}
        symbol, side = request.param("symbol"), request.param("side")
        market, order_id = request.param("market"), request.param("order_id")
        with self.book.lock:
            rendered = [self.render(o, list_view=True) for o in self.book.orders.values()
                        if o.account_id == self.account_no]
        rendered = [o for o in rendered
                    if (not statuses or o["status"] in statuses)
                    and (not symbol or o["symbol"] == symbol)
                    and (not side or o["side"] == side)
                    and (not market or o["symbol"].endswith("." + market))
                    and (not order_id or o["order_id"] == order_id)]
        return _ok({"orders": rendered})

    def _socket_token(self, request: SimRequest) -> SimResponse:
        """``GET /v1/socket/token``: a one-time password for one push connection."""
        refused = self._guard(request)
        if refused:
            return refused
        otp = "otp-" + secrets.token_hex(16)
        with self.book.lock:
            self.socket_tokens.add(otp)
        online = self.push.subscribed() if self.push is not None else 0
        return _ok({"otp": otp, "limit": 10, "online": online})

    def _known(self, order_id: str | None) -> SimOrder | None:
        order = self.book.orders.get(order_id or "")
        return order if order is not None and order.account_id == self.account_no else None

    def _detail(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        if self.dc_region == "us":
            # The SDK refuses this call itself for a US token (DcRegionRestricted): the
            # US data centre's orders are read at /v1/us/orders/{id}.
            return _error(403, CODE_WRONG_REGION,
                          "order detail of a US account: use GET /v1/us/orders/{order_id}")
        order_id = request.param("order_id")
        if not order_id:
            return _error(400, CODE_BAD_PARAMETER, "invalid parameter: order_id is required")
        with self.book.lock:
            order = self._known(order_id)
            if order is None:
                return _error(400, CODE_ORDER_UNKNOWN, "internal server error")
            return _ok(self.render(order, detail=True))

    def _us_detail(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        order_id = request.path[len(US_ORDERS_PREFIX):]
        if self.dc_region != "us":
            return _error(403, CODE_WRONG_REGION, "US token required")
        with self.book.lock:
            order = self._known(order_id)
            if order is None:
                return _error(400, CODE_ORDER_UNKNOWN, "internal server error")
            return _ok({"order": self.render_us(order), "current_attached_order": None,
                        "current_millisecond": str(int(time.time() * 1000))})

    def _submit(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        body = request.json()
        if not isinstance(body, dict):
            return _error(400, CODE_BAD_PARAMETER, "invalid parameter: body must be JSON")
        missing = [k for k in ("symbol", "order_type", "submitted_quantity", "side",
                               "time_in_force") if not body.get(k)]
        if missing:
            return _error(400, CODE_BAD_PARAMETER, f"invalid parameter: {', '.join(missing)}")
        side = {"Buy": "BUY", "Sell": "SELL"}.get(str(body["side"]))
        tif = {v: k for k, v in _TIME_IN_FORCE.items()}.get(str(body["time_in_force"]))
        quantity = _decimal(body["submitted_quantity"])
        price = _decimal(body.get("submitted_price", "0"))
        if side is None or tif is None or quantity is None or quantity <= 0 or price is None:
            return _error(400, CODE_BAD_PARAMETER, "invalid parameter")
        extra: dict[str, Any] = {"time_in_force": tif}
        if body.get("expire_date"):
            extra["expire_date"] = str(body["expire_date"])
        if body.get("remark"):
            extra["client_order_id"] = str(body["remark"])[:255]
        order_type = {v: k for k, v in _ORDER_TYPE.items()}.get(str(body["order_type"]),
                                                                str(body["order_type"]))
        order = self.book.place(self.account_no, str(body["symbol"]), side, quantity, price,
                                order_type=order_type, **extra)
        return _ok({"order_id": order.order_id})

    def _replace(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        body = request.json()
        if not isinstance(body, dict) or not body.get("order_id") or not body.get("quantity"):
            return _error(400, CODE_BAD_PARAMETER,
                          "invalid parameter: order_id and quantity are required")
        quantity = _decimal(body["quantity"])
        price = _decimal(body["price"]) if body.get("price") not in (None, "") else None
        if quantity is None or quantity <= 0 or (body.get("price") and price is None):
            return _error(400, CODE_BAD_PARAMETER, "invalid parameter: quantity/price")
        with self.book.lock:
            order = self._known(str(body["order_id"]))
            if order is None:
                return _error(400, CODE_ORDER_UNKNOWN, "internal server error")
            if order.terminal or order.status == engine.PENDING_CANCEL:
                return _error(400, CODE_STATUS_REFUSED, "order status not allowed to replace")
            if quantity <= order.filled:
                return _error(400, CODE_STATUS_REFUSED,
                              "quantity must exceed the executed quantity")
            self.book.modify(order.order_id, qty=quantity, price=price)
        return _ok({})

    def _withdraw(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request)
        if refused:
            return refused
        order_id = request.param("order_id")
        if not order_id:
            # The SDK sends the id in the query; the docs imply a JSON body: accept both.
            body = request.json()
            order_id = str(body.get("order_id") or "") if isinstance(body, dict) else ""
        if not order_id:
            return _error(400, CODE_BAD_PARAMETER, "invalid parameter: order_id is required")
        with self.book.lock:
            order = self._known(order_id)
            if order is None:
                return _error(400, CODE_ORDER_UNKNOWN, "internal server error")
            if order.terminal:
                return _error(400, CODE_STATUS_REFUSED, "order status not allowed to cancel")
            if order.status != engine.PENDING_CANCEL:
                self.book.request_cancel(order.order_id)
            if self.instant_cancel:
                self.book.cancel(order.order_id)
        return _ok({})

    # -- rendering --------------------------------------------------------------------------

    def wire_status(self, status: str, *, what: str = "", filled: bool = False,
                    time_in_force: str = "DAY") -> str:
        """LongPort's status string for a simulated status (``what``: the last change)."""
        if status == engine.PENDING:
            if what == "modified":
                return "ReplacedNotReported"
            return "WaitToNew" if time_in_force == "DAY" else "NotReported"
        if status in (engine.SUBMITTED, engine.PARTIAL) and what == "modified":
            return "ReplacedStatus"
        return {
            engine.SUBMITTED: "NewStatus",
            engine.PARTIAL: "PartialFilledStatus",
            engine.FILLED: "FilledStatus",
            engine.CANCELLED: "PartialWithdrawal" if filled else "CanceledStatus",
            engine.FAILED: "RejectedStatus",
            engine.EXPIRED: "ExpiredStatus",
            engine.PENDING_CANCEL: "PendingCancelStatus",
            engine.PENDING_REPLACE: "PendingReplaceStatus",
        }[status]

    def render(self, order: SimOrder, *, detail: bool = False,
               list_view: bool = False) -> dict[str, Any]:
        """One Order (``detail``: with ``history[]`` and fees, as in seed 002)."""
        last = order.history[-1][4] if order.history else ""
        tif = _TIME_IN_FORCE.get(order.time_in_force.upper(), "Day")
        shown_tif = tif
        if list_view and self.swap_time_in_force:
            shown_tif = {"Day": "GTC", "GTC": "Day"}.get(tif, tif)
        market = order.symbol.rsplit(".", 1)[-1]
        filled = order.filled
        item: dict[str, Any] = {
            "order_id": order.order_id,
            "status": self.wire_status(order.status, what=last, filled=filled > 0,
                                       time_in_force=order.time_in_force.upper()),
            "stock_name": _NAMES.get(order.symbol, order.symbol.split(".")[0]),
            "quantity": decimal_text(order.qty),
            "executed_quantity": decimal_text(filled),
            "price": _price(order.price),
            "executed_price": _price(order.avg_price) if filled else "0",
            "submitted_at": str(int(order.created)),
            "side": "Buy" if order.side == "BUY" else "Sell",
            "symbol": order.symbol,
            "order_type": _ORDER_TYPE.get(order.order_type, order.order_type),
            "last_done": _price(order.deals[-1].price) if order.deals else "",
            "trigger_price": "",
            "msg": order.message,
            "tag": "GTC" if tif in ("GTC", "GTD") else "Normal",
            "time_in_force": shown_tif,
            "expire_date": self._expire_date(order, tif),
            "updated_at": str(int(order.updated)),
            "trigger_at": "0",
            "trailing_amount": "",
            "trailing_percent": "",
            "limit_offset": "",
            "trigger_status": "NOT_USED",
            "currency": _CURRENCY.get(market, "USD"),
            "outside_rth": "RTH_ONLY" if market == "US" else "UnknownOutsideRth",
            "remark": order.client_order_id,
            # Fields the official SDK (longbridge 5.3) requires in every Order: without them
            # it refused the whole answer ("missing field `limit_depth_level`").
            "limit_depth_level": 0,
            "trigger_count": 0,
            "monitor_price": "",
        }
        if detail:
            item.update({
                "free_status": "None", "free_amount": "", "free_currency": "",
                "deductions_status": "NONE", "deductions_amount": "", "deductions_currency": "",
                "platform_deducted_status": "NONE", "platform_deducted_amount": "",
                "platform_deducted_currency": "",
                "history": self._history(order),
                "charge_detail": {"items": [
                    {"code": "BROKER_FEES", "name": "Broker Fees", "fees": []},
                    {"code": "THIRD_FEES", "name": "Third-party Fees", "fees": []},
                ], "total_amount": "0", "currency": item["currency"]},
            })
        return item

    def render_us(self, order: SimOrder) -> dict[str, Any]:
        """One order as ``GET /v1/us/orders/{id}`` shows it (the SDK's ``USOrderDetail``):
        ``id`` and ``counter_id`` (``ST/US/AAPL``), ``executed_qty``, ``action`` 1 buy / 2
        sell, times as unix-second strings, the audit trail in ``order_histories`` with the
        execution's own ``qty`` and an ``exec_id``.

        Status strings: the SDK keeps them as plain text; the simulator uses the trade
        API's (``FilledStatus`` …), the ones the same SDK's OrderStatus names.
        """
        item = self.render(order, detail=True)
        code, _, market = order.symbol.rpartition(".")
        histories = [{
            "status": row["status"], "price": row["price"], "qty": row["quantity"],
            "time": row["time"], "msg": row["msg"],
            "exec_id": (f"E{order.order_id}-{index}"
                        if row["status"] in ("FilledStatus", "PartialFilledStatus") else ""),
        } for index, row in enumerate(item["history"])]
        done = order.status in (engine.FILLED, engine.CANCELLED, engine.FAILED, engine.EXPIRED)
        return {
            "id": order.order_id,
            # longbridge 4.5 reads the symbol from counter_id (``ST/US/AAPL``), 5.3 from
            # ``symbol`` (it left the symbol empty without it): both are sent.
            "counter_id": f"ST/{market}/{code}",
            "symbol": order.symbol,
            "name": item["stock_name"],
            "currency": item["currency"],
            "order_type": item["order_type"],
            "status": item["status"],
            "price": item["price"],
            "quantity": item["quantity"],
            "executed_qty": item["executed_quantity"],
            "executed_price": item["executed_price"],
            "action": 1 if order.side == "BUY" else 2,
            "time_in_force": 0 if item["time_in_force"] == "Day" else 1,
            "gtd": item["expire_date"] if item["time_in_force"] != "Day" else "",
            "msg": item["msg"],
            "remark": item["remark"],
            "submitted_at": item["submitted_at"],
            "done_at": item["updated_at"] if done else "",
            "limit_depth_level": 0,
            "trigger_count": 0,
            "order_histories": histories,
        }

    def _expire_date(self, order: SimOrder, tif: str) -> str:
        given = order.extra.get("expire_date")
        if given:
            return str(given)
        created = datetime.fromtimestamp(order.created, UTC).date()
        days = {"Day": 0, "GTC": 90, "GTD": 30}.get(tif, 0)
        return (created + timedelta(days=days)).isoformat()

    def _history(self, order: SimOrder) -> list[dict[str, str]]:
        """The audit trail, newest first as documented: executions carry the deal's own
        quantity and price; cancel, expiry and rejection show the remaining quantity."""
        rows: list[dict[str, str]] = []
        deals = iter(order.deals)
        executed = Decimal(0)
        for status, qty, price, at, what in order.history:
            if what.startswith("fill"):
                deal = next(deals, None)
                if deal is None:
                    continue
                executed += deal.qty
                rows.append({
                    "price": _price(deal.price, places=4),
                    "quantity": decimal_text(deal.qty) or "0",
                    "status": "FilledStatus" if status == engine.FILLED
                    else "PartialFilledStatus",
                    "msg": f"Execution of {decimal_text(deal.qty)}",
                    "time": str(int(deal.at)),
                })
                continue
            remaining = status in (engine.CANCELLED, engine.EXPIRED, engine.FAILED)
            rows.append({
                "price": _price(price, places=4),
                "quantity": decimal_text(qty - executed if remaining else qty) or "0",
                "status": self.wire_status(status, what=what, filled=executed > 0,
                                           time_in_force=order.time_in_force.upper()),
                "msg": order.message if status == engine.FAILED else "",
                "time": str(int(at)),
            })
        rows.reverse()
        return rows


def _price(value: Decimal, *, places: int = 3) -> str:
    """Prices as LongPort shows them: fixed decimals in a string (``"200.000"``)."""
    return f"{value:.{places}f}"


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _ok(data: Any) -> SimResponse:
    return SimResponse(200, {"code": 0, "message": "success", "data": data})


def _error(status: int, code: int, message: str) -> SimResponse:
    return SimResponse(status, {"code": code, "message": message})
