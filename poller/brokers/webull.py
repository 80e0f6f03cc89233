"""Webull OpenAPI, legacy "api-doc" generation (brokers.md §3, seeds 001 and 003).

Discovery is one paged ``GET /trade/orders/list-open`` (or ``list-today``) per configured
account; an order that leaves the open list is confirmed with ``GET /trade/order/detail``.
Every request is signed with the app key and secret (brokers.md §3.2, :func:`sign`).

Webull addresses an order by the caller's ``client_order_id`` (detail, replace, cancel),
while its trade events and lists also carry the broker's ``order_id``. A snapshot's
``order_id`` is the broker's id when the answer has one, else the ``client_order_id``; the
adapter remembers which ``client_order_id`` belongs to which id it reported.

Over 400 lines: one broker's whole adapter (signing, config, region limits, its error
table, paging, id resolution, replace bodies), one broker per file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from poller import (
    Answer,
    BrokerAdapter,
    BrokerAuthError,
    BrokerConfig,
    BrokerMalformed,
    BrokerNotFound,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    ErrorAnswer,
    ErrorTable,
    LimitGroup,
    LimitSpec,
    ListResult,
    ListScope,
    OrderSnapshot,
    OrderStatus,
    ParseCache,
    RateBudget,
    RequestKind,
    Success,
    decimal_text,
    hookimpl,
    is_loopback,
    to_decimal,
)

if TYPE_CHECKING:
    from .webullpush import WebullEventStream

#: Every documented Webull order status (brokers.md 3.5) → canonical status. Webull has no
#: pending-cancel, pending-replace or expired status: a cancel or replace in flight shows the
#: order as SUBMITTED / PARTIAL_FILLED until it settles.
STATUS_TABLE: dict[str, OrderStatus] = {
    "SUBMITTED": OrderStatus.SUBMITTED,
    "PARTIAL_FILLED": OrderStatus.PARTIAL_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "FAILED": OrderStatus.FAILED,
}

#: API hosts by region (brokers.md 3.1, SDK ``endpoints.json``).
HOSTS: dict[str, str] = {
    "us": "https://api.webull.com",
    "hk": "https://api.webull.hk",
    "jp": "https://api.webull.co.jp",
}

#: Order queries (list and detail) per app key (brokers.md 3.4, legacy generation).
QUERY_LIMITS: dict[str, LimitSpec] = {
    "hk": LimitSpec(2, 2.0),
    "jp": LimitSpec(2, 2.0),
    "us": LimitSpec(10, 30.0),
}

SIGNATURE_VERSION = "1.0"

#: 401-class codes (brokers.md 3.3): the credentials or the signing are wrong.
AUTH_CODES = frozenset({
    "MISSING_APP_KEY", "MISSING_SIGNATURE", "MISSING_ALGORITHM", "MISSING_NONCE",
    "MISSING_TIMESTAMP", "MISSING_VERSION", "INVALID_TOKEN", "UNAUTHORIZED", "INCORRECT_SIGN",
    "ILLEAGAL_TIMESTAMP", "CLOCK_SKEW_EXCEEDED", "SIGNATURE_ALGORITHM_NOT_SUPPORTED",
    "VERSION_NOT_SUPPORTED",
})
#: Codes the SDK's retry policy treats as the server's own trouble.
UNAVAILABLE_CODES = frozenset({
    "SERVICE_NOT_AVAILABLE", "GATEWAY_TIMEOUT", "INTERNAL_ERROR",
    # Seed 003: a replace or cancel of this order is still being processed; later works.
    "TRADE_WEBULL_REQUEST_PROCESSING",
})
THROTTLED = "TOO_MANY_REQUESTS"
QUOTA_EXCEEDED = "REQUEST_TOTAL_COUNT_EXCEEDED"

#: Error table (brokers.md 3.3). The code decides at any HTTP status, except that a 429
#: is a rate limit whatever the code. Auth errors are documented as HTTP 401 only, so a
#: 403 is a plain refusal. Webull's not-found code for detail is not documented: HTTP 404
#: and any *_NOT_FOUND / *_NOT_EXIST code read as "no such order".
#: Penalties when no Retry-After came: TOO_MANY_REQUESTS ("current limiting") is a plain
#: sliding window with no documented penalty, so a few query windows; the quota of
#: REQUEST_TOTAL_COUNT_EXCEEDED has no documented period, so retry rarely rather than
#: spend requests against a closed quota.
ERRORS = ErrorTable(
    exact={
        **dict.fromkeys(AUTH_CODES, BrokerAuthError),
        **dict.fromkeys(UNAVAILABLE_CODES, BrokerUnavailable),
        THROTTLED: BrokerRateLimited,
        QUOTA_EXCEEDED: BrokerRateLimited,
    },
    broad={r"^[A-Z0-9_]*NOT_(?:FOUND|EXIST)[A-Z0-9_]*$": BrokerNotFound},
    http={403: BrokerRejected, 404: BrokerNotFound},
    meanings={QUOTA_EXCEEDED: "request quota exhausted",
              "TRADE_WEBULL_REQUEST_PROCESSING": "busy with an earlier change of the order"},
    penalty=10.0,
    penalties={QUOTA_EXCEEDED: 1800.0},
    retry_after=True,
)
#: Seed 003: quantities are whole numbers, at most 1,000,000.
MAX_QTY = 1_000_000
#: Order types that carry a limit price (seed 003, ``limit_price``).
LIMIT_ORDER_TYPES = frozenset({"LIMIT", "STOP_LOSS_LIMIT", "ENHANCED_LIMIT",
                               "AT_AUCTION_LIMIT"})
#: Raw orders remembered for replaces (the open orders of a busy account fit easily).
RAW_KEPT = 10_000
#: Pages read per list call at most (100 orders a page): a cursor that never ends must not
#: keep a poll busy for ever.
MAX_PAGES = 50


class WebullConfig(BrokerConfig):
    """``[brokers.NAME]`` with ``kind = "webull"``."""

    kind: Literal["webull"] = "webull"
    region: Literal["us", "hk", "jp"] = Field(
        default="hk", description="Which Webull: us, hk or jp (picks base_url and limits).")
    base_url: str = Field(
        description="API address; defaults to the region's host (api.webull.hk for hk).")
    app_key: SecretStr = Field(min_length=1, description="App Key of the OpenAPI application.")
    app_secret: SecretStr = Field(min_length=1, description="App Secret of the application.")
    account_ids: list[str] = Field(min_length=1, description="Account ids to poll.")
    signature_algorithm: Literal["HMAC-SHA1", "HMAC-SHA256"] = Field(
        default="HMAC-SHA256", description="x-signature-algorithm to sign with.")
    api_version: Literal["v1", "v3"] = Field(
        default="v1",
        description="x-version sent on every request: v1 as the legacy official SDK sends "
                    "it on these /trade paths; webull-openapi-python-sdk 3.x sends v3.")
    page_size: int = Field(default=100, ge=1, le=100, description="Orders per list page.")
    # Named ``listing`` in Python because a field called ``list`` would shadow the builtin
    # inside the class body; the TOML key stays ``list``.
    listing: Literal["both", "open", "today"] = Field(
        default="both", alias="list",
        description="both: list-open every interval and list-today every today_every "
                    "seconds in its place (the same budget; an order placed and rejected "
                    "or filled between two polls is seen within today_every); open: "
                    "list-open only (such an order is never seen); today: list-today only "
                    "(every order, every interval; the answers grow through the day).")
    today_every: float = Field(
        default=30.0, gt=0,
        description="With list = \"both\": seconds between the list-today passes that "
                    "catch orders finished between two list-open polls.")

    @model_validator(mode="before")
    @classmethod
    def _region_host(cls, data: Any) -> Any:
        # The documented host of the region, unless the user points elsewhere (simulator,
        # UAT host, proxy).
        if isinstance(data, dict) and not data.get("base_url"):
            host = HOSTS.get(str(data.get("region", "hk")))
            if host is not None:
                return {**data, "base_url": host}
        return data

    @field_validator("account_ids")
    @classmethod
    def _accounts(cls, value: list[str]) -> list[str]:
        if any(not a.strip() for a in value):
            raise ValueError("account ids must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("an account id is listed twice")
        return value


# -- signing ------------------------------------------------------------------------------


def timestamp_text(moment: datetime) -> str:
    """``x-timestamp``: UTC, seconds precision, ``YYYY-MM-DDThh:mm:ssZ``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def body_digest(body: bytes, algorithm: str) -> str:
    """s2: upper-case hex MD5 of the body for HMAC-SHA1, SHA-256 for HMAC-SHA256."""
    hasher = hashlib.md5 if algorithm == "HMAC-SHA1" else hashlib.sha256
    return hasher(body).hexdigest().upper()


