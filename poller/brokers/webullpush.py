"""Webull's trade events over gRPC: one subscription, its signed metadata, its messages.

Built exactly as the official client does it (``webull-openapi-python-sdk`` 3.0.4):

* ``webull/trade/trade_events_client.py`` (``TradeEventsClient``): a server stream
  ``grpc.trade.event.EventService/Subscribe`` on ``events-api.<region>:443`` over TLS
  (``core/data/endpoints.json``, ``events-api``), one ``SubscribeRequest{subscribeType,
  timestamp (ms), accounts}`` per connection; answers with ``eventType`` SubscribeSuccess,
  Ping, AuthError, NumOfConnExceed or SubscribeExpired are control messages, anything else
  is an event whose ``payload`` is JSON when ``contentType`` is ``application/json``.
  The SDK client asks for ``subscribeType`` 7 (every kind); poller asks for 1
  (``types.ORDER_STATUS_CHANGED``, the only kind the docs allow today) and reads answers
  with ``eventType`` 1024 (``types.EVENT_TYPE_ORDER``).
* ``webull/trade/events/signature_composer.py`` (``calc_signature``): the metadata
  ``x-app-key``, ``x-signature-algorithm``, ``x-signature-version``, ``x-signature-nonce``,
  ``x-timestamp``, ``x-signature``. Unlike REST, the signed text has no path or host, its
  pairs are joined with ``=`` (the composer's way without a path), and the request digest is
  lower-case hex (MD5 / SHA-256); a test checks :func:`event_metadata` against it.
* ``webull/trade/events/default_retry_policy.py``: the SDK reconnects for ever
  (``max_retry_times=-1``) every 5 s (``FixedDelayStrategy(5000)``) after UNAVAILABLE,
  INTERNAL or UNKNOWN, and ends its client after any other gRPC code. This stream never
  reconnects itself (one :meth:`updates` call is one connection); it tells
  :class:`poller.pushrunner.PushRunner` the SDK's numbers through
  :attr:`WebullEventStream.reconnect_delay` (:data:`RECONNECT_DELAY`: the first wait, which
  the runner doubles after each further failure in a row, up to its 60 s cap) and
  :meth:`WebullEventStream.retryable` (:data:`RETRYABLE_STATUS`: another gRPC code stops the
  stream until a reload, polling going on). The runner reconnects for ever, as
  :data:`MAX_RETRIES` says the SDK does. poller's own codes ``NumOfConnExceed`` and
  ``SubscribeExpired`` (the SDK logs those answers and reads on) and a stream ended without
  an error (the SDK stops) are retried with backoff; polling covers the gap meanwhile.
* Keepalive: the SDK's channel has none, so a connection that dies without a reset (a NAT
  or proxy forgetting it) would look up for ever; :data:`CHANNEL_OPTIONS` make gRPC ping it
  and end the call UNAVAILABLE (retried) when the ping goes unanswered.

Over 400 lines: the evidence above, the signer, the event reader and the stream that uses
them are one protocol; split, each part would need the others' evidence to be read.

Event JSON (seed 001, brokers.md 3.6) comes in two shapes, both read: the Broker API's
envelope ``{id, event_type: "TRADE", timestamp, payload: {order fields}}`` and the order
fields at the top level (the SDK sample reads ``payload['request_id']``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import grpc
import grpc.aio
from pydantic import SecretStr
from webull.trade.events import events_pb2, events_pb2_grpc
from webull.trade.events import types as event_types

from poller import (
    CONNECTED,
    BrokerAuthError,
    BrokerError,
    BrokerUnavailable,
    OrderStatus,
    PushedOrder,
    printable,
    to_decimal,
)

from .webull import field_text, parse_time  # the polls' readers: push and poll agree

logger = logging.getLogger(__name__)

#: The official events port (``TradeEventsClient(port=443)``).
EVENTS_PORT = 443
#: Events hosts of poller's Webull regions (SDK ``core/data/endpoints.json``, ``events-api``).
EVENTS_HOSTS: dict[str, str] = {
    "us": "events-api.webull.com",
    "hk": "events-api.webull.hk",
    "jp": "events-api.webull.co.jp",
}
#: ``DefaultSubscribeRetryPolicy(fixed_delay=5000)``: seconds between two connections.
RECONNECT_DELAY = 5.0
#: ``DefaultSubscribeRetryPolicy(max_retry_times=-1)``: None = reconnect for ever.
MAX_RETRIES: int | None = None
#: ``RetryOnGrpcStatusCondition.DEFAULT_RETRYABLE_GRPC_STATUS_LIST``, by ``StatusCode``
#: name: the codes after which the SDK reconnects. Every other code ends its client.
#: :class:`BrokerUnavailable` raised here carries the code name as ``code``.
RETRYABLE_STATUS = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN"})
#: Every gRPC status code name: a code outside it is poller's own (a control answer).
GRPC_STATUS = frozenset(code.name for code in grpc.StatusCode)
#: Channel keepalive: an HTTP/2 ping after 5 min without traffic, the connection dropped
#: when it goes unanswered for 20 s. 5 min is gRPC servers' default minimum ping interval
#: (core, Go, Java): pinging more often can earn a GOAWAY ``too_many_pings``.
KEEPALIVE_TIME_MS = 300_000
KEEPALIVE_TIMEOUT_MS = 20_000
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
)
#: ``subscribeType`` poller subscribes to: order status changes (``types.py``).
SUBSCRIBE_ORDERS: int = event_types.ORDER_STATUS_CHANGED
#: ``eventType`` of an order event (``types.py``).
EVENT_TYPE_ORDER: int = event_types.EVENT_TYPE_ORDER

#: gRPC codes that mean the credentials or the signature were refused.
AUTH_STATUS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
#: Control answers (``events.proto`` ``EventType``) by number.
SUBSCRIBE_SUCCESS, PING, AUTH_ERROR, CONN_EXCEEDED, SUBSCRIBE_EXPIRED = (
    events_pb2.SubscribeSuccess, events_pb2.Ping, events_pb2.AuthError,
    events_pb2.NumOfConnExceed, events_pb2.SubscribeExpired)
#: Broker text kept in an error message at most (characters).
DETAIL_CHARS = 200


def events_target(push_url: str, region: str) -> str:
    """``host:port`` to connect to: ``push_url`` (``host``, ``host:port``, a ``scheme://``
    is dropped) or the region's official events host on port 443."""
    url = push_url.strip()
    if not url:
        return f"{EVENTS_HOSTS[region]}:{EVENTS_PORT}"
    url = url.split("://", 1)[-1].rstrip("/")
    if url.startswith("["):  # [v6] or [v6]:port
        return url if "]:" in url else f"{url}:{EVENTS_PORT}"
    if url.count(":") > 1:  # a bare IPv6 address
        return f"[{url}]:{EVENTS_PORT}"
    return url if ":" in url else f"{url}:{EVENTS_PORT}"


