"""LongPort (Longbridge) OpenAPI trade endpoints (brokers.md §2, seed 002).

One ``GET /v1/trade/order/today`` per cycle lists every order of the token's account; the
order detail (``GET /v1/trade/order?order_id=``) probes orders that left the list and, through
:meth:`LongPortAdapter.refine`, recovers the executions that happened between two polls from
its ``history[]`` audit trail. A US data-centre account (credentials ``us_…``) is routed
with ``x-dc-region: us`` and reads its details at ``GET /v1/us/orders/{id}``, as the
official SDK does. Requests are signed with the legacy API-key HMAC scheme
(§2.2) or carry an OAuth 2.0 bearer token. Every answer is the envelope
``{code, message|msg, data}``; numbers are strings, times unix-second strings, ids strings.

Over 400 lines: one broker's whole adapter (signing, config, its error table, order and
history parsing, the expiry rules its statuses need), one broker per file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, model_validator

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
    Fill,
    LimitSpec,
    ListResult,
    ListScope,
    OrderSnapshot,
    OrderStatus,
    RateBudget,
    RequestKind,
    Success,
    decimal_text,
    hookimpl,
    is_loopback,
    send,
    to_decimal,
)

if TYPE_CHECKING:
    from .longportpush import LongPortTradePush

logger = logging.getLogger(__name__)

SIGNED_HEADERS = "authorization;x-api-key;x-timestamp"
TODAY_PATH = "/v1/trade/order/today"
ORDER_PATH = "/v1/trade/order"
US_ORDER_PATH = "/v1/us/orders/"
#: The one-time password of a trade push connection (official SDK ``HttpClient::get_otp``,
#: ``rust/crates/httpclient/src/client.rs``): ``{otp, limit, online}``.
SOCKET_TOKEN_PATH = "/v1/socket/token"
#: The header that picks the data centre serving a request (official SDK, longbridge 5.x:
#: ``rust/crates/geo/src/lib.rs`` ``DC_REGION_HEADER``; absent means ``ap``). Not signed.
DC_REGION_HEADER = "x-dc-region"

#: Every documented LongPort order status (brokers.md 2.6) → canonical status. Three need
#: context and are refined in :func:`parse_order`: ``ReplacedStatus`` (working, partly filled
#: or not), ``ExpiredStatus`` (provisional unless a Day order or past its expire_date) and
#: ``PartialWithdrawal`` (cancelled with fills; ``filled_qty`` carries them).
STATUS_TABLE: dict[str, OrderStatus] = {
    "NotReported": OrderStatus.PENDING,  # queued, e.g. a GTC order outside the session
    "ReplacedNotReported": OrderStatus.PENDING,
    "ProtectedNotReported": OrderStatus.PENDING,
    "VarietiesNotReported": OrderStatus.PENDING,  # conditional order awaiting its trigger
    # A time-conditional order being monitored until its delayed_until time: the official
    # SDK (longbridge 5.3 openapi.pyi, OrderStatus.DelayedNotReported, "Monitoring
    # (Time-Conditional Order)") lists it; the REST docs of brokers.md did not.
    "DelayedNotReported": OrderStatus.PENDING,
    "WaitToNew": OrderStatus.PENDING,
    "NewStatus": OrderStatus.SUBMITTED,
    "WaitToReplace": OrderStatus.PENDING_REPLACE,
    "PendingReplaceStatus": OrderStatus.PENDING_REPLACE,
    "ReplacedStatus": OrderStatus.SUBMITTED,  # the order lives on; PARTIAL_FILLED with fills
    "PartialFilledStatus": OrderStatus.PARTIAL_FILLED,
    "FilledStatus": OrderStatus.FILLED,
    "WaitToCancel": OrderStatus.PENDING_CANCEL,
    "PendingCancelStatus": OrderStatus.PENDING_CANCEL,
    "RejectedStatus": OrderStatus.FAILED,
    "CanceledStatus": OrderStatus.CANCELLED,
    "ExpiredStatus": OrderStatus.EXPIRED,
    "PartialWithdrawal": OrderStatus.CANCELLED,  # partly filled, remainder cancelled
}

#: ``history[]`` statuses that record an execution (quantity and price of the deal).
EXECUTION_STATUSES = frozenset({"PartialFilledStatus", "FilledStatus"})

_ORDER_TYPES = {
    "LO": "LIMIT", "ELO": "ENHANCED_LIMIT", "MO": "MARKET", "AO": "AT_AUCTION",
    "ALO": "AT_AUCTION_LIMIT", "ODD": "ODD_LOT", "LIT": "LIMIT_IF_TOUCHED",
    "MIT": "MARKET_IF_TOUCHED", "TSLPAMT": "TRAILING_STOP_LIMIT_AMOUNT",
    "TSLPPCT": "TRAILING_STOP_LIMIT_PERCENT", "TSMAMT": "TRAILING_STOP_MARKET_AMOUNT",
    "TSMPCT": "TRAILING_STOP_MARKET_PERCENT", "SLO": "SPECIAL_LIMIT",
}

#: Error table (brokers.md 2.3). A code is its HTTP status times 1000 plus a number; a
#: specific HTTP status (401/403, 429) decides first, else the code decides.
#: Only an envelope can say "no such order" (a bare 404 page means a wrong base_url): a
#: 404xxx code, 602023, or a refusal whose message says so. 602023 ("internal server
#: error") is what users saw for unknown orders / a token bound to the other (paper or live)
#: account (longbridge/developers#1256); repeated "not found" makes the tracker mark an
#: order stale, never filled or cancelled, so reading it as "not found" is safe.
#: No Retry-After is documented. The trade window is 30 s, so pause past it with a margin;
#: users reported 429002 persisting (longbridge/developers#1093): the tracker keeps one
#: operator event per episode while the pause repeats.
ERRORS = ErrorTable(
    exact={
        **dict.fromkeys(("403201", "403202", "403203", "403205", "401003"), BrokerAuthError),
        "429001": BrokerRateLimited,
        "429002": BrokerRateLimited,
        "500000": BrokerUnavailable,
        "602023": BrokerNotFound,
    },
    broad={
        r"^404\d{3}$": BrokerNotFound,
        r"(?i)not\s+(?:be\s+)?(?:found|exist)|does\s*n[o']t\s+exist|no\s+such": BrokerNotFound,
    },
    penalty=35.0,
)


# An ``ExpiredStatus`` without a readable expire_date is confirmed once it has lasted this
# long: the transient "Expired between sessions" of GTC orders (TraderAlice/OpenAlice#1125)
# clears at the next session, and a long weekend is at most four days.
_EXPIRY_GRACE = timedelta(days=4)

# When does a market's trading day end? Fixed offsets, each the latest the market's clock can
# be (US: EST; during EDT the day ends an hour earlier, so an expiry is confirmed at most an
# hour late, never early). Unknown markets use UTC-12, where every day ends last.
_MARKET_OFFSETS = {"US": -5, "HK": 8, "SH": 8, "SZ": 8, "SG": 8}
_LAST_OFFSET = -12

#: Order details remembered (see LongPortAdapter._details); a day's orders fit easily.
_DETAIL_CACHE = 1000

_KNOWN_HOSTS = frozenset({
    "openapi.longportapp.com", "openapi.longport.cn", "openapi.longbridge.com",
    "openapi.longbridge.cn", "openapi.longbridgeapp.com",
})


def sha1_hex(data: bytes) -> str:
    """Lower-case hex SHA-1, as the signature scheme uses it."""
    return hashlib.sha1(data).hexdigest()


def sign(
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    app_key: str,
    app_secret: str,
    token: str,
    timestamp: str,
) -> dict[str, str]:
    """The headers of a request signed with LongPort's legacy API-key scheme (brokers.md 2.2).

    :param path: the URL path exactly as sent (``/v1/trade/order``).
    :param query: the raw query string exactly as sent, without ``?`` (``""`` if none).
    :param body: the exact body bytes (``b""`` for GET; then no body hash is appended).
    :param timestamp: the ``X-Timestamp`` value, signed verbatim.
    :returns: ``X-Api-Key``, ``Authorization``, ``X-Timestamp`` and ``X-Api-Signature``.
    """
    signed_values = (f"authorization:{token}\nx-api-key:{app_key}\n"
                     f"x-timestamp:{timestamp}\n")
    canonical = f"{method.upper()}|{path}|{query}|{signed_values}|{SIGNED_HEADERS}|"
    if body:
        canonical += sha1_hex(body)
    string_to_sign = "HMAC-SHA256|" + sha1_hex(canonical.encode())
    signature = hmac.new(app_secret.encode(), string_to_sign.encode(),
                         hashlib.sha256).hexdigest()
    return {
        "X-Api-Key": app_key,
        "Authorization": token,
        "X-Timestamp": timestamp,
        "X-Api-Signature": (f"HMAC-SHA256 SignedHeaders={SIGNED_HEADERS}, "
                            f"Signature={signature}"),
    }


class LongPortConfig(BrokerConfig):
    """``[brokers.NAME]`` with ``kind = "longport"``."""

    kind: Literal["longport"] = "longport"
    base_url: str = Field(
        default="https://openapi.longportapp.com",
        description="REST host: https://openapi.longportapp.com (LongPort docs) or "
                    "https://openapi.longbridge.com, the official SDK's default since the "
                    "Longbridge rename (CN: https://openapi.longport.cn / "
                    "https://openapi.longbridge.cn); both answer the same API.")
    app_key: SecretStr | None = Field(default=None, description="App Key (apikey mode).")
    app_secret: SecretStr | None = Field(default=None,
                                         description="App Secret (apikey mode).")
    access_token: SecretStr = Field(description="Access token (or the OAuth access token).")
    auth: Literal["apikey", "oauth"] = Field(
        default="apikey",
        description="apikey: legacy HMAC signature; oauth: Authorization: Bearer <token>.",
    )
    account_id: str = Field(
        default="default", min_length=1,
        description="Name of the account in events (LongPort has one account per token).",
    )
    dc_region: Literal["auto", "ap", "us"] = Field(
        default="auto",
        description="Data centre of the account, sent as x-dc-region: auto (as the official "
                    "SDK: us when a credential starts with us_, else ap), ap or us. US "
                    "accounts read order details at /v1/us/orders/{id}.",
    )

    @property
    def region(self) -> Literal["ap", "us"]:
        """The data centre requests are routed to (``auto`` resolved from the credentials)."""
        if self.dc_region != "auto":
            return self.dc_region
        # The SDK's DcRegion::from_credentials: US if any credential carries the prefix.
        secrets = (self.app_key, self.app_secret, self.access_token)
        for secret in secrets:
            text = secret.get_secret_value() if secret is not None else ""
            if text.removeprefix("Bearer ").startswith("us_"):
                return "us"
        return "ap"

    @model_validator(mode="after")
    def _credentials(self) -> LongPortConfig:
        if not self.access_token.get_secret_value().strip():
            raise ValueError("access_token must not be empty")
        if self.auth == "apikey":
            missing = [name for name, value in (("app_key", self.app_key),
                                                ("app_secret", self.app_secret))
                       if value is None or not value.get_secret_value()]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} required with auth = \"apikey\" "
                    "(or set auth = \"oauth\" to use an OAuth access token)")
        return self


#: Longest wait for the trade budget worth spending on a detail that only splits fills.
DETAIL_WAIT = 2.0


class LongPortAdapter(BrokerAdapter[LongPortConfig]):
    """Polls one LongPort account: today's orders, plus order details for fills and probes.

    :param clock: wall-clock seconds, for ``X-Timestamp`` and for confirming expiries
        (injectable for tests).
    """

    kind: ClassVar[str] = "longport"
    Config: ClassVar[type[BrokerConfig]] = LongPortConfig
    # All trade APIs share one budget: 30 calls per 30 s and >= 20 ms apart (brokers.md 2.4).
    # The official SDK does NOT throttle TradeContext calls (it only self-throttles quotes),
    # so staying inside this limit is entirely our job.
    limits: ClassVar[dict[str, LimitSpec]] = {"trade": LimitSpec(30, 30.0, spacing=0.02)}
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = dict.fromkeys(
        (RequestKind.LIST, RequestKind.DETAIL, RequestKind.REPLACE, RequestKind.CANCEL),
        ("trade",))
    errors: ClassVar[ErrorTable] = ERRORS
    supports_fetch: ClassVar[bool] = True
    #: Order-changed notifications over the trade WebSocket (:mod:`poller.brokers.longportpush`,
    #: the ``push`` extra).
    supports_push: ClassVar[bool] = True

    def __init__(
        self, name: str, config: LongPortConfig, client: httpx.AsyncClient, budget: RateBudget,
        *, clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, config, client, budget)
        self._clock = clock
        self._serial = asyncio.Lock()
        self._last_done = float("-inf")
        # The last order detail read per (account, order): its executions and its (right)
        # time_in_force are merged into later list answers, so that a list answer and a
        # detail of an unchanged order are equal snapshots. Otherwise every list answer
        # would "change" an order the detail was read for, and the daemon would read the
        # detail again, spending the 30-per-30-s budget for nothing.
        self._details: dict[tuple[str, str], OrderSnapshot] = {}

    @classmethod
    def check(cls, config: LongPortConfig) -> list[tuple[str, str]]:
        """Catch a push/quote host or a token sent in clear text to a remote host."""
        problems: list[tuple[str, str]] = []
        url = httpx.URL(config.base_url)
        host = url.host
        if url.scheme == "http" and not is_loopback(host):
            problems.append(("base_url", "must be https:// (the access token would travel "
                                         "unencrypted); plain http is only for loopback"))
        if (host.endswith(("longportapp.com", "longport.cn", "longbridge.com", "longbridge.cn",
                           "longbridgeapp.com"))
                and host not in _KNOWN_HOSTS):
            problems.append(("base_url", f"{host} is not a LongPort REST host (the trade push "
                                         "and quote hosts do not serve /v1/trade/order); use "
                                         "https://openapi.longportapp.com or "
                                         "https://openapi.longport.cn"))
        return problems

    @classmethod
    def discovery_note(cls, config: LongPortConfig) -> str | None:
        """Which data centre serves the account, and so which detail path is read."""
        if config.region == "us":
            return ("US data centre (x-dc-region: us): today's list, details at "
                    "GET /v1/us/orders/{id}")
        return None

    def now(self) -> datetime:
        """The adapter's clock as a UTC datetime."""
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- signing and sending ------------------------------------------------------------

    def authorize(self, request: httpx.Request) -> None:
        """Add the auth headers to ``request``, signing the exact path, query and body sent."""
        cfg = self.config
        token = cfg.access_token.get_secret_value()
        # Milliseconds, the documented format ("1539095200.123"): the server refuses a
        # repeated timestamp+signature (403202), and two identical list calls can fall in
        # the same second.
        timestamp = f"{self._clock():.3f}"
        request.headers["X-Timestamp"] = timestamp
        if cfg.auth == "oauth":
            request.headers["Authorization"] = (
                token if token.startswith("Bearer ") else f"Bearer {token}")
            if cfg.app_key is not None and cfg.app_key.get_secret_value():
                request.headers["X-Api-Key"] = cfg.app_key.get_secret_value()
            return
        assert cfg.app_key is not None and cfg.app_secret is not None  # the validator saw to it
        raw = request.url.raw_path.decode("ascii")
        path, _, query = raw.partition("?")
        request.headers.update(sign(
            request.method, path, query, request.content,
            app_key=cfg.app_key.get_secret_value(), app_secret=cfg.app_secret.get_secret_value(),
            token=token, timestamp=timestamp,
        ))

    async def request(self, kind: RequestKind, request: httpx.Request, *,
                      companion: bool = False) -> Answer:
        """Send one trade call: one at a time, through the budget, signed just before it
        leaves (a timestamp taken before a budget wait could be stale)."""
        groups = self.groups_of(kind)
        spacing = max((self.limits[g].spacing for g in groups), default=0.0)
        async with self._serial:
            # LongPort measures the 20 ms spacing on arrival. Spacing the *starts* cannot
            # guarantee it: a call on a new connection took 20 ms to arrive in tests, the
            # next one on the open connection 1 ms. Starting 20 ms after the previous call
            # was *answered* does, since that call had arrived by then.
            gap = self._last_done + spacing - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            admitted = await self.admit(groups, companion=companion)
            self.authorize(request)
            try:
                answer = await send(self.client, request, connection=self.name,
                                    deadline=self.config.timeout,
                                    max_bytes=self.max_answer_bytes)
                self.budget.answered(groups, admitted)  # an answer: the broker has had it
                return answer
            finally:
                self._last_done = time.monotonic()

    def _build(self, method: str, path: str, *, params: dict[str, str] | None = None,
               body: dict[str, Any] | None = None) -> httpx.Request:
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        return self.client.build_request(
            method, path, params=params, content=content or None,
            headers={"Content-Type": "application/json; charset=utf-8",
                     DC_REGION_HEADER: self.config.region},
        )

    # -- discovery and per-order --------------------------------------------------------

    def scopes(self) -> list[ListScope]:
        # Today's list also holds finished orders, so the scope is not open_only.
        return [ListScope(self.config.account_id)]

    async def list_orders(self, scope: ListScope) -> ListResult:
        answer = await self.request(RequestKind.LIST, self._build("GET", TODAY_PATH))
        data = self.unwrap(RequestKind.LIST, answer)
        orders_raw = data.get("orders") if isinstance(data, dict) else None
        if not isinstance(orders_raw, list):
            raise BrokerMalformed(
                f"{TODAY_PATH} answered data of type {type(data).__name__} without an "
                "orders list", connection=self.name)
        now = self.now()
        orders, problems = [], []
        for index, item in enumerate(orders_raw):
            try:
                snapshot = parse_order(item, broker=self.name, account_id=scope.account_id,
                                       now=now, trust_time_in_force=False)
            except (KeyError, TypeError, ValueError, ArithmeticError) as err:
                problems.append(f"order #{index}: {type(err).__name__}: {err}")
                continue
            detail = self._details.get((snapshot.account_id, snapshot.order_id))
            orders.append(snapshot if detail is None
                          else merge_detail(snapshot, detail, now=now))
        return ListResult(scope, orders, problems)

    def _remember(self, detail: OrderSnapshot) -> None:
        """Keep the latest detail of an order (least recently read dropped past the cap)."""
        key = (detail.account_id, detail.order_id)
        self._details.pop(key, None)
        self._details[key] = detail
        while len(self._details) > _DETAIL_CACHE:
            del self._details[next(iter(self._details))]

    async def fetch_order(self, account_id: str, order_id: str) -> OrderSnapshot | None:
        """The order detail with its executions; ``None`` when LongPort does not know it."""
        us = self.config.region == "us"
        if us:
            # The official SDK refuses the plain detail for a US token (DcRegionRestricted)
            # and reads TradeContext.us_order_detail: GET /v1/us/orders/{order_id}.
            request = self._build("GET", US_ORDER_PATH + quote(order_id, safe=""))
        else:
            request = self._build("GET", ORDER_PATH, params={"order_id": order_id})
        try:
            data = self.unwrap(RequestKind.DETAIL,
                               await self.request(RequestKind.DETAIL, request))
        except BrokerNotFound:
            return None
        if us and isinstance(data, dict):
            if data.get("order") is None:  # "None only on error" (USOrderDetailResponse)
                return None
            data = data["order"]
        if not isinstance(data, dict) or not data:
            raise BrokerMalformed(f"order detail of {order_id} is not an object",
                                  connection=self.name)
        try:
            reader = parse_us_detail if us else parse_detail
            snapshot = reader(data, broker=self.name, account_id=account_id, now=self.now())
        except (KeyError, TypeError, ValueError, ArithmeticError) as err:
            raise BrokerMalformed(f"order detail of {order_id} could not be read: "
                                  f"{type(err).__name__}: {err}", connection=self.name) from err
        if snapshot.order_id != order_id:
            raise BrokerMalformed(f"asked for order {order_id}, the detail is of order "
                                  f"{snapshot.order_id}", connection=self.name)
        self._remember(snapshot)
        return snapshot

    async def refine(
        self, previous: OrderSnapshot | None, current: OrderSnapshot
    ) -> OrderSnapshot:
        """Read the detail when executions are unaccounted for, or an Expired needs it.

        The list has no deals, so several executions between two polls would collapse into
        one; the detail's ``history[]`` lists each. So the detail is read whenever the
        executed quantity grew past the executions already known (which includes an order
        that just finished with new fills). The detail also has the right ``time_in_force``
        (lists swap Day/GTC, longbridge/openapi#247), which decides whether an
        ``ExpiredStatus`` is final. A snapshot that is itself a detail needs neither.
        """
        known = sum((fill.qty for fill in current.fills), Decimal(0))
        need_fills = current.filled_qty > known
        need_time_in_force = (current.status is OrderStatus.EXPIRED
                              and (current.account_id, current.order_id) not in self._details)
        if not (need_fills or need_time_in_force):
            return current
        if not need_time_in_force and \
                self.budget.group("trade").wait_time(self.budget.now()) > DETAIL_WAIT:
            # The trade budget is busy: the list answer's growth is announced as one fill now
            # rather than delaying the lists (a later detail adds no duplicate).
            return current
        detail = await self.fetch_order(current.account_id, current.order_id)
        if detail is None:
            return current
        return merge_detail(current, detail, now=self.now())

    # -- push -------------------------------------------------------------------------

    @classmethod
    def push_problem(cls, config: LongPortConfig) -> str | None:
        """Also: the push extra is missing, or TLS is off for a host that is not loopback."""
        problem = super().push_problem(config)
        if problem is not None:
            return problem
        try:
            # The stream module needs websockets and the protobuf runtime.
            from . import longportpush
        except ImportError as err:
            return (f"the push extra is missing ({err.name or 'websockets'} cannot be "
                    "imported): pip install '.[push]'")
        url = longportpush.trade_ws_url(config.push_url, config.base_url, tls=config.push_tls)
        host = httpx.URL(url).host
        if not config.push_tls and not is_loopback(host):
            return f"push_tls = false is allowed for a loopback push_url only, not {host}"
        return None

    def open_push(self) -> LongPortTradePush:
        """A new subscription to the account's order-changed notifications."""
        from . import longportpush

        cfg = self.config
        secrets = [s.get_secret_value() for s in (cfg.app_key, cfg.app_secret, cfg.access_token)
                   if s is not None and s.get_secret_value()]
        return longportpush.LongPortTradePush(longportpush.TradePushSettings(
            connection=self.name,
            url=longportpush.trade_ws_url(cfg.push_url, cfg.base_url, tls=cfg.push_tls),
            account_id=cfg.account_id, region=cfg.region, token=self.socket_token,
            now=self.now, secrets=tuple(secrets)))

    async def socket_token(self) -> str:
        """A one-time password for one trade push connection (``GET /v1/socket/token``,
        signed and through the trade budget like every REST call).

        :raises BrokerAuthError: the credentials were refused.
        :raises BrokerUnavailable: the account has as many push connections as it may.
        :raises BrokerMalformed: the answer has no token.
        """
        answer = await self.request(RequestKind.LIST, self._build("GET", SOCKET_TOKEN_PATH))
        data = self.unwrap(RequestKind.LIST, answer)
        otp = data.get("otp") if isinstance(data, dict) else None
        if not isinstance(otp, str) or not otp:
            raise BrokerMalformed(f"{SOCKET_TOKEN_PATH} answered no otp", connection=self.name)
        limit, online = (to_decimal(data.get(key)) for key in ("limit", "online"))
        # The SDK refuses to connect past the account's limit (ConnectionLimitExceeded).
        if limit is not None and online is not None and online >= limit:
            raise BrokerUnavailable(
                f"{SOCKET_TOKEN_PATH}: {online} of {limit} push connections already open",
                connection=self.name, code="connection_limit")
        return otp

    # -- order actions ------------------------------------------------------------------

    supports_replace: ClassVar[bool] = True
    supports_cancel: ClassVar[bool] = True

    async def cancel_order(self, known: OrderSnapshot) -> None:
        """Withdraw an order (``order_id`` as a query parameter, as the SDK sends it).

        :raises BrokerRejected: when LongPort refuses (e.g. the order is finished).
        """
        request = self._build("DELETE", ORDER_PATH, params={"order_id": known.order_id})
        self.unwrap(RequestKind.CANCEL, await self.request(RequestKind.CANCEL, request))

    async def replace_order(self, known: OrderSnapshot, *, qty: Decimal | None,
                            price: Decimal | None) -> None:
        """``PUT /v1/trade/order``: the total quantity (required; the current one when only
        the price changes) and, optionally, the price.

        :raises BrokerRejected: when LongPort refuses the change.
        """
        quantity = qty if qty is not None else known.qty
        body: dict[str, Any] = {"order_id": known.order_id, "quantity": decimal_text(quantity)}
        if price is not None:
            body["price"] = decimal_text(price)
        request = self._build("PUT", ORDER_PATH, body=body)
        self.unwrap(RequestKind.REPLACE, await self.request(RequestKind.REPLACE, request))

    # -- errors: only the envelope reading is LongPort's (the table is ERRORS) ------------

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        """``data`` of a 2xx ``{code: 0, message|msg, data}`` envelope; else its code and
        message (a bare error page has neither).

        :raises BrokerMalformed: a 2xx answer that is no envelope or has no integer code.
        """
        body = answer.body
        code = _code(body)
        if 200 <= answer.status < 300:
            if not isinstance(body, dict):
                shape = "an empty answer" if body is None else type(body).__name__
                raise BrokerMalformed(f"expected a {{code, message, data}} envelope, got "
                                      f"{shape}", connection=self.name)
            if code is None:
                raise BrokerMalformed("answer has no integer code", connection=self.name)
            if code == 0:
                return Success(body.get("data"))
        if not isinstance(body, dict):
            return ErrorAnswer()
        return ErrorAnswer("" if code is None else str(code), _message(body))