def string_to_sign(path: str, host: str, params: Mapping[str, str] | Iterable[tuple[str, str]],
                   body: bytes | None, headers: Mapping[str, str]) -> str:
    """The percent-encoded s3 of brokers.md §3.2 (what the HMAC is computed over)."""
    signing = {k.lower(): v for k, v in headers.items()}
    signing["host"] = host
    pairs = params.items() if isinstance(params, Mapping) else params
    for key, value in pairs:
        # A query key equal to a header key (or repeated) joins the values with "&".
        signing[key] = f"{signing[key]}&{value}" if key in signing else value
    s1 = "&".join(f"{k}={v}" for k, v in sorted(signing.items(), key=lambda kv: kv[0].encode()))
    s3 = f"{path}&{s1}"
    if body:
        s3 += "&" + body_digest(body, headers["x-signature-algorithm"])
    # quote(safe="") leaves exactly A-Z a-z 0-9 - . _ ~ (so "/" becomes %2F).
    return quote(s3, safe="")


def sign(method: str, host: str, path: str,
         params: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | None, *,
         app_key: str, app_secret: str, algorithm: str, timestamp: str, nonce: str
         ) -> dict[str, str]:
    """The signature headers of one request (brokers.md §3.2).

    ``method`` is not part of Webull's signature; it is taken so a call reads like the
    request it signs. ``host`` is the Host header as sent (``host[:port]``), ``params`` the
    raw (not URL-encoded) query parameters, ``body`` the exact bytes sent (or ``None``).
    """
    del method
    headers = {
        "x-app-key": app_key,
        "x-timestamp": timestamp,
        "x-signature-algorithm": algorithm,
        "x-signature-version": SIGNATURE_VERSION,
        "x-signature-nonce": nonce,
    }
    encoded = string_to_sign(path, host, params, body, headers)
    digest = hashlib.sha1 if algorithm == "HMAC-SHA1" else hashlib.sha256
    mac = hmac.new((app_secret + "&").encode(), encoded.encode(), digest)
    headers["x-signature"] = base64.b64encode(mac.digest()).decode("ascii")
    return headers


