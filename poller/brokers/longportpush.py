"""LongPort's trade push: order-changed notifications over its binary WebSocket protocol.

Built as the official SDK does it (longbridge/openapi, Rust core of the ``longbridge``
wheel):

* ``rust/src/trade/core.rs`` (``Core::connect``, ``handle_subscribe``): a one-time password
  from ``GET /v1/socket/token`` (signed like every REST call; the adapter's
  :meth:`~poller.brokers.longport.LongPortAdapter.socket_token`), a WebSocket to the trade
  URL, an ``AuthRequest{token}`` (command 2), then ``Sub{topics: ["private"]}`` (16).
* ``rust/crates/wsclient/src/client.rs`` (``do_connect``): the URL gets ``version=1``,
  ``codec=1`` (protobuf) and ``platform=9`` (OpenAPI); the upgrade carries
  ``Accept-Language`` and ``x-dc-region`` (``rust/src/config.rs``
  ``create_ws_request``). Heartbeats are the server's WebSocket pings: the client answers
  them and gives the connection up when none came for ``HEARTBEAT_TIMEOUT`` (120 s); it
  sends none of its own. Packets are framed as in :mod:`poller.brokers.longportframes`.
* ``rust/src/trade/push_types.rs``: a push with command 18 is a ``Notification``; on topic
  ``private`` its ``data`` is JSON ``{"event": "order_changed_lb", "data": {…}}`` with the
  order's fields (``PushOrderChanged``), read here with the adapter's own
  :func:`~poller.brokers.longport.parse_order` (the same status table and rules as polling).
* Default trade URLs (``rust/src/config.rs``): ``wss://openapi-trade.longbridge.com/v2``
  (``.cn`` in mainland China); poller takes ``openapi-trade.`` of the REST host's domain.

Reconnecting is the runner's job (one :meth:`LongPortTradePush.updates` call is one
connection). The SDK's numbers, from ``core.rs`` and ``client.rs``: it waits
:data:`RECONNECT_DELAY` (2 s) before every attempt and retries for ever
(:data:`MAX_RETRIES` None) after *any* failure (connect, token, auth, subscribe:
:data:`RETRY_ANY_FAILURE`); gRPC codes do not apply (no gRPC here). The stream hands the
runner :attr:`LongPortTradePush.reconnect_delay` (its first wait, doubled after each further
failure in a row up to the runner's cap) and no ``retryable`` (every failure is retried),
except that poller stops on refused credentials until a reload, as for every broker.

Over 400 lines: one connection's whole protocol (URL, upgrade, auth, subscription,
heartbeat watch, notification reading, close and error translation) is one state machine;
the packet framing is already its own module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from poller import (
    CONNECTED,
    BrokerAuthError,
    BrokerUnavailable,
    PushedOrder,
    printable,
)

from . import longportframes as frames
from .longport import STATUS_TABLE, parse_order  # the polls' reader: push and poll agree
from .longportproto import control_pb2, error_pb2, subscribe_pb2

logger = logging.getLogger(__name__)
#: websockets' own logger for these connections: its frame dumps (``> BINARY 01 02 …``,
#: debug level) would show bytes of the one-time password, so they are dropped.
wire_logger = logging.getLogger(__name__ + ".wire")
wire_logger.addFilter(lambda record: not str(record.msg).startswith(("> ", "< ")))

#: ``core.rs`` ``RECONNECT_DELAY``: seconds before each reconnect attempt.
RECONNECT_DELAY = 2.0
#: ``Core::run`` retries until the context is dropped: None = for ever.
MAX_RETRIES: int | None = None
#: ``Core::reconnect`` retries after every kind of failure, refused credentials included.
RETRY_ANY_FAILURE = True
#: ``client.rs``: connect, auth and request deadlines, and the heartbeat timeout (seconds).
CONNECT_TIMEOUT = 5.0
AUTH_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
HEARTBEAT_TIMEOUT = 120.0
#: ``do_connect``: ProtocolVersion::Version1, CodecType::Protobuf, Platform::OpenAPI.
PROTOCOL_QUERY = {"version": "1", "codec": "1", "platform": "9"}
#: Command codes (``control.proto`` / ``subscribe.proto`` ``Command``).
CMD_CLOSE: int = control_pb2.CMD_CLOSE
CMD_AUTH: int = control_pb2.CMD_AUTH
CMD_SUBSCRIBE: int = subscribe_pb2.CMD_SUB
CMD_NOTIFY: int = subscribe_pb2.CMD_NOTIFY
#: ``push_types.rs``: the topic and event of order changes.
TOPIC_PRIVATE = "private"
EVENT_ORDER_CHANGED = "order_changed_lb"
#: Default trade push URL (``config.rs`` ``DEFAULT_TRADE_WS_URL``).
DEFAULT_TRADE_WS_URL = "wss://openapi-trade.longbridge.com/v2"
#: ``Close.Code`` values that mean the credentials or the session were refused.
CLOSE_AUTH_CODES = frozenset({control_pb2.Close.AuthError})
#: Broker text kept in an error message at most (characters).
DETAIL_CHARS = 200
#: Largest WebSocket message read (a notification is a few kB).
MAX_MESSAGE = 4 * 1024 * 1024


def trade_ws_url(push_url: str, base_url: str, *, tls: bool = True) -> str:
    """The trade WebSocket URL: ``push_url`` (its scheme set by ``tls``; ``/v2`` when it
    has no path), else ``openapi-trade.`` + the domain of an official REST host, else the
    SDK's default."""
    given = push_url.strip()
    if not given:
        host = httpx.URL(base_url).host
        if host.startswith("openapi.") and host.count(".") >= 2:
            return f"wss://openapi-trade.{host.removeprefix('openapi.')}/v2"
        return DEFAULT_TRADE_WS_URL
    rest = given.split("://", 1)[1] if "://" in given else given
    if "/" not in rest:
        rest += "/v2"
    return ("wss://" if tls else "ws://") + rest