def _code(body: Any) -> int | None:
    """The envelope's ``code`` as an int (LongPort sends a number; a numeric string is read)."""
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def _message(envelope: dict[str, Any]) -> str:
    """``message`` (or the older ``msg``) of an envelope; ``""`` when it has neither."""
    for key in ("message", "msg"):
        value = envelope.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


# -- parsing -----------------------------------------------------------------------------


def _order_id(value: Any) -> str:
    """Order ids are strings; a JSON integer is accepted exactly, a fraction never."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"order_id must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError("order_id is empty")
    return text


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{key} must be a string, got {type(value).__name__}")


def _epoch(value: Any) -> datetime | None:
    """A unix-seconds string (or number); ``""``/``"0"`` mean "not set"."""
    seconds = to_decimal(value)
    if seconds is None or seconds <= 0:
        return None
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    return datetime.fromtimestamp(whole, UTC) + timedelta(microseconds=micros)


def expiry_passed(expire_date: str, symbol: str, now: datetime) -> bool:
    """Whether the trading day ``expire_date`` (``YYYY-MM-DD``) is over on the symbol's market."""
    try:
        day = date.fromisoformat(expire_date.strip())
    except ValueError:
        return False
    market = symbol.rsplit(".", 1)[-1].upper() if "." in symbol else ""
    offset = timezone(timedelta(hours=_MARKET_OFFSETS.get(market, _LAST_OFFSET)))
    return now.astimezone(offset).date() > day