def compact_json(body: Any) -> bytes:
    """A POST body as Webull's SDK sends it: compact, UTF-8, not ASCII-escaped."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- adapter ------------------------------------------------------------------------------


class WebullAdapter(BrokerAdapter[WebullConfig]):
    """Polls Webull accounts with the legacy list and detail calls.

    Limits: ``limits`` is a ClassVar, so it can hold only one figure for order queries, yet
    the documented figure depends on the region (HK/JP 2 per 2 s, US 10 per 30 s). The
    ClassVar holds the HK/JP figure (what ``limits`` overrides are checked against and
    ``check-config`` prints); :meth:`limits_for` gives the region's figures, and the
    constructor swaps the ``order_query`` group of a US connection for the US figure (or
    the user's lower one). :meth:`check` refuses a US override above 10/30s, which the
    generic check against the ClassVar would let through.
    """

    kind: ClassVar[str] = "webull"
    Config: ClassVar[type[BrokerConfig]] = WebullConfig
    limits: ClassVar[dict[str, LimitSpec]] = {
        "order_query": QUERY_LIMITS["hk"],
        "replace": LimitSpec(1, 1.0),  # seed 003: once per second per AppId
        "cancel": LimitSpec(1, 1.0),
    }
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        RequestKind.LIST: ("order_query",),
        RequestKind.DETAIL: ("order_query",),
        RequestKind.REPLACE: ("replace",),
        RequestKind.CANCEL: ("cancel",),
    }
    errors: ClassVar[ErrorTable] = ERRORS
    supports_fetch: ClassVar[bool] = True
    supports_replace: ClassVar[bool] = True
    supports_cancel: ClassVar[bool] = True
    #: Trade events over gRPC (:mod:`poller.brokers.webullpush`, the ``push`` extra).
    supports_push: ClassVar[bool] = True

    def __init__(self, name: str, config: WebullConfig, client: httpx.AsyncClient,
                 budget: RateBudget) -> None:
        super().__init__(name, config, client, budget)
        #: Makes x-signature-nonce (tests pin it); the SDK uses a random UUID.
        self.nonce_factory: Callable[[], str] = lambda: uuid.uuid4().hex
        #: The wall clock for x-timestamp (tests pin it).
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        # (account, reported order id) → client_order_id, learnt from list answers.
        self._client_ids: dict[tuple[str, str], str] = {}
        # Ids a scan of today's list did not find: not scanned for again (a watched order
        # from an earlier day would otherwise cost a whole list-today scan at every probe).
        self._not_today: set[tuple[str, str]] = set()
        # account → budget clock of its last list-today pass (list = "both").
        self._today_at: dict[str, float] = {}
        # (account, order id) → the raw order of the last list or detail answer, newest last.
        self._raw: dict[tuple[str, str], dict[str, Any]] = {}
        self._cache = ParseCache()
        self._apply_region_limits()
        # Signed as the request leaves, after the budget admitted it: a request that waited
        # for a slot (or a pause) must not arrive with an old x-timestamp.
        self.client.auth = WebullAuth(self)

    @classmethod
    def limits_for(cls, config: WebullConfig) -> dict[str, LimitSpec]:
        """The documented limit groups of this connection's region."""
        return {**cls.limits, "order_query": QUERY_LIMITS[config.region]}

    @classmethod
    def check(cls, config: WebullConfig) -> list[tuple[str, str]]:
        """Refuse a US order-query override above the US documented 10/30s."""
        problems: list[tuple[str, str]] = []
        documented = cls.limits_for(config)["order_query"]
        text = config.limits.get("order_query")
        if text is not None:
            try:
                spec = LimitSpec.parse(text)
            except ValueError:
                return problems  # reported by the generic limit check
            if spec.count / spec.window > documented.count / documented.window:
                problems.append((
                    "limits.order_query",
                    f"{text} is above the documented limit {documented} for region "
                    f"{config.region}; poller never exceeds a broker's "
                    "documented limit"))
        return problems

    def _apply_region_limits(self) -> None:
        group = self.budget.groups.get("order_query")
        documented = self.limits_for(self.config)["order_query"]
        if group is None or documented == self.limits["order_query"]:
            return
        spec = documented
        text = self.config.limits.get("order_query")
        if text is not None:
            lowered = LimitSpec.parse(text)
            if lowered.count / lowered.window < documented.count / documented.window:
                spec = LimitSpec(lowered.count, lowered.window, documented.spacing)
        self.budget.groups["order_query"] = LimitGroup("order_query", spec, share=group.share)

    def scopes(self) -> list[ListScope]:
        # "both" answers are open lists but for the list-today passes, which hold every
        # open order too: an order missing from either has left the open list.
        open_only = self.config.listing != "today"
        return [ListScope(account, open_only=open_only) for account in self.config.account_ids]

    # -- push -------------------------------------------------------------------------

    @classmethod
    def push_problem(cls, config: WebullConfig) -> str | None:
        """Also: the push extra is missing, or TLS is off for a host that is not loopback."""
        problem = super().push_problem(config)
        if problem is not None:
            return problem
        try:
            # The stream module needs grpcio and the official SDK's webull.trade.events.
            from . import webullpush
        except ImportError as err:
            return (f"the push extra is missing ({err.name or 'webull.trade.events'} cannot "
                    "be imported): pip install '.[push]'")
        target = webullpush.events_target(config.push_url, config.region)
        if not config.push_tls and not is_loopback(webullpush.target_host(target)):
            return f"push_tls = false is allowed for a loopback push_url only, not {target}"
        return None

    def open_push(self) -> WebullEventStream:
        """A new subscription to the trade events of the configured accounts."""
        from . import webullpush

        cfg = self.config
        return webullpush.WebullEventStream(webullpush.EventsSettings(
            connection=self.name,
            target=webullpush.events_target(cfg.push_url, cfg.region),
            tls=cfg.push_tls, app_key=cfg.app_key, app_secret=cfg.app_secret,
            accounts=tuple(cfg.account_ids), algorithm=cfg.signature_algorithm,
            signature_version=SIGNATURE_VERSION, status_table=STATUS_TABLE,
            # The adapter's clock and nonce maker, as its REST signing uses them.
            timestamp=lambda: timestamp_text(self.clock()), nonce=lambda: self.nonce_factory(),
        ))

    # -- requests ---------------------------------------------------------------------

    def sign_request(self, request: httpx.Request) -> None:
        """Add the signature headers, over exactly the host, path, query and body sent."""
        cfg = self.config
        headers = sign(
            request.method, request.headers["host"], request.url.path,
            request.url.params.multi_items(), request.content or None,
            app_key=cfg.app_key.get_secret_value(), app_secret=cfg.app_secret.get_secret_value(),
            algorithm=cfg.signature_algorithm, timestamp=timestamp_text(self.clock()),
            nonce=self.nonce_factory(),
        )
        request.headers.update(headers)
        # x-version: required by Webull's signature pages, sent by both official SDKs on
        # every request and not part of the signature (webullsdkcore/request.py adds it as
        # a plain header; auth/composer/default_signature_composer.py signs only app key,
        # timestamp, algorithm, signature version, nonce and host). The legacy SDK
        # (webull-python-sdk-trade 0.1.18) sends "v1" on /trade/orders/list-open,
        # list-today, /trade/order/detail, replace and cancel — the answers poller parses;
        # webull-openapi-python-sdk 3.0.4 sends "v3" on the same paths.
        request.headers["x-version"] = cfg.api_version

    async def _get(self, kind: RequestKind, path: str, params: list[tuple[str, str]]) -> Any:
        query: list[tuple[str, str | int | float | bool | None]] = list(params)
        request = self.client.build_request("GET", path, params=query)
        return self.unwrap(kind, await self.request(kind, request))

    async def _post(self, kind: RequestKind, path: str, body: dict[str, Any]) -> Any:
        request = self.client.build_request(
            "POST", path, content=compact_json(body),
            headers={"Content-Type": "application/json"})
        return self.unwrap(kind, await self.request(kind, request))

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        """The data of a 2xx answer (either envelope style, brokers.md 3.3), else the
        ``error_code``/``code`` and ``message``/``msg`` of the error.

        An ``error_code`` in a 200 answer is an error too, and an HTTP-like code inside a
        200 envelope (``{"code": 500, "msg": ...}``) is read as that HTTP status.
        """
        body = answer.body
        if not 200 <= answer.status < 300 or (isinstance(body, dict)
                                               and body.get("error_code")):
            return _error_answer(body)
        if body is None:
            raise BrokerMalformed(f"empty answer (HTTP {answer.status})", connection=self.name)
        if not (isinstance(body, dict) and "data" in body and ("code" in body or "msg" in body)):
            return Success(body)  # the raw style: the body is the data
        code = body.get("code")
        text = str(code)
        if code is None or text in ("200", "0"):
            return Success(body["data"])
        message = str(body.get("msg") or "")
        if text.isdigit() and len(text) == 3:
            return ErrorAnswer("", message, status=int(text))
        return ErrorAnswer(text, message)

    # -- listing ----------------------------------------------------------------------

    async def list_orders(self, scope: ListScope) -> ListResult:
        """One list call of an account: list-open, or list-today when it is due.

        With ``list = "both"`` the first pass of every account is list-today, so the
        baseline holds the orders already finished today (none of them is announced later
        as new), and then one list-open call every ``today_every`` seconds is replaced by
        list-today: a rejection or fill between two polls — an order that never appears in
        an open list — is seen within that time, at no extra cost to the budget."""
        path = "/trade/orders/list-open"
        if self.config.listing == "today" or (
                self.config.listing == "both" and self._today_due(scope.account_id)):
            path = "/trade/orders/list-today"
        orders, problems, _ = await self._scan(path, scope.account_id)
        if path.endswith("list-today"):
            self._today_at[scope.account_id] = self.budget.now()
        return ListResult(scope, orders, problems)

    def _today_due(self, account_id: str) -> bool:
        last = self._today_at.get(account_id)
        return last is None or self.budget.now() - last >= self.config.today_every

    @classmethod
    def discovery_note(cls, config: WebullConfig) -> str | None:
        """What each ``list`` choice sees, for check-config."""
        if config.listing == "open":
            return ("list = \"open\": an order placed and rejected or filled between two "
                    "polls never appears in an answer, so its PLACE_FAILED / FINAL_FILLED is "
                    "never sent (use \"both\", the default)")
        if config.listing == "both":
            return (f"list-open every {config.interval:g} s, list-today in its place every "
                    f"{config.today_every:g} s: an order finished between two polls is "
                    f"announced within {config.today_every:g} s, at no extra cost")
        return "list-today every interval: every order of the day, in answers that grow"

    async def _scan(self, path: str, account_id: str, *, want: str | None = None
                    ) -> tuple[list[OrderSnapshot], list[str], OrderSnapshot | None]:
        """Read every page of a list call; stop early once ``want`` (an id) is seen."""
        found: dict[str, OrderSnapshot] = {}
        problems: list[str] = []
        cursor: str | None = None
        cursors: set[str] = set()
        cache_scope = f"{path}:{account_id}"
        for page in range(1, MAX_PAGES + 1):
            params = [("account_id", account_id), ("page_size", str(self.config.page_size))]
            if cursor is not None:
                params.append(("last_client_order_id", cursor))
            has_next, items = self._page(await self._get(RequestKind.LIST, path, params), path)
            last: str | None = None
            for index, item in enumerate(items):
                if isinstance(item, dict) and item.get("client_order_id") not in (None, ""):
                    last = str(item["client_order_id"])
                ident = (str(item.get("client_order_id") or item.get("order_id") or index)
                         if isinstance(item, dict) else str(index))

                def read(item: Any = item) -> OrderSnapshot:
                    return parse_order(item, broker=self.name, account_id=account_id)

                try:
                    # A scan for one order stops early: only whole answers feed the cache.
                    snapshot = (read() if want is not None
                                else self._cache.get(cache_scope, ident, item, read))
                except (KeyError, TypeError, ValueError, ArithmeticError) as err:
                    problems.append(f"page {page} order #{index}: {type(err).__name__}: {err}")
                    continue
                self._remember(snapshot, item)
                # An order repeated on a later page (the list moved while we paged) keeps
                # its first position and the later, fresher reading.
                found[snapshot.order_id] = snapshot
                if want is not None and want in (snapshot.order_id, snapshot.client_order_id):
                    return list(found.values()), problems, snapshot
            if not has_next:
                break
            if last is None or last in cursors:
                problems.append(f"page {page} says has_next but gives no new "
                                "last_client_order_id cursor; stopped paging")
                break
            cursors.add(last)
            cursor = last
        else:
            problems.append(f"more than {MAX_PAGES} pages; stopped paging")
        if want is None:
            self._cache.done(cache_scope)
        return list(found.values()), problems, None

    def _page(self, data: Any, path: str) -> tuple[bool, list[Any]]:
        if data is None:  # "data": null: nothing to list
            return False, []
        if isinstance(data, list):  # a bare list of orders: one page
            return False, data
        if not isinstance(data, dict):
            raise BrokerMalformed(f"{path} answered {type(data).__name__}, expected an "
                                  "object with orders", connection=self.name)
        orders = data.get("orders")
        if orders is None:
            orders = []
        if not isinstance(orders, list):
            raise BrokerMalformed(f"{path}: orders is {type(orders).__name__}, expected a list",
                                  connection=self.name)
        # The open-orders pages spell the flag has_next, the US "day orders" page hasNext
        # (brokers.md §3.4): read either, so a second page is never silently dropped.
        has_next = data.get("has_next", data.get("hasNext", False))
        if not isinstance(has_next, bool):
            has_next = str(has_next).lower() == "true"
        return has_next, orders

    def _remember(self, snapshot: OrderSnapshot, raw: Any = None) -> None:
        if snapshot.client_order_id:
            self._client_ids[(snapshot.account_id, snapshot.order_id)] = (
                snapshot.client_order_id)
        if isinstance(raw, dict):
            # The order as Webull last showed it: a replace echoes its fields from here.
            key = (snapshot.account_id, snapshot.order_id)
            self._raw.pop(key, None)
            self._raw[key] = raw
            while len(self._raw) > RAW_KEPT:
                del self._raw[next(iter(self._raw))]
            if snapshot.final:
                self._raw.pop(key, None)

    # -- one order --------------------------------------------------------------------

    async def fetch_order(self, account_id: str, order_id: str) -> OrderSnapshot | None:
        """Read one order; ``order_id`` is an id this adapter reported.

        The detail call needs the client_order_id; see :meth:`_resolve` for ids the adapter
        has not seen in a list answer yet (after a restart).
        """
        client_id, hit = await self._resolve(account_id, order_id)
        if hit is not None:
            return _keep_id(hit, order_id)
        raw = await self._detail(account_id, client_id)
        if raw is None:
            return None
        try:
            snapshot = parse_order(raw, broker=self.name, account_id=account_id)
        except (KeyError, TypeError, ValueError, ArithmeticError) as err:
            raise BrokerMalformed(f"order detail unreadable: {type(err).__name__}: {err}",
                                  connection=self.name) from err
        self._remember(snapshot, raw)
        return _keep_id(snapshot, order_id)

    async def _detail(self, account_id: str, client_order_id: str) -> dict[str, Any] | None:
        """The raw order behind a client_order_id; ``None`` when Webull does not know it."""
        params = [("account_id", account_id), ("client_order_id", client_order_id)]
        try:
            data = await self._get(RequestKind.DETAIL, "/trade/order/detail", params)
        except BrokerNotFound:
            return None
        if data is None or data == {}:
            return None
        if not isinstance(data, dict):
            raise BrokerMalformed(f"order detail is {type(data).__name__}, expected an object",
                                  connection=self.name)
        order = data.get("order") if "order" in data and "order_status" not in data else data
        if not isinstance(order, dict):
            raise BrokerMalformed("order detail has no order object", connection=self.name)
        return order

    async def _resolve(self, account_id: str, order_id: str
                       ) -> tuple[str, OrderSnapshot | None]:
        """The client_order_id behind an id we reported, and the order if a scan found it.

        Unknown ids (the table is empty after a restart) are looked up in today's list,
        which costs order queries but answers with the whole order; failing that, the id
        is taken to be a client_order_id (what we report when Webull gives no order_id).
        """
        known = self._client_ids.get((account_id, order_id))
        if known is not None:
            return known, None
        # With list=today the poll itself has just missed it: no scan.
        if self.config.listing != "today" and (account_id, order_id) not in self._not_today:
            _, _, hit = await self._scan("/trade/orders/list-today", account_id,
                                         want=order_id)
            if hit is not None:
                return hit.client_order_id or order_id, hit
            if len(self._not_today) >= 10_000:
                self._not_today.clear()
            self._not_today.add((account_id, order_id))
        return order_id, None

    # -- order actions ----------------------------------------------------------------

    def check_action(self, known: OrderSnapshot, kind: str, qty: Decimal | None,
                     price: Decimal | None) -> str | None:
        """Seed 003's rules for a replace, besides the generic ones."""
        problem = super().check_action(known, kind, qty, price)
        if problem or kind != "replace":
            return problem
        if qty is not None and (qty != qty.to_integral_value() or not 0 < qty <= MAX_QTY):
            return f"Webull quantities are whole numbers from 1 to {MAX_QTY:,}"
        if price is not None and known.order_type not in LIMIT_ORDER_TYPES:
            return f"a {known.order_type or 'non-limit'} order has no limit price to change"
        return None

    async def _client_id_of(self, known: OrderSnapshot) -> str:
        if known.client_order_id:
            return known.client_order_id
        client_id, _ = await self._resolve(known.account_id, known.order_id)
        return client_id

    async def cancel_order(self, known: OrderSnapshot) -> None:
        """``POST /trade/order/cancel`` with the order's client_order_id (1 per second).

        :raises BrokerRejected: Webull refused (e.g. the order is finished).
        :raises BrokerUnavailable: ``TRADE_WEBULL_REQUEST_PROCESSING``: a replace or cancel of
            this order is still in progress; try again later.
        """
        body = {"account_id": known.account_id,
                "client_order_id": await self._client_id_of(known)}
        _acknowledged(await self._post(RequestKind.CANCEL, "/trade/order/cancel", body),
                      self.name)

    async def replace_order(self, known: OrderSnapshot, *, qty: Decimal | None,
                            price: Decimal | None) -> None:
        """``POST /trade/order/replace`` (1 per second): new qty and/or limit price.

        Seed 003: every other field must be passed unchanged. They are echoed from the order
        as the last list or detail answer showed it (those fields never change, and qty and
        price come from the order's current snapshot); only an order no answer has shown
        yet costs a detail read first (an order query, 2 per 2 s in HK) — so replaces run
        at the replace limit, not at the query limit.

        :raises BrokerRejected: Webull refused the change, or no longer knows the order.
        """
        client_id = await self._client_id_of(known)
        raw = self._raw.get((known.account_id, known.order_id))
        if raw is None:
            raw = await self._detail(known.account_id, client_id)
            if raw is None:
                raise BrokerRejected(f"order {known.order_id} not found",
                                     connection=self.name, code="404")
        current = {**_leg(raw), "qty": decimal_text(known.qty)}
        if known.price is not None and known.order_type in LIMIT_ORDER_TYPES:
            current["limit_price"] = decimal_text(known.price)
        body = {"account_id": known.account_id,
                "stock_order": replace_body(current, qty=qty, limit_price=price)}
        _acknowledged(await self._post(RequestKind.REPLACE, "/trade/order/replace", body),
                      self.name)


def _error_answer(body: Any) -> ErrorAnswer:
    """The code and message of an error body (a bare error page has neither)."""
    if not isinstance(body, dict):
        return ErrorAnswer()
    return ErrorAnswer(str(body.get("error_code") or body.get("code") or ""),
                       str(body.get("message") or body.get("msg") or ""))


class WebullAuth(httpx.Auth):
    """Signs each request inside ``client.send``, i.e. once the rate budget admitted it."""

    requires_request_body = True

    def __init__(self, adapter: WebullAdapter) -> None:
        self._adapter = adapter

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._adapter.sign_request(request)
        yield request


def _acknowledged(data: Any, connection: str) -> None:
    """A replace or cancel is accepted when Webull echoes the client_order_id."""
    if not (isinstance(data, dict) and data.get("client_order_id") not in (None, "")):
        raise BrokerMalformed("answer lacks client_order_id", connection=connection)


def _keep_id(snapshot: OrderSnapshot, asked: str) -> OrderSnapshot:
    """Keep the id the tracker knows the order by when the answer names it differently."""
    if snapshot.order_id != asked and snapshot.client_order_id == asked:
        return replace(snapshot, order_id=asked)
    return snapshot


# -- parsing ------------------------------------------------------------------------------

#: stock_order fields that must be echoed unchanged on replace (seed 003).
ECHOED_FIELDS = ("client_order_id", "side", "tif", "extended_hours_trading", "instrument_id",
                 "order_type", "stop_price", "trailing_type", "trailing_stop_step")


def _leg(order: dict[str, Any]) -> dict[str, Any]:
    """The fields of an order in one flat dict (US orders nest them in ``items[0]``)."""
    items = order.get("items")
    if items is None:
        return order
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise ValueError("items must be a non-empty list of objects")
    # Order-level fields (ids, tif, extended hours) live on the top level.
    return {**items[0], **{k: v for k, v in order.items() if k != "items"}}


def field_text(value: Any) -> str:
    """A field of an answer as text (Decimals without exponent, booleans as JSON)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def parse_time(value: Any) -> datetime | None:
    """``yyyy-MM-ddTHH:mm:ss.SSSZ`` (also ``+0000``) or epoch milliseconds (the polls' and
    the trade events' times, read alike so push and poll agree)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        seconds = Decimal(value)
        if seconds > Decimal(10) ** 11:  # milliseconds since the epoch
            seconds /= 1000
        return datetime.fromtimestamp(float(seconds), UTC)
    if not isinstance(value, str):
        raise TypeError(f"time is {type(value).__name__}")
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_order(order: Any, *, broker: str, account_id: str) -> OrderSnapshot:
    """Read one Webull order (HK/JP flat or US ``items[]`` shape) into a snapshot.

    :raises KeyError, TypeError, ValueError: when the item is not a readable order.
    """
    if not isinstance(order, dict):
        raise TypeError(f"expected an object, got {type(order).__name__}")
    leg = _leg(order)
    client_id = field_text(leg.get("client_order_id"))
    broker_id = field_text(leg.get("order_id"))
    if not client_id and not broker_id:
        raise KeyError("client_order_id")
    raw_status = leg["order_status"]
    if not isinstance(raw_status, str):
        raise TypeError(f"order_status is {type(raw_status).__name__}")
    status = STATUS_TABLE.get(raw_status)
    qty = to_decimal(leg.get("qty"), default=Decimal(0)) or Decimal(0)
    filled = to_decimal(leg.get("filled_qty"), default=Decimal(0)) or Decimal(0)
    limit_price = to_decimal(leg.get("limit_price"))
    stop_price = to_decimal(leg.get("stop_price"))
    avg = to_decimal(leg.get("filled_price"))
    placed = parse_time(leg.get("place_time"))
    last_fill = parse_time(leg.get("last_filled_time"))
    extra = {key: field_text(leg.get(key)) for key in (
        "instrument_id", "category", "currency", "short_name", "stop_price", "trailing_type",
        "trailing_stop_step", "extended_hours_trading", "combo_type")
        if leg.get(key) not in (None, "")}
    return OrderSnapshot(
        broker=broker,
        broker_kind="webull",
        account_id=field_text(leg.get("account_id")) or account_id,
        order_id=broker_id or client_id,
        status=status or OrderStatus.SUBMITTED,
        unknown_status=status is None,
        broker_status=raw_status,
        symbol=field_text(leg.get("symbol")),
        side=field_text(leg.get("side")).upper(),
        order_type=field_text(leg.get("order_type")),
        qty=qty,
        price=limit_price if limit_price else (stop_price or None),
        filled_qty=filled,
        avg_fill_price=avg if avg and filled else None,
        client_order_id=client_id,
        placed_at=placed,
        # Webull reports no modification time; the last fill (else placement) is the latest
        # moment it does report, and it never goes backwards.
        updated_at=last_fill or placed,
        time_in_force=field_text(leg.get("tif")),
        extra=extra,
    )


def replace_body(order: dict[str, Any], *, qty: Decimal | None = None,
                 limit_price: Decimal | None = None) -> dict[str, Any]:
    """The ``stock_order`` of a replace: the original fields, with qty / price changed."""
    leg = _leg(order)
    body: dict[str, Any] = {}
    for key in ECHOED_FIELDS:
        value = leg.get(key)
        if value is None or value == "":
            continue
        body[key] = value if isinstance(value, bool) else field_text(value)
    body["qty"] = decimal_text(qty) if qty is not None else field_text(leg.get("qty"))
    if limit_price is not None:
        body["limit_price"] = decimal_text(limit_price)
    elif leg.get("limit_price") not in (None, ""):
        body["limit_price"] = field_text(leg["limit_price"])
    return body


@hookimpl
def register_brokers(register: Callable[[type[BrokerAdapter[Any]]], None]) -> None:
    """Register the Webull adapter."""
    register(WebullAdapter)


__all__ = ["STATUS_TABLE", "WebullAdapter", "WebullConfig", "parse_order", "replace_body",
           "sign", "string_to_sign"]