def with_protocol_query(url: str) -> str:
    """``url`` with the SDK's ``version``, ``codec`` and ``platform`` query parameters."""
    return url + ("&" if "?" in url else "?") + urlencode(PROTOCOL_QUERY)


# -- parsing ------------------------------------------------------------------------------


def parse_order_changed(data: Any, *, account_id: str, now: datetime) -> PushedOrder:
    """One ``order_changed_lb`` event's ``data`` (``PushOrderChanged``) as a PushedOrder.

    Read by the polls' :func:`~poller.brokers.longport.parse_order` (its field names
    mapped: ``submitted_quantity`` is ``quantity``, ``submitted_price`` is ``price``), so a
    push and a poll of the same order agree. A provisional ``ExpiredStatus`` (a GTC order
    between sessions) and a status the table does not know leave ``status`` None with
    ``broker_status`` set: only a poll settles them. ``last_share``/``last_price`` (the
    latest deal) go to ``extra``, not ``fill``: the detail's history is what names deals.

    :raises KeyError, TypeError, ValueError, ArithmeticError: not a readable order change.
    """
    if not isinstance(data, dict):
        raise TypeError(f"order change is {type(data).__name__}, expected an object")
    item = dict(data)
    item["quantity"] = data.get("submitted_quantity")
    item["price"] = data.get("submitted_price")
    snapshot = parse_order(item, broker="", account_id=account_id, now=now,
                           trust_time_in_force=False)
    settled = not (snapshot.unknown_status or snapshot.provisional)
    extra = dict(snapshot.extra)
    for key in ("account_no", "last_share", "last_price", "trigger_price"):
        value = data.get(key)
        if value not in (None, ""):
            extra[key] = str(value)
    return PushedOrder(
        account_id=account_id,
        order_id=snapshot.order_id,
        client_order_id=snapshot.client_order_id,
        status=snapshot.status if settled else None,
        broker_status=snapshot.broker_status,
        filled_qty=snapshot.filled_qty,
        avg_fill_price=snapshot.avg_fill_price,
        qty=snapshot.qty,
        price=snapshot.price,
        symbol=snapshot.symbol,
        side=snapshot.side,
        event_time=snapshot.updated_at,
        message=snapshot.message,
        kind=EVENT_ORDER_CHANGED,
        extra=extra,
    )