def _expiry_provisional(*, time_in_force: str, trusted: bool, expire_date: str, symbol: str,
                        updated_at: datetime | None, now: datetime) -> bool:
    """Is an ``ExpiredStatus`` still provisional (brokers.md 2.6 caveat)?

    Final for a Day order (when ``time_in_force`` comes from the detail: lists swap it), or
    once the expire_date has passed; else provisional until :data:`_EXPIRY_GRACE` passed.
    """
    if trusted and time_in_force == "Day":
        return False
    if expire_date:
        if expiry_passed(expire_date, symbol, now):
            return False
        try:
            date.fromisoformat(expire_date.strip())
            return True
        except ValueError:
            pass  # unreadable date: fall through to the grace period
    return updated_at is None or now - updated_at < _EXPIRY_GRACE


def parse_order(item: Any, *, broker: str, account_id: str, now: datetime,
                trust_time_in_force: bool = True) -> OrderSnapshot:
    """Read one LongPort Order (list item or order detail) into an :class:`OrderSnapshot`.

    :param now: the current time, to confirm an ``ExpiredStatus`` past its expire_date.
    :param trust_time_in_force: ``False`` for list answers, whose ``time_in_force`` is
        reportedly swapped (longbridge/openapi#247): an Expired order is then never taken
        as a final Day expiry from the list alone.
    :raises KeyError, TypeError, ValueError: when the item is not a readable Order.
    """
    if not isinstance(item, dict):
        raise TypeError(f"expected an object, got {type(item).__name__}")
    order_id = _order_id(item["order_id"])
    raw_status = _text(item, "status")
    if not raw_status:
        raise ValueError("status is missing")
    status = STATUS_TABLE.get(raw_status)
    qty = to_decimal(item.get("quantity"), default=Decimal(0)) or Decimal(0)
    filled = to_decimal(item.get("executed_quantity"), default=Decimal(0)) or Decimal(0)
    if qty < 0 or filled < 0:
        raise ValueError("negative quantity")
    price = to_decimal(item.get("price")) or None  # "" / "0" before a trigger: no price
    avg = (to_decimal(item.get("executed_price")) or None) if filled else None
    symbol = _text(item, "symbol")
    time_in_force = _text(item, "time_in_force")
    expire_date = _text(item, "expire_date")
    updated_at = _epoch(item.get("updated_at"))
    provisional = False
    if raw_status == "ReplacedStatus" and filled > 0:
        status = OrderStatus.PARTIAL_FILLED  # a replaced order that already has fills
    elif status is OrderStatus.EXPIRED:
        provisional = _expiry_provisional(
            time_in_force=time_in_force, trusted=trust_time_in_force, expire_date=expire_date,
            symbol=symbol, updated_at=updated_at, now=now)
    side = _text(item, "side")
    order_type = _text(item, "order_type")
    remark = _text(item, "remark")
    extra = {key: _text(item, key) for key in ("tag", "expire_date", "currency", "outside_rth",
                                               "trigger_status", "stock_name")
             if item.get(key) not in (None, "")}
    return OrderSnapshot(
        broker=broker,
        broker_kind="longport",
        account_id=account_id,
        order_id=order_id,
        status=status or OrderStatus.SUBMITTED,
        unknown_status=status is None,
        broker_status=raw_status,
        symbol=symbol,
        side={"Buy": "BUY", "Sell": "SELL"}.get(side, side.upper()),
        order_type=_ORDER_TYPES.get(order_type, order_type),
        qty=qty,
        price=price,
        filled_qty=filled,
        avg_fill_price=avg,
        client_order_id=remark,
        placed_at=_epoch(item.get("submitted_at")),
        updated_at=updated_at,
        message=_text(item, "msg"),
        time_in_force=time_in_force,
        provisional=provisional,
        extra=extra,
    )