def target_host(target: str) -> str:
    """The host part of ``host:port`` (brackets of an IPv6 address kept off)."""
    return target.rpartition(":")[0].strip("[]")


# -- signing ------------------------------------------------------------------------------


def event_metadata(request: bytes, *, app_key: str, app_secret: str, algorithm: str,
                   version: str, nonce: str, timestamp: str) -> list[tuple[str, str]]:
    """The gRPC metadata of one subscription, in the official client's order.

    ``request`` is the serialized ``SubscribeRequest`` exactly as sent.
    """
    sha1 = algorithm == "HMAC-SHA1"
    params = {
        "x-app-key": app_key,
        "x-signature-algorithm": algorithm,
        "x-signature-version": version,
        "x-signature-nonce": nonce,
        "x-timestamp": timestamp,
    }
    # signature_composer._get_body_string: lower-case hex, no upper() as for REST bodies.
    digest = (hashlib.md5 if sha1 else hashlib.sha256)(request).hexdigest()
    # default_signature_composer._build_sign_string with no uri joins pairs with "=".
    text = "=".join(f"{key}={value}" for key, value in sorted(params.items()))
    text += "&" + digest
    mac = hmac.new((app_secret + "&").encode(), quote(text, safe="").encode(),
                   hashlib.sha1 if sha1 else hashlib.sha256)
    signature = base64.b64encode(mac.digest()).decode("ascii")
    return [("x-app-key", app_key), ("x-signature-algorithm", algorithm),
            ("x-signature-version", version), ("x-signature-nonce", nonce),
            ("x-timestamp", timestamp), ("x-signature", signature)]


# -- parsing ------------------------------------------------------------------------------


