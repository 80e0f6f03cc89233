"""Shioaji's order and deal callbacks as server-sent events of the ``shioaji server`` HTTP API.

One :meth:`ShioajiEventStream.updates` call is one ``GET /api/v1/stream/data/order_event``
(``Accept: text/event-stream``, the adapter's ``Authorization: Bearer key:secret`` when it
has keys), read with ``httpx_sse`` over the connection's own httpx client; then one
``POST /api/v1/auth/subscribe_trade`` per configured account, since a production server
sends order events only for subscribed accounts. It never reconnects by itself.

Evidence, shioaji 1.7.9 (``pip download --no-deps shioaji``; "bin" is
``shioaji-1.7.9.data/scripts/shioaji``, the CLI and HTTP server; "core" is
``shioaji/_core.abi3.so``; strings found with ``strings -n 6``):

* Route ``/api/v1/stream/data/order_event``: bin, the server's route table (next to
  ``/api/v1/stream/data/tick_stk`` …) and its OpenAPI text "Order event data stream endpoint
  (SSE)"; ``/api/v1/auth/subscribe_trade``: bin, "Subscribe to per-account order/deal
  reports. … Success starts active order/deal reports for the account."
* Frame ``event: order_event``, ``data: {"state": <OrderState>, "data": {<OrderState>:
  {…}}}``: bin's OpenAPI text "Order event frames: unchanged state/data envelope; each
  variant payload has an required nonempty opaque event_id", its serde names
  ``struct LiveOrderEvent with 2 elements`` and ``…::order::callback::OrderEventData`` (an
  enum, so ``{"StockOrder": {…}}``), the event name ``order_event`` in
  ``src/server/http/stream.rs``; the whole shape and the 30 s heartbeat
  (``event: heartbeat``, ``{"type": "heartbeat", "timestamp", "connection_id"}``) as
  brokers.md §4.6 records them from the HTTP API reference.
* OrderState names ``StockOrder``/``StockDeal``/``FuturesOrder``/``FuturesDeal`` and the
  values ``SORDER``/``SDEAL``/``FORDER``/``FDEAL``, both accepted: ``_core.pyi`` ``class
  OrderState`` (line ~2381) and bin's deserializer strings
  ``StockOrderStockDealSDEALFuturesOrderFORDERFuturesDealFDEAL``.
* Order callback ``{event_id, operation{op_type, op_code, op_msg}, order{id, seqno, ordno,
  account, action, price, quantity, order_type, price_type, order_cond, order_lot,
  custom_field}, status{id, exchange_ts, modified_price, cancel_quantity, order_quantity,
  web_id}, contract{code, …}}``: ``_core.pyi`` ``StockOrderEvent``, ``OperationDict``,
  ``EventOrderStatusDict``, ``StockOrderDetailDict`` (lines ~2460-2560; bin ``struct
  StockOrderEvent with 5 elements``); ``op_type`` New, Cancel, UpdateQty, UpdatePrice,
  Reject: ``class OpType``; ``op_code`` "00" is success, anything else a failure: the
  callback tutorial (brokers.md §4.6). There is no order status in it: the operation and
  its outcome say what happened, mapped to the adapter's status names below.
* Deal callback ``{event_id, trade_id, seqno, ordno, exchange_seq, broker_id, account_id,
  action, code, order_cond, order_lot, price, quantity, web_id, custom_field, ts}``:
  ``_core.pyi`` ``StockDealEvent`` (bin ``struct StockDealEvent with 16 elements``);
  ``FuturesDealEvent`` adds futures fields. ``trade_id`` is the order's ``order.id``, the id
  the adapter's list answers use (brokers.md §4.6).
* ``status.order_quantity`` is net of reductions and cancels (issue 13,
  :func:`poller.brokers.shioaji._quantity`): the adapter hands its own quantity rule in, so a
  push and a poll report the same quantity.
* The official reader (core, ``src/api/transport/sse.rs``): "SSE 401; stopping reader",
  "SSE non-200; stopping reader", "session_terminated; stopping reader", "SSE event JSON
  parse failed; ignoring", and an event ``heartbeat``. So: 401 → :class:`BrokerAuthError`;
  another status, ``session_terminated``, a drop or the server closing →
  :class:`BrokerUnavailable`; one unreadable event is logged and skipped. The market-data
  streams announce lost events as ``{"type":"lagged","dropped":N}`` (bin); seen here it
  ends the stream too, so polling returns to full cadence until it reconnects.

Reconnecting is the runner's. The official reader stops on the cases above and its
reconnect delay is compiled code, not a string ("SSE connect error: …; backoff"), so
:data:`RECONNECT_DELAY` is the documented default of server-sent events (the HTML standard's
reconnection time, "a few seconds"); a ``retry:`` field from the server overrides it in
:attr:`ShioajiEventStream.retry_delay`, which the runner reads as the stream's
``reconnect_delay`` (its first wait; it doubles after each further failure in a row).

Over 400 lines: the evidence above, the two callback parsers and the stream that uses them
belong together; split, each part would need the others' evidence to be read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from poller import (
    CONNECTED,
    BrokerAuthError,
    BrokerError,
    BrokerMalformed,
    BrokerUnavailable,
    Fill,
    OrderStatus,
    PushedOrder,
    printable,
    to_decimal,
)

logger = logging.getLogger(__name__)

ORDER_EVENT_PATH = "/api/v1/stream/data/order_event"
SUBSCRIBE_TRADE_PATH = "/api/v1/auth/subscribe_trade"
#: Seconds before reconnecting (the SSE default; a server ``retry:`` overrides it).
RECONNECT_DELAY = 3.0
#: Whether the official reader goes on after each way a stream ends: it stops on all of
#: them ("… stopping reader"); the runner still retries all but a refusal, with backoff.
RECONNECT_AFTER: Mapping[str, bool] = {"401": False, "non-200": False,
                                       "session_terminated": False}
#: The server's heartbeat period (brokers.md §4.6).
HEARTBEAT_INTERVAL = 30.0
#: Silence (not even a heartbeat) after which a connection counts as dead: three missed
#: heartbeats. There is no read timeout otherwise: events may be minutes apart.
IDLE_TIMEOUT = 3 * HEARTBEAT_INTERVAL
#: Event names read as order events ("" and "message": a frame without ``event:``).
ORDER_EVENT_NAMES = frozenset({"order_event", "", "message"})
ORDER_STATES = frozenset({"StockOrder", "SORDER", "FuturesOrder", "FORDER"})
DEAL_STATES = frozenset({"StockDeal", "SDEAL", "FuturesDeal", "FDEAL"})
_STATE_NAMES = {"SORDER": "StockOrder", "SDEAL": "StockDeal", "FORDER": "FuturesOrder",
                "FDEAL": "FuturesDeal"}
#: (op_type, succeeded) → the Shioaji status name the adapter's table maps; absent: the
#: operation leaves the status as it was (a modification, or a refused cancel or change).
OPERATION_STATUS: Mapping[tuple[str, bool], str] = {
    ("New", True): "Submitted",
    ("New", False): "Failed",
    ("Cancel", True): "Cancelled",
    ("Reject", True): "Failed",
    ("Reject", False): "Failed",
}
#: Broker text kept in an error or log message at most (characters).
DETAIL_CHARS = 200
#: Bytes of an error answer read at most.
ERROR_BODY_BYTES = 4096

#: The adapter's quantity rule: (status, order.quantity, status.order_quantity,
#: status.cancel_quantity) → the quantity poller reports.
QuantityRule = Callable[[OrderStatus | None, Decimal | None, Decimal | None, Decimal], Decimal]


@dataclass(frozen=True)
class TradeAccount:
    """One account whose order and deal reports the stream subscribes to."""

    broker_id: str
    account_id: str
    account_type: str = "S"


@dataclass(frozen=True)
class StreamSettings:
    """What one subscription needs, built by the adapter from its config."""

    connection: str
    #: The stream's address (absolute, or relative to the client's base URL).
    url: str
    accounts: tuple[TradeAccount, ...]
    #: The adapter's status table (the one its polling uses) and quantity rule.
    status_table: Mapping[str, OrderStatus]
    quantity: QuantityRule
    #: ``Authorization`` and the like; never shown.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Values to scrub from any broker text that reaches an error or a log line.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: ``subscribe_trade`` address ("": do not subscribe).
    subscribe_url: str = SUBSCRIBE_TRADE_PATH
    connect_timeout: float = 5.0
    idle_timeout: float | None = IDLE_TIMEOUT


# -- parsing ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _epoch(value: Any) -> datetime | None:
    """Epoch seconds (``exchange_ts``, ``ts``; floats as Decimal) as a UTC time."""
    seconds = to_decimal(value)
    if seconds is None or seconds <= 0:
        return None
    while seconds > Decimal(10) ** 10:  # milli-, micro- or nanoseconds
        seconds /= 1000
    return datetime.fromtimestamp(float(seconds), UTC)


def _side(action: Any) -> str:
    text = _text(action)
    return {"Buy": "BUY", "Sell": "SELL"}.get(text, text.upper())


def _succeeded(op_code: Any) -> bool:
    """``op_code`` "00" is success; the all-zero spellings ("0", "0000") of Shioaji's
    other status codes count too."""
    code = _text(op_code).strip()
    return bool(code) and set(code) == {"0"}


def _envelope(text: str) -> tuple[str, dict[str, Any]]:
    """The state name and the callback dict of one frame's data.

    :raises ValueError, TypeError, KeyError: when it is not a readable envelope.
    """
    frame = json.loads(text, parse_float=Decimal)
    if not isinstance(frame, dict):
        raise TypeError(f"event is {type(frame).__name__}, expected an object")
    state = _text(frame["state"])
    state = _STATE_NAMES.get(state, state)
    data = frame["data"]
    if isinstance(data, dict) and len(data) == 1:
        (key, inner), = data.items()
        if _STATE_NAMES.get(key, key) == state and isinstance(inner, dict):
            data = inner  # the enum variant's wrapper {"StockOrder": {...}}
    if not isinstance(data, dict):
        raise TypeError(f"data is {type(data).__name__}, expected an object")
    return state, data


def parse_order_event(event: Mapping[str, Any], *, state: str,
                      status_table: Mapping[str, OrderStatus], quantity: QuantityRule,
                      default_account: str = "") -> PushedOrder:
    """An order callback as a :class:`PushedOrder`.

    :raises ValueError, TypeError, KeyError: when it is not a readable order callback.
    """
    operation, order, status = event["operation"], event["order"], event["status"]
    if not all(isinstance(part, dict) for part in (operation, order, status)):
        raise TypeError("operation, order and status must be objects")
    contract = event.get("contract") or {}
    op_type = _text(operation["op_type"])
    ok = _succeeded(operation.get("op_code"))
    broker_status = OPERATION_STATUS.get((op_type, ok), "")
    canonical = status_table.get(broker_status) if broker_status else None
    order_id = _text(order.get("id") or status["id"])
    if not order_id:
        raise KeyError("order.id")
    placed = to_decimal(order.get("quantity"))
    net = to_decimal(status.get("order_quantity"))
    cancelled = to_decimal(status.get("cancel_quantity"), default=Decimal(0)) or Decimal(0)
    qty = quantity(canonical, placed, net, cancelled) if (
        placed is not None or net is not None) else None
    modified = to_decimal(status.get("modified_price"), default=Decimal(0)) or Decimal(0)
    price = modified if modified else to_decimal(order.get("price"))
    account = (order.get("account") or {}).get("account_id") or default_account
    op_msg = printable(_text(operation.get("op_msg")))
    extra = {"state": state, "op_type": op_type, "op_code": _text(operation.get("op_code")),
             "cancel_quantity": _text(cancelled)}
    for key in ("ordno", "seqno"):
        if order.get(key):
            extra[key] = _text(order[key])
    if event.get("event_id"):
        extra["event_id"] = _text(event["event_id"])
    return PushedOrder(
        account_id=_text(account),
        order_id=order_id,
        client_order_id=_text(order.get("custom_field") or order.get("seqno")),
        status=canonical,
        broker_status=broker_status,
        qty=qty,
        price=price,
        symbol=_text(contract.get("code")),
        side=_side(order.get("action")),
        event_time=_epoch(status.get("exchange_ts")),
        message=op_msg if op_msg or ok else f"{op_type} failed",
        kind=op_type if ok else f"{op_type} failed",
        extra=extra,
    )


def parse_deal_event(event: Mapping[str, Any], *, state: str,
                     default_account: str = "") -> PushedOrder:
    """A deal callback as a :class:`PushedOrder` carrying one :class:`~poller.Fill`.

    A deal report does not say the order's filled total, so ``filled_qty`` stays None (the
    connection confirms with a poll). The fill id is ``exchange_seq``, else ``ordno``.

    :raises ValueError, TypeError, KeyError: when it is not a readable deal callback.
    """
    trade_id = _text(event["trade_id"])
    if not trade_id:
        raise KeyError("trade_id")
    qty = to_decimal(event["quantity"])
    if qty is None or qty <= 0:
        raise ValueError(f"deal quantity {event['quantity']!r}")
    fill_id = _text(event.get("exchange_seq") or event.get("ordno"))
    if not fill_id:
        raise KeyError("exchange_seq")
    extra = {"state": state, "exchange_seq": _text(event.get("exchange_seq"))}
    for key in ("ordno", "seqno", "event_id"):
        if event.get(key):
            extra[key] = _text(event[key])
    moment = _epoch(event.get("ts"))
    return PushedOrder(
        account_id=_text(event.get("account_id")) or default_account,
        order_id=trade_id,
        client_order_id=_text(event.get("custom_field") or event.get("seqno")),
        symbol=_text(event.get("code")),
        side=_side(event.get("action")),
        fill=Fill(fill_id=fill_id, qty=qty, price=to_decimal(event.get("price")), time=moment),
        event_time=moment,
        kind=state,
        extra=extra,
    )


def parse_event(text: str, *, status_table: Mapping[str, OrderStatus], quantity: QuantityRule,
                default_account: str = "") -> PushedOrder:
    """One ``order_event`` frame's data as a :class:`PushedOrder`.

    :raises ValueError, TypeError, KeyError: when it is not a readable order or deal event.
    """
    state, data = _envelope(text)
    if state in ORDER_STATES:
        return parse_order_event(data, state=state, status_table=status_table,
                                 quantity=quantity, default_account=default_account)
    if state in DEAL_STATES:
        return parse_deal_event(data, state=state, default_account=default_account)
    raise ValueError(f"unknown state {printable(state)[:40]!r}")


# -- the stream ---------------------------------------------------------------------------


class ShioajiEventStream:
    """One subscription to the order event stream (a :class:`poller.pushfeed.PushStream`).

    :param client: the connection's httpx client (not closed here); the stream's request
        keeps its connect timeout and replaces the read timeout with ``idle_timeout``.
    """

    def __init__(self, settings: StreamSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        #: Seconds the server asked clients to wait before reconnecting (``retry:``).
        self.retry_delay = RECONNECT_DELAY
        #: Frames seen on the current connection, by kind (tests and status read them).
        self.seen: Counter[str] = Counter()
        self._response: httpx.Response | None = None
        self._closed = False

    @property
    def reconnect_delay(self) -> float:
        """Seconds before the first reconnect (:mod:`poller.pushrunner` reads it)."""
        return self.retry_delay

    def _scrub(self, text: str) -> str:
        """Broker text fit for an error or a log line: printable, short, no secret."""
        for secret in self.settings.secrets:
            if secret:
                text = text.replace(secret, "***")
        return printable(text)[:DETAIL_CHARS]

    def _timeout(self) -> httpx.Timeout:
        connect = self.settings.connect_timeout
        return httpx.Timeout(connect, read=self.settings.idle_timeout)

    async def updates(self) -> AsyncIterator[PushedOrder]:
        """Connect, subscribe the accounts, yield ``CONNECTED``, then updates until it ends.

        :raises BrokerAuthError: the server refused the credentials (HTTP 401).
        :raises BrokerUnavailable: it cannot be reached, answered another status, dropped
            the stream, went silent, ended it or sent ``session_terminated``.
        :raises BrokerMalformed: it answered 200 with something that is not an event stream.
        """
        if self._closed:
            return
        cfg = self.settings
        self.seen = Counter()
        try:
            async with aconnect_sse(self.client, "GET", cfg.url, headers=dict(cfg.headers),
                                    timeout=self._timeout()) as source:
                self._response = source.response
                if source.response.status_code != 200:
                    raise await self._refused(source.response, "order event stream")
                kind = source.response.headers.get("content-type", "").partition(";")[0]
                if kind.strip() != "text/event-stream":
                    # Checked before subscribing: such an answer is no stream that is up.
                    raise BrokerMalformed(
                        "order event stream: HTTP 200 is not text/event-stream but "
                        f"{self._scrub(kind) or 'without a content-type'}",
                        connection=cfg.connection)
                await self._subscribe()
                yield CONNECTED
                async for sse in source.aiter_sse():
                    update = self._read(sse)
                    if update is not None:
                        yield update
        except SSEError as err:
            raise BrokerMalformed(f"order event stream: {self._scrub(str(err))}",
                                  connection=cfg.connection) from None
        except httpx.TimeoutException as err:
            if self._closed:
                return
            what = ("nothing, not even a heartbeat, for "
                    f"{cfg.idle_timeout:g} s" if isinstance(err, httpx.ReadTimeout)
                    else f"timed out ({type(err).__name__})")
            raise BrokerUnavailable(f"order event stream: {what}",
                                    connection=cfg.connection) from None
        except httpx.HTTPError as err:
            if self._closed:
                return
            raise BrokerUnavailable(f"order event stream failed ({type(err).__name__})",
                                    connection=cfg.connection) from None
        finally:
            self._response = None
        if not self._closed:
            raise BrokerUnavailable("order event stream: the server ended it",
                                    connection=cfg.connection, code="closed")

    async def aclose(self) -> None:
        """End the subscription; a running :meth:`updates` returns."""
        self._closed = True
        response = self._response
        if response is not None:
            await response.aclose()

    async def _refused(self, response: httpx.Response, what: str) -> BrokerError:
        """The error for a non-success answer (its body read, a little of it)."""
        status = response.status_code
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass  # the status says enough
        message = ""
        try:
            parsed = json.loads(body[:ERROR_BODY_BYTES])
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                message = parsed["message"]
        except ValueError:
            pass
        detail = f": {self._scrub(message)}" if message else ""
        connection = self.settings.connection
        if status == 401:
            return BrokerAuthError(f"{what}: HTTP 401{detail} (credentials refused)",
                                   connection=connection, code="401")
        return BrokerUnavailable(f"{what}: HTTP {status}{detail}", connection=connection,
                                 code=str(status))

    async def _subscribe(self) -> None:
        """``subscribe_trade`` for each account: without it a production server sends only
        heartbeats (brokers.md §4.6); in simulation mode it is a no-op."""
        cfg = self.settings
        if not cfg.subscribe_url:
            return
        for account in cfg.accounts:
            body = {"account_type": account.account_type, "broker_id": account.broker_id,
                    "account_id": account.account_id}
            try:
                async with asyncio.timeout(cfg.connect_timeout + 30.0):
                    answer = await self.client.post(cfg.subscribe_url, json=body,
                                                    headers=dict(cfg.headers))
            except (httpx.HTTPError, TimeoutError) as err:
                raise BrokerUnavailable(
                    f"subscribe_trade for account {account.account_id} failed "
                    f"({type(err).__name__})", connection=cfg.connection) from None
            if not 200 <= answer.status_code < 300:
                raise await self._refused(answer, f"subscribe_trade for account "
                                                  f"{account.account_id}")

    def _read(self, sse: ServerSentEvent) -> PushedOrder | None:
        """One frame: an order update, None for heartbeats, other events and skipped ones."""
        connection = self.settings.connection
        if sse.retry is not None and sse.retry > 0:
            self.retry_delay = sse.retry / 1000
        if sse.event == "heartbeat":
            self.seen["heartbeat"] += 1
            return None
        if sse.event == "session_terminated":
            raise BrokerUnavailable("order event stream: the server terminated the session "
                                    "(session_terminated)", connection=connection,
                                    code="session_terminated")
        if sse.event not in ORDER_EVENT_NAMES:
            self.seen["other"] += 1
            logger.debug("%s: order event stream: ignored event %s", connection,
                         self._scrub(sse.event))
            return None
        if not sse.data.strip():
            return None
        if '"type"' in sse.data:
            control = _control(sse.data)
            if control == "heartbeat":
                self.seen["heartbeat"] += 1
                return None
            if control == "lagged":
                raise BrokerUnavailable("order event stream: the server dropped events for "
                                        "this client (lagged)", connection=connection,
                                        code="lagged")
        accounts = self.settings.accounts
        try:
            update = parse_event(
                sse.data, status_table=self.settings.status_table,
                quantity=self.settings.quantity,
                default_account=accounts[0].account_id if len(accounts) == 1 else "")
        except (ValueError, TypeError, KeyError, ArithmeticError) as err:
            # One unreadable event is skipped, as the official reader does; the
            # reconciliation poll catches what it said.
            self.seen["unreadable"] += 1
            logger.warning("%s: order event stream: skipped an unreadable event (id %s): "
                           "%s: %s", connection, self._scrub(sse.id or "-"),
                           type(err).__name__, self._scrub(str(err)))
            return None
        known = {a.account_id for a in accounts}
        if known and update.account_id not in known:
            self.seen["other account"] += 1
            return None
        self.seen["deal" if update.fill is not None else "order"] += 1
        return update


def _control(text: str) -> str:
    """The ``type`` of a control frame (``heartbeat``, ``lagged``), "" for anything else."""
    try:
        frame = json.loads(text)
    except ValueError:
        return ""
    if isinstance(frame, dict) and "state" not in frame:
        return _text(frame.get("type"))
    return ""


__all__ = ["DEAL_STATES", "HEARTBEAT_INTERVAL", "IDLE_TIMEOUT", "OPERATION_STATUS",
           "ORDER_EVENT_PATH", "ORDER_STATES", "RECONNECT_AFTER", "RECONNECT_DELAY",
           "SUBSCRIBE_TRADE_PATH", "ShioajiEventStream", "StreamSettings", "TradeAccount",
           "parse_deal_event", "parse_event", "parse_order_event"]