def history_fills(history: Any, *, executed: Decimal) -> tuple[Fill, ...]:
    """The executions in an order detail's ``history[]``, oldest first.

    The docs list newest first and give each execution's own quantity ("Execution of 10");
    times have one-second resolution, so ties keep the documented (reversed) order. Each
    fill's id is ``h:<time>:<cumulative quantity>``, the same in every later detail. If the
    quantities only add up as running totals (their sum overshoots ``executed`` while the
    last equals it), they are read as running totals instead.

    :raises TypeError, ValueError: when the history is not readable.
    """
    if history is None:
        return ()
    if not isinstance(history, list):
        raise TypeError(f"history must be a list, got {type(history).__name__}")
    rows: list[tuple[int, int, Decimal, Decimal | None, str]] = []
    for index, entry in enumerate(reversed(history)):
        if not isinstance(entry, dict):
            raise TypeError(f"history entry must be an object, got {type(entry).__name__}")
        if _text(entry, "status") not in EXECUTION_STATUSES:
            continue
        qty = to_decimal(entry.get("quantity"), default=Decimal(0)) or Decimal(0)
        if qty <= 0:
            continue
        raw_time = _text(entry, "time").strip()
        moment = to_decimal(raw_time, default=Decimal(0)) or Decimal(0)
        rows.append((int(moment), index, qty, to_decimal(entry.get("price")) or None, raw_time))
    rows.sort(key=lambda row: (row[0], row[1]))
    quantities = [row[2] for row in rows]
    running = (sum(quantities, Decimal(0)) > executed and quantities[-1] == executed
               and all(a <= b for a, b in zip(quantities, quantities[1:], strict=False)))
    fills: list[Fill] = []
    cumulative = Decimal(0)
    for seconds, _, qty, price, raw_time in rows:
        own = qty - cumulative if running else qty
        if own <= 0:
            continue
        cumulative += own
        fills.append(Fill(
            fill_id=f"h:{raw_time or seconds}:{decimal_text(cumulative)}",
            qty=own,
            price=price,
            time=datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None,
        ))
    return tuple(fills)