def read_notification(body: bytes) -> tuple[str, str, Any]:
    """(topic, event, data) of a ``Notification`` body whose ``data`` is JSON.

    :raises ValueError: not a Notification, or its data is not ``{event, data}`` JSON.
    """
    note = subscribe_pb2.Notification()
    try:
        note.ParseFromString(body)
    except Exception as err:  # protobuf's DecodeError is not exported in a typed way
        raise ValueError(f"not a Notification: {type(err).__name__}") from None
    topic = str(note.topic)
    if topic != TOPIC_PRIVATE:
        return topic, "", None
    event = json.loads(bytes(note.data), parse_float=Decimal)
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise ValueError("notification data is not {event, data}")
    return topic, event["event"], event.get("data")


# -- the stream ---------------------------------------------------------------------------


class _HeartbeatConnection(ClientConnection):
    """A client connection that notes when the server's last ping came (the SDK's
    heartbeat: ``process_loop`` watches ``msg.is_ping()``)."""

    last_ping: float = 0.0

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.last_ping = time.monotonic()
        super().process_event(event)


@dataclass(frozen=True)
class TradePushSettings:
    """What one trade push connection needs, built by the adapter from its config."""

    connection: str
    #: ``ws(s)://host[:port]/path``, without the protocol query.
    url: str
    #: poller's name of the account (the config's ``account_id``).
    account_id: str
    #: The data centre, sent as ``x-dc-region``.
    region: str
    #: Fetches a one-time password (the adapter's ``socket_token``).
    token: Callable[[], Awaitable[str]]
    #: The adapter's clock (for expiry rules).
    now: Callable[[], datetime]
    #: Values never to show in a message (the config's credentials).
    secrets: tuple[str, ...] = ()
    language: str = "en"
    connect_timeout: float = CONNECT_TIMEOUT
    auth_timeout: float = AUTH_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT


class LongPortTradePush:
    """One subscription to LongPort's trade push (a :class:`poller.pushfeed.PushStream`)."""

    #: Seconds before the first reconnect (the SDK's delay; :mod:`poller.pushrunner`).
    reconnect_delay: float = RECONNECT_DELAY

    def __init__(self, settings: TradePushSettings) -> None:
        self.settings = settings
        self._ws: _HeartbeatConnection | None = None
        self._closed = False
        self._token = ""
        self._request_id = 0
        #: Messages seen on the current connection, by kind (tests and status read them).
        self.seen: Counter[str] = Counter()

    def _scrub(self, text: str) -> str:
        """Broker text fit for a message: printable, short, no credential or token in it."""
        for secret in (*self.settings.secrets, self._token):
            if secret:
                text = text.replace(secret, "***")
        return printable(text)[:DETAIL_CHARS]

    def _unavailable(self, message: str, code: str = "") -> BrokerUnavailable:
        return BrokerUnavailable(f"trade push: {message}", connection=self.settings.connection,
                                 code=code)

    async def updates(self) -> AsyncIterator[PushedOrder]:
        """Connect, authenticate, subscribe to ``private``, yield ``CONNECTED``, then one
        :class:`~poller.pushfeed.PushedOrder` per order change until the connection ends.

        :raises BrokerAuthError: the token request or the auth was refused.
        :raises BrokerUnavailable: no connection, a closed or silent one, a refused
            subscription; ``code`` names the cause.
        """
        if self._closed:
            return
        cfg = self.settings
        self.seen = Counter()
        self._token = await cfg.token()
        ws = await self._connect()
        try:
            await self._authenticate(ws)
            await self._subscribe(ws)
            yield CONNECTED
            while True:
                data = await self._receive(ws, deadline=None)
                update = self._read_push(data)
                if update is not None:
                    yield update
        except ConnectionClosed as err:
            if self._closed:
                return
            raise self._closed_error(err) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                return
            raise
        finally:
            self._ws = None
            self._token = ""
            await ws.close()

    async def aclose(self) -> None:
        """End the subscription; a running :meth:`updates` returns."""
        self._closed = True
        ws = self._ws
        if ws is not None:
            await ws.close()

    # -- the connection -------------------------------------------------------------------

    async def _connect(self) -> _HeartbeatConnection:
        cfg = self.settings
        try:
            ws = await connect(
                with_protocol_query(cfg.url),
                additional_headers={"Accept-Language": cfg.language,
                                    "x-dc-region": cfg.region},
                # As tokio-tungstenite in the SDK: no compression, no proxy, no client pings.
                compression=None, proxy=None, ping_interval=None,
                open_timeout=cfg.connect_timeout, max_size=MAX_MESSAGE,
                create_connection=_HeartbeatConnection, logger=wire_logger)
        except InvalidStatus as err:
            status = err.response.status_code
            if status in (401, 403):
                raise BrokerAuthError(f"trade push: the upgrade was refused (HTTP {status})",
                                      connection=cfg.connection, code=str(status)) from None
            raise self._unavailable(f"the upgrade was refused (HTTP {status})",
                                    str(status)) from None
        except (OSError, TimeoutError, WebSocketException) as err:
            raise self._unavailable(f"cannot connect to {httpx.URL(cfg.url).host} "
                                    f"({type(err).__name__})", "connect") from None
        assert isinstance(ws, _HeartbeatConnection)
        ws.last_ping = time.monotonic()
        self._ws = ws
        if self._closed:  # aclose() came while connecting
            await ws.close()
        return ws

    async def _request(self, ws: _HeartbeatConnection, command: int, body: bytes,
                       timeout: float) -> frames.Response:
        """Send one request and wait for its response (pushes before it are ignored:
        nothing is subscribed yet)."""
        self._request_id += 1
        request_id = self._request_id
        millis = min(int(timeout * 1000), 60000)  # request_raw caps it at 60 s
        await ws.send(frames.encode(frames.Request(command, request_id, millis, body)))
        deadline = time.monotonic() + timeout
        while True:
            data = await self._receive(ws, deadline=deadline)
            try:
                packet = frames.decode(data)
            except frames.FrameError as err:
                self._skip("frame", err)
                continue
            if isinstance(packet, frames.Response) and packet.request_id == request_id:
                return packet

    async def _receive(self, ws: _HeartbeatConnection, *, deadline: float | None) -> bytes:
        """The next binary message, within ``deadline`` (monotonic) and the heartbeat."""
        while True:
            now = time.monotonic()
            silent_until = ws.last_ping + self.settings.heartbeat_timeout
            if now >= silent_until:
                raise self._unavailable(
                    f"no heartbeat for {self.settings.heartbeat_timeout:g} s", "heartbeat")
            if deadline is not None and now >= deadline:
                raise self._unavailable("no answer in time", "timeout")
            wait = silent_until - now if deadline is None else min(silent_until, deadline) - now
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=min(wait, 1.0))
            except TimeoutError:
                continue  # a ping may have come meanwhile: check again
            if isinstance(message, str):
                self._skip("text", ValueError("a text message"))
                continue
            return message

    def _error_detail(self, response: frames.Response) -> str:
        error = error_pb2.Error()
        try:
            error.ParseFromString(response.body)
        except Exception:  # an unreadable error body: the status says enough
            return f"status {response.status}"
        text = f"status {response.status}, code {error.code}"
        return text + (f": {self._scrub(str(error.msg))}" if error.msg else "")

    async def _authenticate(self, ws: _HeartbeatConnection) -> None:
        request = control_pb2.AuthRequest(token=self._token)
        response = await self._request(ws, CMD_AUTH, request.SerializeToString(),
                                       self.settings.auth_timeout)
        if response.status != 0:
            raise BrokerAuthError(f"trade push: auth refused ({self._error_detail(response)})",
                                  connection=self.settings.connection,
                                  code=str(response.status))
        self.seen["authenticated"] += 1

    async def _subscribe(self, ws: _HeartbeatConnection) -> None:
        request = subscribe_pb2.Sub(topics=[TOPIC_PRIVATE])
        response = await self._request(ws, CMD_SUBSCRIBE, request.SerializeToString(),
                                       self.settings.request_timeout)
        if response.status != 0:
            raise self._unavailable(f"subscription refused ({self._error_detail(response)})",
                                    "subscribe")
        answer = subscribe_pb2.SubResponse()
        try:
            answer.ParseFromString(response.body)
        except Exception:
            raise self._unavailable("unreadable subscription answer", "subscribe") from None
        failed = {str(f.topic): str(f.reason) for f in answer.fail}
        if TOPIC_PRIVATE in failed or TOPIC_PRIVATE not in (*answer.success, *answer.current):
            reason = self._scrub(failed.get(TOPIC_PRIVATE, "not in the answer"))
            raise self._unavailable(f"subscription to {TOPIC_PRIVATE} failed: {reason}",
                                    "subscribe")
        self.seen["subscribed"] += 1

    def _closed_error(self, err: ConnectionClosed) -> BrokerUnavailable:
        close = err.rcvd
        if close is None:
            return self._unavailable("the connection dropped", "closed")
        reason = self._scrub(close.reason)
        return self._unavailable(f"the server closed the connection ({close.code}"
                                 + (f": {reason}" if reason else "") + ")", str(close.code))

    # -- messages --------------------------------------------------------------------------

    def _skip(self, what: str, err: Exception) -> None:
        """One unreadable message: logged once, skipped (the reconciliation poll catches
        what it said); the connection itself is fine."""
        self.seen["unreadable"] += 1
        logger.warning("%s: trade push: skipped an unreadable %s: %s: %s",
                       self.settings.connection, what, type(err).__name__,
                       self._scrub(str(err)))

    def _read_push(self, data: bytes) -> PushedOrder | None:
        try:
            packet = frames.decode(data)
        except frames.FrameError as err:
            self._skip("frame", err)
            return None
        if not isinstance(packet, frames.Push):
            self.seen["other"] += 1
            return None  # a late response: nothing is waiting for it
        if packet.command == CMD_CLOSE:
            self._server_close(packet.body)
        if packet.command != CMD_NOTIFY:
            self.seen["other"] += 1
            logger.debug("%s: trade push: ignored command %s", self.settings.connection,
                         packet.command)
            return None
        try:
            topic, event, payload = read_notification(packet.body)
            if topic != TOPIC_PRIVATE or event != EVENT_ORDER_CHANGED:
                self.seen["other"] += 1  # another topic, or a grid-trading order
                return None
            update = parse_order_changed(payload, account_id=self.settings.account_id,
                                         now=self.settings.now())
        except (ValueError, TypeError, KeyError, ArithmeticError) as err:
            self._skip("notification", err)
            return None
        self.seen["order"] += 1
        if update.status is None and update.broker_status not in STATUS_TABLE:
            logger.warning("%s: trade push: undocumented order status %s",
                           self.settings.connection, self._scrub(update.broker_status))
        return update

    def _server_close(self, body: bytes) -> None:
        """A ``Close`` control push: the server is ending the connection."""
        close = control_pb2.Close()
        try:
            close.ParseFromString(body)
        except Exception:
            raise self._unavailable("the server closed the session", "close") from None
        name = control_pb2.Close.Code.Name(close.code) \
            if close.code in control_pb2.Close.Code.values() else str(close.code)
        text = f"the server closed the session ({name}" + (
            f": {self._scrub(str(close.reason))})" if close.reason else ")")
        if close.code in CLOSE_AUTH_CODES:
            raise BrokerAuthError(f"trade push: {text}", connection=self.settings.connection,
                                  code=name)
        raise self._unavailable(text, name)


__all__ = ["CONNECT_TIMEOUT", "DEFAULT_TRADE_WS_URL", "EVENT_ORDER_CHANGED", "HEARTBEAT_TIMEOUT",
           "MAX_RETRIES", "PROTOCOL_QUERY", "RECONNECT_DELAY", "RETRY_ANY_FAILURE",
           "TOPIC_PRIVATE", "LongPortTradePush", "TradePushSettings", "parse_order_changed",
           "read_notification", "trade_ws_url", "with_protocol_query"]