def parse_event(payload: str, *, status_table: Mapping[str, OrderStatus],
                default_account: str = "") -> PushedOrder:
    """One order event's JSON (either shape) as a :class:`PushedOrder`.

    ``status_table`` is the adapter's (the same as its polling uses); a status it does not
    know leaves ``status`` None with ``broker_status`` set. ``default_account`` names the
    account when the event does not (only one account was subscribed).

    ``event_time`` is the event's ``filled_time`` (what a poll reads as
    ``last_filled_time``, so push and poll agree on the order's update time); the
    envelope's own ``timestamp`` and ``id`` go to ``extra``.

    :raises ValueError, TypeError, KeyError: when it is not a readable order event.
    """
    data = json.loads(payload, parse_float=Decimal)
    if not isinstance(data, dict):
        raise TypeError(f"event is {type(data).__name__}, expected an object")
    envelope: dict[str, Any] = {}
    order: dict[str, Any] = data
    inner = data.get("payload")
    if isinstance(inner, str) and inner.lstrip().startswith("{"):
        inner = json.loads(inner, parse_float=Decimal)
    if isinstance(inner, dict):
        envelope, order = data, inner
    order_id = field_text(order.get("order_id"))
    client_id = field_text(order.get("client_order_id"))
    if not order_id and not client_id:
        raise KeyError("order_id")
    account = field_text(order.get("account_id")) or default_account
    if not account:
        raise KeyError("account_id")
    broker_status = field_text(order.get("order_status"))
    filled = to_decimal(order.get("filled_qty"))
    average = to_decimal(order.get("filled_price"))
    extra = {key: field_text(order.get(key)) for key in (
        "instrument_id", "category", "order_type", "request_id", "biz_type")
        if order.get(key) not in (None, "")}
    for key, name in (("id", "event_id"), ("timestamp", "event_timestamp"),
                      ("event_type", "event_type")):
        if envelope.get(key) not in (None, ""):
            extra[name] = field_text(envelope[key])
    return PushedOrder(
        account_id=account,
        order_id=order_id,
        client_order_id=client_id,
        status=status_table.get(broker_status) if broker_status else None,
        broker_status=broker_status,
        filled_qty=filled,
        # "0E-10" before any fill: no average price yet (as the adapter's polling reads it).
        avg_fill_price=average if average and filled else None,
        qty=to_decimal(order.get("qty")),
        price=to_decimal(order.get("limit_price")),
        symbol=field_text(order.get("symbol")),
        side=field_text(order.get("side")).upper(),
        event_time=parse_time(order.get("filled_time")),
        kind=field_text(order.get("scene_type")),
        extra=extra,
    )


# -- the stream ---------------------------------------------------------------------------


def _now_millis() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


@dataclass(frozen=True)
class EventsSettings:
    """What one subscription needs, built by the adapter from its config."""

    connection: str
    #: ``host:port`` of the events service.
    target: str
    tls: bool
    app_key: SecretStr
    app_secret: SecretStr
    accounts: tuple[str, ...]
    algorithm: str
    signature_version: str
    #: The adapter's status table (the one its polling uses).
    status_table: Mapping[str, OrderStatus]
    #: ``x-timestamp`` and ``x-signature-nonce`` makers (the adapter's; tests pin them).
    timestamp: Callable[[], str]
    nonce: Callable[[], str]
    #: Epoch milliseconds for ``SubscribeRequest.timestamp``.
    millis: Callable[[], int] = field(default=lambda: _now_millis())
    subscribe_type: int = SUBSCRIBE_ORDERS