def parse_detail(data: Any, *, broker: str, account_id: str, now: datetime) -> OrderSnapshot:
    """Read an order detail (seed 002): the order plus its executions from ``history[]``.

    :raises KeyError, TypeError, ValueError: when the detail is not readable.
    """
    snapshot = parse_order(data, broker=broker, account_id=account_id, now=now)
    return replace(snapshot, fills=history_fills(data.get("history"),
                                                 executed=snapshot.filled_qty))


def us_counter_symbol(counter_id: str) -> str:
    """``ST/US/TSLA`` → ``TSLA.US`` (the SDK's ``counter_id_to_symbol``)."""
    parts = counter_id.split("/", 2)
    return f"{parts[2]}.{parts[1]}" if len(parts) == 3 else counter_id


def parse_us_detail(data: Any, *, broker: str, account_id: str, now: datetime
                    ) -> OrderSnapshot:
    """Read a US data centre's order (``GET /v1/us/orders/{id}``, the official SDK's
    ``USOrderDetail``, longbridge/openapi ``rust/src/trade/types.rs``) like any other
    detail: ``id`` for ``order_id``, ``symbol`` (or ``counter_id``, which SDK 4.5 read),
    ``executed_qty``, ``action`` (1 buy, 2 sell), ``done_at`` for the last update and the
    audit trail in ``order_histories`` (each execution with its own ``qty``).

    The SDK keeps its ``status`` as plain text; it is read with the trade API's table
    (an unknown one is kept as the broker said it and flagged, as everywhere).
    ``time_in_force`` is a number there whose meaning the SDK does not give, so it is not
    used: an expiry is judged by ``gtd`` and the grace period.

    :raises KeyError, TypeError, ValueError: when the detail is not readable.
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    histories = data.get("order_histories")
    if histories is not None and not isinstance(histories, list):
        raise TypeError(f"order_histories must be a list, got {type(histories).__name__}")
    action = data.get("action")
    order = {
        "order_id": data.get("id"),
        "status": data.get("status"),
        # longbridge 5.3 reads ``symbol``; 4.5 converted ``counter_id`` (ST/US/AAPL).
        "symbol": _text(data, "symbol") or us_counter_symbol(_text(data, "counter_id")),
        "quantity": data.get("quantity"),
        "executed_quantity": data.get("executed_qty"),
        "executed_price": data.get("executed_price"),
        "price": data.get("price"),
        "side": {1: "Buy", 2: "Sell"}.get(action, "") if isinstance(action, int) else "",
        "order_type": data.get("order_type"),
        "submitted_at": data.get("submitted_at"),
        "updated_at": data.get("done_at") or data.get("submitted_at"),
        "msg": data.get("msg"),
        "remark": data.get("remark"),
        "currency": data.get("currency"),
        "stock_name": data.get("name"),
        "expire_date": data.get("gtd"),
        "history": [{"status": entry.get("status"), "price": entry.get("price"),
                     "quantity": entry.get("qty"), "time": entry.get("time")}
                    for entry in histories or () if isinstance(entry, dict)],
    }
    return parse_detail(order, broker=broker, account_id=account_id, now=now)


def merge_detail(current: OrderSnapshot, detail: OrderSnapshot, *, now: datetime
                 ) -> OrderSnapshot:
    """The list snapshot, with the detail's executions and its (correct) ``time_in_force``.

    The list answer stays the source of status and quantities (the diff compares list with
    list); fills beyond the list's filled quantity are left for the next poll, so the events
    never run ahead of the order they describe.
    """
    fills: list[Fill] = []
    cumulative = Decimal(0)
    for fill in detail.fills:
        cumulative += fill.qty
        if cumulative > current.filled_qty:
            break
        fills.append(fill)
    time_in_force = detail.time_in_force or current.time_in_force
    provisional = current.provisional
    expire_date = detail.extra.get("expire_date", current.extra.get("expire_date", ""))
    if current.status is OrderStatus.EXPIRED:
        # Only a detail's own time_in_force is trusted (a US detail has none we can read).
        provisional = _expiry_provisional(
            time_in_force=time_in_force, trusted=bool(detail.time_in_force),
            expire_date=expire_date, symbol=current.symbol, updated_at=current.updated_at, now=now)
    extra = dict(current.extra)
    if expire_date:
        extra["expire_date"] = expire_date
    return replace(current, fills=tuple(fills), time_in_force=time_in_force,
                   provisional=provisional, extra=extra)


@hookimpl
def register_brokers(register: Callable[[type[BrokerAdapter[Any]]], None]) -> None:
    """Register the LongPort adapter."""
    register(LongPortAdapter)


__all__ = [
    "EXECUTION_STATUSES",
    "STATUS_TABLE",
    "LongPortAdapter",
    "LongPortConfig",
    "expiry_passed",
    "history_fills",
    "merge_detail",
    "parse_detail",
    "parse_order",
    "parse_us_detail",
    "sign",
    "us_counter_symbol",
]
