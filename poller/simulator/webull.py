"""Simulator of Webull's legacy OpenAPI order endpoints (brokers.md §3, seeds 001 and 003).

Paths, signing and limits follow the legacy "api-doc" generation:

* ``GET /trade/orders/list-open`` and ``GET /trade/orders/list-today`` (``account_id``,
  ``page_size`` ≤ 100, default 10, ``last_client_order_id`` cursor; ``{has_next, orders}``),
  ``GET /trade/order/detail`` (``account_id``, ``client_order_id``), ``POST
  /trade/order/replace`` (seed 003: every original field echoed, only ``qty`` and
  ``limit_price`` may change), ``POST /trade/order/cancel``, ``POST /trade/order/place``.
* Every request must carry a valid signature (brokers.md §3.2) over the ``Host`` header the
  simulator received, computed with whichever ``x-signature-algorithm`` it names. Failures
  are HTTP 401 ``{"error_code", "message"}`` with the documented codes.
* Order queries (list and detail) are limited per app key by arrival time: HK/JP 2 per 2 s,
  US 10 per 30 s; replace and cancel 1 per second. A violation is HTTP 429
  ``{"error_code": "TOO_MANY_REQUESTS", "message": "current limiting"}`` (the status code
  and the absence of Retry-After are not documented; brokers.md 3.3).
* Successes use the legacy envelope ``{"code": 200, "msg": "ok", "data": ...}`` (or the raw
  object with ``envelope="raw"``). Quantities and prices are strings, order ids 26-character
  strings. Orders are HK-shaped (flat) unless ``us_items=True`` (legs nested in ``items[]``).

Webull has no pending or expired statuses: PENDING shows as SUBMITTED, a pending cancel or
replace as SUBMITTED / PARTIAL_FILLED, EXPIRED as CANCELLED. Error codes that Webull does not
document (unknown order, order not modifiable, bad parameter) are this simulator's choice:
``ORDER_NOT_FOUND`` (404), ``ORDER_NOT_MODIFIABLE`` / ``INVALID_PARAMETER`` (400).

With ``push_events=True`` a :class:`~poller.simulator.webullevents.WebullEventsServer` (gRPC
trade events, needs the ``push`` extra) runs beside the HTTP server and pushes an order event
each time an order changes in a way Webull has a ``scene_type`` for (seed 001): a fill
(``FILLED`` / ``FINAL_FILLED``), a cancel (``CANCEL_SUCCESS``; an expiry too, Webull shows it
as CANCELLED), a refused cancel (``CANCEL_FAILED``), a rejection (``PLACE_FAILED``) and a
replace (``MODIFY_SUCCESS``). Placing, accepting and a cancel request push nothing: Webull
documents no scene for them (polling finds new orders).

Over 400 lines: one broker's whole simulated API (signature check, endpoints, paging,
envelopes, limits) in one place, each part short and mirrored from brokers.md §3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

from poller.simulator import engine
from poller.simulator.base import BrokerSim
from poller.simulator.engine import SimOrder
from poller.simulator.httpserver import SimRequest, SimResponse, SlidingWindow

if TYPE_CHECKING:
    from poller.simulator.webullevents import WebullEventsServer

QUERY = "order_query"
REPLACE = "replace"
CANCEL = "cancel"

#: (header, error code when it is missing), in the order the gateway checks them.
REQUIRED_HEADERS = (
    ("x-app-key", "MISSING_APP_KEY"),
    ("x-signature", "MISSING_SIGNATURE"),
    ("x-signature-algorithm", "MISSING_ALGORITHM"),
    ("x-signature-nonce", "MISSING_NONCE"),
    ("x-timestamp", "MISSING_TIMESTAMP"),
    ("x-signature-version", "MISSING_VERSION"),
)
#: x-version values the official SDKs send (not signed).
VERSIONS = ("v1", "v2", "v3")
SIGNED_HEADERS = ("x-app-key", "x-signature-algorithm", "x-signature-nonce",
                  "x-signature-version", "x-timestamp")
#: Allowed distance between x-timestamp and the simulator's clock. Webull's window is not
#: documented (brokers.md 3.2); five minutes is the usual gateway choice.
CLOCK_SKEW = 300.0

#: Fields of a replace's stock_order that must equal the original order (seed 003).
UNMODIFIABLE = ("side", "tif", "extended_hours_trading", "instrument_id", "order_type",
                "stop_price", "trailing_type", "trailing_stop_step")

_STATUS = {
    engine.PENDING: "SUBMITTED",
    engine.SUBMITTED: "SUBMITTED",
    engine.PARTIAL: "PARTIAL_FILLED",
    engine.FILLED: "FILLED",
    engine.CANCELLED: "CANCELLED",
    engine.FAILED: "FAILED",
    engine.EXPIRED: "CANCELLED",  # DAY orders lapse; Webull documents no EXPIRED status
}

#: symbol → instrument_id (AAPL's id is seed 001's; the others are made up).
_INSTRUMENTS = {"00700": "913247275", "09988": "913254558", "00005": "913303964",
                "AAPL": "913256135", "TSLA": "913255598"}
_SYMBOLS = {instrument: symbol for symbol, instrument in _INSTRUMENTS.items()}

#: Book change (engine ``_touch`` text) → the trade event's scene_type; None: no event.
_SCENES: dict[str, str | None] = {
    "placed": None, "accepted": None, "cancel requested": None,
    "cancelled": "CANCEL_SUCCESS", "expired": "CANCEL_SUCCESS",
    "cancel refused": "CANCEL_FAILED", "rejected": "PLACE_FAILED",
    "modified": "MODIFY_SUCCESS",
}


class WebullSim(BrokerSim):
    """Webull's legacy order API on loopback.

    :param region: ``hk``/``jp`` (2 order queries per 2 s) or ``us`` (10 per 30 s, US
        nested order shape unless ``us_items`` says otherwise).
    :param us_items: render orders in the US shape, legs nested in ``items[]``.
    :param envelope: ``legacy`` (``{"code":200,"msg":"ok","data":...}``) or ``raw``.
    :param hold_replaces: a replace leaves the order "processing" until
        :meth:`finish_replace`; meanwhile replace and cancel answer
        ``TRADE_WEBULL_REQUEST_PROCESSING`` (seed 003).
    :param push_events: run the gRPC trade events server beside it (``self.events``).
    :param event_shape: ``envelope`` (seed 001's ``{id, event_type, timestamp, payload}``)
        or ``flat`` (the order fields at the top level, as the SDK sample reads them).
    """

    kind: ClassVar[str] = "webull"
    symbols: ClassVar[list[tuple[str, Decimal]]] = [
        ("00700", Decimal("385.2")), ("09988", Decimal("82.35")), ("00005", Decimal("64.1")),
    ]

    def __init__(self, *, seed: int | None = None, port: int = 0,
                 app_key: str = "wbSimAppKey7f3a91c2", app_secret: str = "wbSimSecret5d8e0b4a6c",
                 region: Literal["us", "hk", "jp"] = "hk", us_items: bool | None = None,
                 envelope: Literal["legacy", "raw"] = "legacy", hold_replaces: bool = False,
                 account_ids: list[str] | None = None, push_events: bool = False,
                 event_shape: Literal["envelope", "flat"] = "envelope") -> None:
        super().__init__(seed=seed, port=port)
        self.app_key = app_key
        self.app_secret = app_secret
        self.region = region
        self.us_items = region == "us" if us_items is None else us_items
        self.envelope = envelope
        self.hold_replaces = hold_replaces
        self.account_list = account_ids or ["4MHSOMIJ88O7E80VBG0O4G6E9A"]
        #: Wall clock for x-timestamp checks (the windows use the server's arrival clock).
        self.wall: Callable[[], float] = time.time
        query = (10, 30.0) if region == "us" else (2, 2.0)
        self.windows[QUERY] = SlidingWindow(*query)
        self.windows[REPLACE] = SlidingWindow(1, 1.0)
        self.windows[CANCEL] = SlidingWindow(1, 1.0)
        route = self.server.route
        route("GET", "/trade/orders/list-open", lambda r: self._list(r, open_only=True))
        route("GET", "/trade/orders/list-today", lambda r: self._list(r, open_only=False))
        route("GET", "/trade/order/detail", self._detail)
        route("POST", "/trade/order/replace", self._replace)
        route("POST", "/trade/order/cancel", self._cancel)
        route("POST", "/trade/order/place", self._place)
        self.event_shape = event_shape
        self.events: WebullEventsServer | None = None
        if push_events:
            self._enable_events()

    # -- trade events (push) ------------------------------------------------------------

    def _enable_events(self) -> None:
        # Imported here: the events server needs the push extra (grpcio, the Webull SDK).
        from poller.simulator.webullevents import WebullEventsServer

        self.events = WebullEventsServer(app_key=self.app_key, app_secret=self.app_secret)
        self.events.wall = lambda: self.wall()
        self.book.listeners.append(lambda order, what, _before: self._order_changed(order, what))

    def _order_changed(self, order: SimOrder, what: str) -> None:
        events = self.events
        if events is None:
            return
        scene = ("FINAL_FILLED" if order.status == engine.FILLED else "FILLED") \
            if what.startswith("fill") else _SCENES.get(what)
        if scene is not None:
            events.push(self.trade_event(order, scene))

    def trade_event(self, order: SimOrder, scene: str) -> dict[str, Any]:
        """The trade event of a change, in seed 001's fields and ``event_shape``."""
        leg = self._leg(order)
        payload: dict[str, Any] = {
            "request_id": uuid.uuid4().hex,
            **{key: leg[key] for key in (
                "account_id", "order_id", "client_order_id", "instrument_id",
                "order_status", "symbol", "qty", "filled_price", "filled_qty", "side",
                "category", "order_type")},
            "scene_type": scene, "biz_type": "TRADE",
        }
        if "last_filled_time" in leg:
            payload["filled_time"] = leg["last_filled_time"]
        if self.event_shape == "flat":
            return payload
        now = datetime.fromtimestamp(self.wall(), UTC)
        return {"id": f"event_{uuid.uuid4()}", "event_type": "TRADE",
                "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"), "payload": payload}

    def start(self) -> WebullSim:
        """Start answering requests (and the events server, with ``push_events``)."""
        super().start()
        if self.events is not None:
            self.events.start()
        return self

    def stop(self) -> None:
        """Stop the events server, the autopilot and the HTTP server."""
        if self.events is not None:
            self.events.stop()
        super().stop()

    # -- BrokerSim ----------------------------------------------------------------------

    def new_order_id(self, number: int) -> str:
        # 26 characters like seed 001's "036LVV5P4I8BV0KHKN60000000": a fixed prefix and a
        # zero-padded sequence, far beyond 2**53 if read as a number.
        return f"036LVV5P4I8BV0KHKN{number:08d}"

    def accounts(self) -> list[str]:
        return list(self.account_list)

    def is_list_request(self, request: Any) -> bool:
        return str(request.path) in ("/trade/orders/list-open", "/trade/orders/list-today")

    def broker_config(self, name: str) -> dict[str, Any]:
        # With share 0.8 the budget allows floor(0.8 * 2) = 1 order query per 2.1 s (HK/JP)
        # or floor(0.8 * 10) = 8 per 30.25 s (US, one per 3.8 s). The interval leaves room
        # for two queries per cycle, the list and one detail probe (or a second page), so
        # a cycle normally ends before the next one is due.
        return {
            "kind": "webull",
            "base_url": self.url,
            "region": self.region,
            "app_key": self.app_key,
            "app_secret": self.app_secret,
            "account_ids": self.accounts(),
            "interval": 8.0 if self.region == "us" else 4.5,
            # Without its events server: no push, never the real stream's default address.
            **({"push": True, "push_url": self.events.target, "push_tls": False}
               if self.events is not None else {"push": False}),
        }

    def not_found(self, request: Any) -> SimResponse:
        return _error(404, "NOT_FOUND", f"no such path: {getattr(request, 'path', '')}")

    # -- helpers for tests --------------------------------------------------------------

    def find(self, account_id: str, client_order_id: str) -> SimOrder | None:
        """The order of an account with that client_order_id."""
        with self.book.lock:
            for order in self.book.orders.values():
                if order.account_id == account_id and order.client_order_id == client_order_id:
                    return order
        return None

    def finish_replace(self, order_id: str) -> SimOrder:
        """Apply a held replace (``hold_replaces=True``)."""
        with self.book.lock:
            order = self.book.get(order_id)
            qty, price = order.extra.pop("pending_replace")
            order.status = order.extra.pop("before_replace", engine.SUBMITTED)
            return self.book.modify(order_id, qty=qty, price=price)

    # -- request checks ---------------------------------------------------------------

    def signature(self, request: SimRequest, algorithm: str) -> str:
        """The signature the request should carry (brokers.md §3.2), over the Host received."""
        headers = request.headers
        signing = {name: headers[name] for name in SIGNED_HEADERS}
        signing["host"] = request.host
        for key, value in request.params:
            signing[key] = f"{signing[key]}&{value}" if key in signing else value
        text = request.path + "&" + "&".join(
            f"{key}={signing[key]}" for key in sorted(signing, key=str.encode))
        sha1 = algorithm == "HMAC-SHA1"
        if request.body:
            body_hash = hashlib.md5 if sha1 else hashlib.sha256
            text += "&" + body_hash(request.body).hexdigest().upper()
        mac = hmac.new(f"{self.app_secret}&".encode(), quote(text, safe="").encode(),
                       hashlib.sha1 if sha1 else hashlib.sha256)
        return base64.b64encode(mac.digest()).decode()

    def _authenticate(self, request: SimRequest) -> SimResponse | None:
        headers = request.headers
        for name, code in REQUIRED_HEADERS:
            if not headers.get(name):
                return _error(401, code, f"header {name} is required")
        if headers.get("x-version") not in VERSIONS:
            # Both official SDKs send it on every request (v1 legacy, v3 in the 3.x SDK).
            return _error(400, "INVALID_PARAMETER", "header x-version is required (v1, v2 "
                                                     "or v3)")
        algorithm = headers["x-signature-algorithm"]
        if algorithm not in ("HMAC-SHA1", "HMAC-SHA256"):
            return _error(401, "SIGNATURE_ALGORITHM_NOT_SUPPORTED",
                          f"signature algorithm {algorithm} is not supported")
        if headers["x-signature-version"] != "1.0":
            return _error(401, "VERSION_NOT_SUPPORTED", "signature version is not supported")
        if not hmac.compare_digest(headers["x-app-key"].encode(), self.app_key.encode()):
            return _error(401, "UNAUTHORIZED", "app key is invalid")
        try:
            stamp = datetime.strptime(headers["x-timestamp"], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return _error(401, "ILLEAGAL_TIMESTAMP", "timestamp is illegal")
        if abs(stamp.replace(tzinfo=UTC).timestamp() - self.wall()) > CLOCK_SKEW:
            return _error(401, "CLOCK_SKEW_EXCEEDED", "clock skew exceeded")
        if not hmac.compare_digest(headers["x-signature"].encode(),
                                   self.signature(request, algorithm).encode()):
            return _error(401, "INCORRECT_SIGN", "signature is incorrect")
        return None

    def _guard(self, request: SimRequest, group: str | None) -> SimResponse | None:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        if group is not None and not self.windows[group].admit(request.arrived):
            return _error(429, "TOO_MANY_REQUESTS", "current limiting")
        return None

    def _ok(self, data: Any) -> SimResponse:
        if self.envelope == "raw":
            return SimResponse(200, data)
        return SimResponse(200, {"code": 200, "msg": "ok", "data": data})

    # -- handlers -----------------------------------------------------------------------

    def _list(self, request: SimRequest, *, open_only: bool) -> SimResponse:
        refused = self._guard(request, QUERY)
        if refused:
            return refused
        account = request.param("account_id")
        if not account or account not in self.account_list:
            return _error(400, "INVALID_PARAMETER", "account_id is invalid")
        try:
            page_size = int(request.param("page_size") or 10)
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= 100:
            return _error(400, "INVALID_PARAMETER", "page_size must be between 1 and 100")
        cursor = request.param("last_client_order_id")
        with self.book.lock:
            # Newest first; the cursor is a position in all of the account's orders, so it
            # stays valid when the order it names finishes between two pages.
            everything = [o for o in self.book.orders.values() if o.account_id == account]
            everything.reverse()
            start = 0
            if cursor:
                positions = [i for i, o in enumerate(everything) if o.client_order_id == cursor]
                if not positions:
                    return _error(400, "INVALID_PARAMETER", "last_client_order_id is invalid")
                start = positions[0] + 1
            rest = [o for o in everything[start:] if not (open_only and o.terminal)]
            page = rest[:page_size]
            return self._ok({"has_next": len(rest) > page_size,
                             "orders": [self.render(o) for o in page]})

    def _detail(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, QUERY)
        if refused:
            return refused
        account, client_id = request.param("account_id"), request.param("client_order_id")
        if not account or not client_id:
            return _error(400, "INVALID_PARAMETER", "account_id and client_order_id are required")
        with self.book.lock:
            order = self.find(account, client_id)
            if order is None:
                return _error(404, "ORDER_NOT_FOUND", "order not found")
            return self._ok(self.render(order))

    def _json_body(self, request: SimRequest) -> dict[str, Any] | None:
        try:
            body = json.loads(request.body, parse_float=Decimal)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _target(self, body: dict[str, Any] | None, client_id: Any
                ) -> tuple[SimOrder | None, SimResponse | None]:
        if body is None or not isinstance(body.get("account_id"), str) or not client_id:
            return None, _error(400, "INVALID_PARAMETER",
                                "account_id and client_order_id are required")
        order = self.find(body["account_id"], str(client_id))
        if order is None:
            return None, _error(404, "ORDER_NOT_FOUND", "order not found")
        if order.status in (engine.PENDING_CANCEL, engine.PENDING_REPLACE):
            return None, _error(400, "TRADE_WEBULL_REQUEST_PROCESSING",
                                "The order is processing, please try later")
        if order.terminal:
            return None, _error(400, "ORDER_NOT_MODIFIABLE",
                                f"order is {_STATUS[order.status]}")
        return order, None

    def _replace(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, REPLACE)
        if refused:
            return refused
        body = self._json_body(request)
        stock = body.get("stock_order") if body else None
        if not isinstance(stock, dict):
            return _error(400, "INVALID_PARAMETER", "stock_order is required")
        for name in ("client_order_id", "side", "tif", "extended_hours_trading",
                     "instrument_id", "order_type", "qty"):
            if stock.get(name) in (None, ""):
                return _error(400, "INVALID_PARAMETER", f"{name} is required")
        with self.book.lock:
            order, refused = self._target(body, stock.get("client_order_id"))
            if refused or order is None:
                return refused or _error(500, "INTERNAL_ERROR", "internal error")
            original = self._leg(order)
            for name in UNMODIFIABLE:
                if not _same(stock.get(name), original.get(name)):
                    return _error(400, "INVALID_PARAMETER", f"{name} cannot be modified")
            try:
                qty = Decimal(str(stock["qty"]))
                price = (Decimal(str(stock["limit_price"]))
                         if stock.get("limit_price") not in (None, "") else order.price)
            except InvalidOperation:
                return _error(400, "INVALID_PARAMETER", "qty and limit_price must be numbers")
            if qty != qty.to_integral_value() or not order.filled < qty <= 1_000_000:
                return _error(400, "INVALID_PARAMETER",
                              "qty must be a whole number above the filled quantity")
            if price <= 0:
                return _error(400, "INVALID_PARAMETER", "limit_price must be positive")
            if self.hold_replaces:
                order.extra["before_replace"] = order.status
                order.extra["pending_replace"] = (qty, price)
                order.status = engine.PENDING_REPLACE
            else:
                self.book.modify(order.order_id, qty=qty, price=price)
            return self._ok({"client_order_id": order.client_order_id})

    def _cancel(self, request: SimRequest) -> SimResponse:
        refused = self._guard(request, CANCEL)
        if refused:
            return refused
        body = self._json_body(request)
        with self.book.lock:
            order, refused = self._target(body, body.get("client_order_id") if body else None)
            if refused or order is None:
                return refused or _error(500, "INTERNAL_ERROR", "internal error")
            self.book.cancel(order.order_id)
            return self._ok({"client_order_id": order.client_order_id})

    def _place(self, request: SimRequest) -> SimResponse:
        # Placing is not limited in the legacy docs we have, so no window here.
        refused = self._guard(request, None)
        if refused:
            return refused
        body = self._json_body(request)
        stock = body.get("stock_order") if body else None
        if body is None or not isinstance(stock, dict):
            return _error(400, "INVALID_PARAMETER", "stock_order is required")
        account = body.get("account_id")
        client_id = str(stock.get("client_order_id") or "")
        if account not in self.account_list:
            return _error(400, "INVALID_PARAMETER", "account_id is invalid")
        # Legacy docs: unique per account, at most 40 characters.
        if not client_id.isalnum() or not client_id.isascii() or len(client_id) > 40:
            return _error(400, "INVALID_PARAMETER", "client_order_id must be 1-40 letters/digits")
        symbol = _SYMBOLS.get(str(stock.get("instrument_id")))
        if symbol is None:
            return _error(400, "INVALID_PARAMETER", "instrument_id is unknown")
        try:
            qty = Decimal(str(stock["qty"]))
            price = Decimal(str(stock.get("limit_price") or 0))
        except (KeyError, InvalidOperation):
            return _error(400, "INVALID_PARAMETER", "qty and limit_price must be numbers")
        side = str(stock.get("side", ""))
        if side not in ("BUY", "SELL") or qty <= 0:
            return _error(400, "INVALID_PARAMETER", "side and qty are invalid")
        with self.book.lock:
            if self.find(str(account), client_id) is not None:
                return _error(400, "INVALID_PARAMETER", "client_order_id is duplicated")
            order = self.book.place(
                str(account), symbol, side, qty, price, client_order_id=client_id,
                order_type=str(stock.get("order_type") or "LIMIT"),
                time_in_force=str(stock.get("tif") or "DAY"),
                extended_hours_trading=bool(stock.get("extended_hours_trading", False)),
            )
            self.book.accept(order.order_id)
            return self._ok({"client_order_id": client_id})

    # -- rendering --------------------------------------------------------------------

    def _leg(self, order: SimOrder) -> dict[str, Any]:
        """The order's fields in the flat (HK/JP) shape."""
        status = order.status
        if status in (engine.PENDING_CANCEL, engine.PENDING_REPLACE):
            status = engine.PARTIAL if order.deals else engine.SUBMITTED
        us = self.us_items
        leg: dict[str, Any] = {
            "account_id": order.account_id,
            "client_order_id": order.client_order_id,
            "order_id": order.order_id,
            "category": "US_STOCK" if us else "HK_STOCK",
            "currency": "USD" if us else "HKD",
            "extended_hours_trading": bool(order.extra.get("extended_hours_trading", False)),
            "filled_price": _num(order.avg_price) if order.deals else "0",
            "filled_qty": _num(order.filled),
            "instrument_id": _INSTRUMENTS.get(order.symbol, "913200000"),
            "order_status": _STATUS[status],
            "order_type": order.order_type,
            "place_time": _time(order.created),
            "qty": _num(order.qty),
            "side": order.side,
            "symbol": order.symbol,
            "short_name": order.symbol,
            "tif": order.time_in_force,
        }
        if order.deals:
            leg["last_filled_time"] = _time(order.deals[-1].at)
        if order.order_type != "MARKET":
            leg["limit_price"] = _num(order.price)
        return leg

    def render(self, order: SimOrder) -> dict[str, Any]:
        """One order in the region's JSON shape."""
        leg = self._leg(order)
        if not self.us_items:
            return leg
        top = ("account_id", "client_order_id", "order_id", "tif", "extended_hours_trading")
        return {
            **{key: leg[key] for key in top},
            "combo_type": "NORMAL",
            "combo_ticker_type": "STOCK",
            "items": [{key: value for key, value in leg.items() if key not in top}],
        }


def _same(sent: Any, original: Any) -> bool:
    """Whether a replace echoes an original field (numbers compare by value)."""
    if sent in (None, "") or original in (None, ""):
        return sent in (None, "") and original in (None, "")
    if isinstance(original, bool) or isinstance(sent, bool):
        return sent is original
    try:
        return Decimal(str(sent)) == Decimal(str(original))
    except InvalidOperation:
        return str(sent) == str(original)


def _num(value: Decimal) -> str:
    """Webull sends quantities and prices as strings."""
    return format(value, "f")


def _time(epoch: float) -> str:
    """``yyyy-MM-ddTHH:mm:ss.SSSZ`` in UTC."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _error(status: int, code: str, message: str) -> SimResponse:
    return SimResponse(status, {"error_code": code, "message": message})