class WebullEventStream:
    """One subscription to Webull's trade events (a :class:`poller.pushfeed.PushStream`)."""

    #: Seconds before the first reconnect (the SDK's fixed delay; read by the runner).
    reconnect_delay: float = RECONNECT_DELAY

    @staticmethod
    def retryable(error: BrokerError) -> bool:
        """Whether the SDK would reconnect after ``error`` (read by the runner): a gRPC code
        in :data:`RETRYABLE_STATUS`, or one of poller's own codes (not a gRPC one)."""
        return error.code in RETRYABLE_STATUS or error.code not in GRPC_STATUS

    def __init__(self, settings: EventsSettings) -> None:
        self.settings = settings
        self._channel: Any = None
        self._call: Any = None
        self._closed = False
        #: Answers seen on the current connection, by kind (tests and status read them).
        self.seen: Counter[str] = Counter()

    def _scrub(self, text: str) -> str:
        """Broker text fit for an error message: printable, short, no credential in it."""
        text = printable(text)[:DETAIL_CHARS]
        for secret in (self.settings.app_secret, self.settings.app_key):
            value = secret.get_secret_value()
            if value:
                text = text.replace(value, "***")
        return text

    def _open_channel(self) -> Any:
        target = self.settings.target
        options = list(CHANNEL_OPTIONS)
        if self.settings.tls:
            return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(),
                                           options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def _request(self) -> tuple[Any, list[tuple[str, str]]]:
        cfg = self.settings
        request = events_pb2.SubscribeRequest(
            subscribeType=cfg.subscribe_type, timestamp=cfg.millis(),
            accounts=list(cfg.accounts))
        metadata = event_metadata(
            request.SerializeToString(), app_key=cfg.app_key.get_secret_value(),
            app_secret=cfg.app_secret.get_secret_value(), algorithm=cfg.algorithm,
            version=cfg.signature_version, nonce=cfg.nonce(), timestamp=cfg.timestamp())
        return request, metadata

    async def updates(self) -> AsyncIterator[PushedOrder]:
        """Connect, subscribe and yield ``CONNECTED``, then order updates until it ends.

        :raises BrokerAuthError: the service refused the app key or the signature.
        :raises BrokerUnavailable: it cannot be reached, dropped the stream, or ended the
            subscription (too many connections, expired); ``code`` names the cause.
        """
        if self._closed:
            return
        channel = self._channel = self._open_channel()
        self.seen = Counter()
        try:
            stub = events_pb2_grpc.EventServiceStub(channel)
            request, metadata = self._request()
            call = self._call = stub.Subscribe(request, metadata=metadata)
            async for response in call:
                update = self._read(response)
                if update is not None:
                    yield update
        except grpc.aio.AioRpcError as err:
            if self._closed:
                return
            raise self._translate(err) from None
        except asyncio.CancelledError:
            # aclose() cancels the call: the stream ends; a cancelled task stays cancelled.
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                return
            raise
        finally:
            self._call = None
            self._channel = None
            await channel.close()

    async def aclose(self) -> None:
        """End the subscription; a running :meth:`updates` returns."""
        self._closed = True
        call, channel = self._call, self._channel
        if call is not None:
            call.cancel()
        if channel is not None:
            await channel.close()

    def _translate(self, err: Any) -> BrokerError:
        code = err.code()
        name = getattr(code, "name", str(code))
        details = self._scrub(str(err.details() or ""))
        where = f"trade events: gRPC {name}" + (f": {details}" if details else "")
        connection = self.settings.connection
        if name in AUTH_STATUS:
            return BrokerAuthError(f"{where} (credentials or signature refused)",
                                   connection=connection, code=name)
        return BrokerUnavailable(where, connection=connection, code=name)

    def _read(self, response: Any) -> PushedOrder | None:
        """One answer: an order update, :data:`~poller.pushfeed.CONNECTED` after the
        subscription succeeded, None for pings, other kinds and skipped events."""
        kind: int = response.eventType
        connection = self.settings.connection
        if kind == SUBSCRIBE_SUCCESS:
            self.seen["subscribed"] += 1
            return CONNECTED  # the runner learns the stream is up before any event
        if kind == PING:
            self.seen["ping"] += 1
            return None
        if kind == AUTH_ERROR:
            raise BrokerAuthError(
                f"trade events: AuthError: {self._scrub(response.payload)}",
                connection=connection, code="AuthError")
        if kind == CONN_EXCEEDED:
            raise BrokerUnavailable(
                "trade events: NumOfConnExceed: too many event connections for this app key",
                connection=connection, code="NumOfConnExceed")
        if kind == SUBSCRIBE_EXPIRED:
            raise BrokerUnavailable("trade events: SubscribeExpired: subscription ended",
                                    connection=connection, code="SubscribeExpired")
        if kind != EVENT_TYPE_ORDER:
            self.seen["other"] += 1
            logger.debug("%s: trade events: ignored eventType %s", connection, kind)
            return None
        accounts = self.settings.accounts
        try:
            update = parse_event(response.payload, status_table=self.settings.status_table,
                                 default_account=accounts[0] if len(accounts) == 1 else "")
        except (ValueError, TypeError, KeyError, ArithmeticError) as err:
            # One unreadable event is skipped (the reconciliation poll catches what it
            # said); the stream itself is fine.
            self.seen["unreadable"] += 1
            logger.warning("%s: trade events: skipped an unreadable order event "
                           "(requestId %s): %s: %s", connection,
                           self._scrub(response.requestId), type(err).__name__,
                           self._scrub(str(err)))
            return None
        self.seen["order"] += 1
        if update.broker_status and update.status is None:
            logger.warning("%s: trade events: undocumented order_status %s", connection,
                           self._scrub(update.broker_status))
        return update


__all__ = ["CHANNEL_OPTIONS", "EVENTS_HOSTS", "EVENTS_PORT", "GRPC_STATUS", "KEEPALIVE_TIME_MS",
           "KEEPALIVE_TIMEOUT_MS", "MAX_RETRIES", "RECONNECT_DELAY", "RETRYABLE_STATUS",
           "EventsSettings", "WebullEventStream", "event_metadata", "events_target", "parse_event",
           "target_host"]
