"""The base every broker adapter builds on: config model, limit groups, list and fetch calls.

An adapter knows one broker's wire format and nothing else: it signs requests, reads answers
into canonical :class:`~poller.models.OrderSnapshot` objects through its status table, and
reads its envelope into data or an :class:`~poller.errors.ErrorAnswer`, which the base sorts
into :mod:`poller.errors` through the adapter's :class:`~poller.errors.ErrorTable`.
Scheduling, diffing, storing and delivery belong to the daemon.

Over 400 lines: the one base class is the whole contract an adapter author implements
(config, limit groups per request kind, list, fetch and action calls, the error path, the
class check run at registration); split, it would be read in four places for one class.
"""

from __future__ import annotations

import difflib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Generic, get_args, get_origin

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from typing_extensions import TypeVar

from poller.errors import (
    BrokerError,
    BrokerMalformed,
    BrokerRateLimited,
    ErrorAnswer,
    ErrorTable,
)
from poller.httpclient import Answer, retry_after_seconds, send
from poller.models import OrderSnapshot
from poller.pushfeed import PushStream
from poller.ratelimit import PRIORITY, PRIORITY_URGENT, LimitSpec, RateBudget

logger = logging.getLogger(__name__)


class BrokerConfig(BaseModel):
    """Settings every ``[brokers.NAME]`` table accepts; adapters extend it."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    kind: str = Field(description="Which adapter to use (shioaji, longport, webull, coinw).")
    base_url: str = Field(description="The API's base URL (point it at a simulator or sandbox).")
    interval: float = Field(
        default=2.0, gt=0, description="Seconds between account-wide list calls."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=120, description="Overall deadline of one request, in seconds."
    )
    share: float = Field(
        default=0.8, gt=0, le=1,
        description="Part of each documented rate limit poller may use (rest left for you).",
    )
    limits: dict[str, str] = Field(
        default_factory=dict,
        description='Lower a documented limit group, e.g. {order_status = "20/2s"}.',
    )
    limits_above_documented: bool = Field(
        default=False,
        description="Allow `limits` above the documented ones (e.g. a limit your broker raised "
                    "for you in writing); poller warns at every start.",
    )
    max_in_flight: int = Field(
        default=8, ge=1, le=64,
        description="Per-order requests of this connection on the wire at once, at most "
                    "(the rate is the budget's; this only keeps slow answers from idling it).",
    )
    max_answer_mb: float = Field(
        default=8.0, gt=0, le=1024,
        description="Largest answer read, in MiB (a list of 100 000 orders is ~70 MiB).",
    )
    enabled: bool = Field(default=True, description="Set false to keep the section but not poll.")
    per_order_polling: bool | None = Field(
        default=None,
        description="Poll every open order with the per-order call, round-robin at the "
                    "budget (default: the adapter's choice).",
    )
    push: bool | None = Field(
        default=None,
        description="Subscribe to the broker's push stream of order events where it has "
                    "one (default: on where the broker pushes and the push extra is "
                    "installed); polling stays on as the safety net.",
    )
    push_url: str = Field(
        default="", description="The push stream's address (default: the official one).")
    push_tls: bool = Field(
        default=True, description="Encrypt the push stream; false only for loopback.")
    reconcile_interval: float = Field(
        default=30.0, gt=0,
        description="Seconds between list calls while the push stream is healthy (they "
                    "reconcile what it may miss); at a drop, polling returns to interval.",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")


class RequestKind(StrEnum):
    """What a request is for; ``request_groups`` names the limit groups each kind consumes."""

    LIST = "list"  #: an account-wide list call
    DETAIL = "detail"  #: one order by id (``fetch_order``)
    #: a second per-order read that completes a poll (CoinW ``returnOrderStatus``, for an
    #: order its ``returnOrderTrades`` did not describe)
    FOLLOW_UP = "follow_up"
    REPLACE = "replace"  #: change an order's quantity or price (Shioaji update_price/_qty)
    CANCEL = "cancel"  #: cancel an order


#: The per-order reads: only their answers can mean "the broker knows no such order".
PER_ORDER_READS = frozenset({RequestKind.DETAIL, RequestKind.FOLLOW_UP})


@dataclass(frozen=True)
class Success:
    """A success answer's data, as the adapter's envelope reader found it."""

    data: Any


@dataclass(frozen=True)
class ListScope:
    """One account-wide discovery call: which account, and what it covers.

    ``symbol`` narrows the call to one instrument (CoinW lists open orders per pair).
    ``open_only`` says finished orders drop out of the answer, so an order that leaves it
    must be confirmed with the per-order call before anything is concluded.
    """

    account_id: str
    symbol: str | None = None
    open_only: bool = False

    @property
    def label(self) -> str:
        """Human-readable name of the scope for logs."""
        return self.account_id + (f"/{self.symbol}" if self.symbol else "")

    def covers(self, snapshot: OrderSnapshot) -> bool:
        """Whether an order of ours would appear in this scope's answer if it were open."""
        if snapshot.account_id != self.account_id:
            return False
        return self.symbol is None or snapshot.symbol == self.symbol


@dataclass
class ListResult:
    """The orders one list call returned, plus items that could not be read."""

    scope: ListScope
    orders: list[OrderSnapshot]
    problems: list[str] = field(default_factory=list)


#: The config type of an adapter. Invariant, so that classmethods can take it (``check``);
#: code holding any adapter class writes ``type[BrokerAdapter[Any]]``. The default keeps a
#: plain ``BrokerAdapter`` annotation meaningful (an adapter of a plain BrokerConfig).
C = TypeVar("C", bound=BrokerConfig, default=BrokerConfig)


class BrokerAdapter(ABC, Generic[C]):
    """Base class of broker adapters, generic over their config: ``BrokerAdapter[CoinWConfig]``.

    Subclasses set ``kind``, ``Config`` (the same class as the type argument), ``limits``
    (the broker's documented limit groups), ``request_groups`` (which groups each
    :class:`RequestKind` consumes) and ``errors`` (the broker's error codes), implement
    :meth:`scopes`, :meth:`list_orders` and, where the broker has one, :meth:`fetch_order`,
    and read their envelope in :meth:`read_answer`. :func:`adapter_problems` checks these
    declarations when the class is registered.
    """

    kind: ClassVar[str]
    #: A ClassVar cannot hold the type variable, so the config class is named twice;
    #: :func:`adapter_problems` checks that the two agree.
    Config: ClassVar[type[BrokerConfig]] = BrokerConfig
    limits: ClassVar[dict[str, LimitSpec]] = {}
    #: Limit groups per :class:`RequestKind`. Keyed by ``str`` so that plain strings (a
    #: kind's value, as older callers write) look up the same entries; any key that is not a
    #: kind's value is refused at registration (:func:`adapter_problems`).
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The broker's error codes and penalty window (see :class:`~poller.errors.ErrorTable`).
    errors: ClassVar[ErrorTable] = ErrorTable()
    supports_fetch: ClassVar[bool] = False
    #: Poll every open order with the per-order call, round-robin at the budget (CoinW, whose
    #: list call is per pair); otherwise the per-order call only confirms orders that left a
    #: list answer, refreshes orders that just changed, and reads watched orders.
    per_order_polling: ClassVar[bool] = False
    #: Whether the broker pushes order events: such an adapter implements
    #: :meth:`open_push` (see :mod:`poller.pushfeed`).
    supports_push: ClassVar[bool] = False
    #: Seconds after placement when the broker stops answering for an order (CoinW: 7 days);
    #: older open orders are retired with an operator event instead of polled for ever.
    retire_after: ClassVar[float | None] = None

    def __init__(
        self, name: str, config: C, client: httpx.AsyncClient, budget: RateBudget
    ) -> None:
        # Callers holding any adapter class pass a plain BrokerConfig (validated with
        # Config): the one runtime check the type argument needs.
        if not isinstance(config, type(self).Config):
            raise TypeError(f"{type(self).__name__} needs a {type(self).Config.__name__}, "
                            f"got {type(config).__name__}")
        self.name = name
        self.config = config
        self.client = client
        self.budget = budget
        #: Whether this connection polls every open order (config, else the adapter default).
        self.polls_each_order = self.supports_fetch and (
            self.per_order_polling if config.per_order_polling is None
            else config.per_order_polling)

    @classmethod
    def secrets(cls, config: C) -> list[str]:
        """Every secret value in a config, for log redaction."""
        return secret_values(config)

    @classmethod
    def check(cls, config: C) -> list[tuple[str, str]]:
        """Extra problems with a validated config, as (key, message); none by default."""
        return []

    @classmethod
    def discovery_note(cls, config: C) -> str | None:
        """One line for ``check-config`` on what the list calls can miss and why (a
        trade-off the user chose); none by default."""
        return None

    @abstractmethod
    def scopes(self) -> list[ListScope]:
        """The account-wide list calls to run every ``interval`` seconds."""

    @abstractmethod
    async def list_orders(self, scope: ListScope) -> ListResult:
        """Run one list call and read every order in it.

        :raises BrokerError: (a subclass) when the call as a whole failed.
        """

    async def fetch_order(self, account_id: str, order_id: str) -> OrderSnapshot | None:
        """Read one order by id; ``None`` when the broker says it does not exist.

        Only called when ``supports_fetch`` is true.
        """
        raise NotImplementedError(f"{self.kind} has no per-order call")

    @classmethod
    def push_problem(cls, config: C) -> str | None:
        """Why a connection with ``config`` cannot push (None when it can): the broker has
        no stream, the config turned it off, or the optional package it needs is missing
        (adapters that push extend this)."""
        if not cls.supports_push:
            return f"{cls.kind} has no push stream"
        if config.push is False:
            return "push = false"
        return None

    def push_available(self) -> str | None:
        """Why this connection cannot push (None when it can); see :meth:`push_problem`."""
        return type(self).push_problem(self.config)

    def open_push(self) -> PushStream:
        """A new subscription to the broker's push stream (one connection per call).

        Only called when :meth:`push_available` says it can.
        """
        raise NotImplementedError(f"{self.kind} has no push stream")

    async def refine(
        self, previous: OrderSnapshot | None, current: OrderSnapshot
    ) -> OrderSnapshot:
        """Add detail to a snapshot from a list call before it is diffed.

        Called only when the order changed since ``previous``. LongPort uses it to read the
        order detail's ``history[]`` and recover fills that happened between two polls.
        The default returns ``current`` unchanged.
        """
        return current

    def detail_rate(self) -> float:
        """Per-order calls per second the budget allows (0 without a per-order call)."""
        groups = self.request_groups.get(RequestKind.DETAIL, ())
        rates = [self.budget.groups[g].rate for g in groups if g in self.budget.groups]
        return min(rates) if rates else 0.0

    # -- order actions (issue 7) -----------------------------------------------------------

    #: Whether the broker can change an open order's quantity/price, and cancel it.
    supports_replace: ClassVar[bool] = False
    supports_cancel: ClassVar[bool] = False

    def check_action(self, known: OrderSnapshot, kind: str, qty: Decimal | None,
                     price: Decimal | None) -> str | None:
        """Why this action is not allowed for this order at this broker, or None."""
        if kind == "replace" and not self.supports_replace:
            return f"{self.kind} cannot modify orders"
        if kind == "cancel" and not self.supports_cancel:
            return f"{self.kind} cannot cancel orders through its API"
        if kind == "replace" and qty is not None and qty <= known.filled_qty:
            return (f"the new quantity {qty} must exceed the filled quantity "
                    f"{known.filled_qty}")
        return None

    async def replace_order(self, known: OrderSnapshot, *, qty: Decimal | None,
                            price: Decimal | None) -> None:
        """Ask the broker to change an order (through the budget).

        :raises BrokerRejected: the broker refused the change.
        """
        raise NotImplementedError(f"{self.kind} cannot modify orders")

    async def cancel_order(self, known: OrderSnapshot) -> None:
        """Ask the broker to cancel an order (through the budget).

        :raises BrokerRejected: the broker refused.
        """
        raise NotImplementedError(f"{self.kind} cannot cancel orders")

    # -- requests and error answers --------------------------------------------------------

    def groups_of(self, kind: RequestKind) -> tuple[str, ...]:
        """The limit groups a request of ``kind`` consumes.

        :raises LookupError: the adapter declares none for ``kind``: a request the budget
            would not count is a bug, never a free pass.
        """
        groups = self.request_groups.get(kind)
        if not groups:
            known = ", ".join(str(k) for k in self.request_groups) or "none"
            raise LookupError(f"{self.kind} adapter: request kind '{kind}' has no limit "
                              f"groups (request_groups has {known})")
        return groups

    async def request(self, kind: RequestKind, request: httpx.Request, *,
                      companion: bool = False) -> Answer:
        """Send one request through the rate budget of the groups ``kind`` consumes.

        :param companion: the request completes a poll whose first request the budget
            already admitted (CoinW's ``returnOrderStatus`` after a ``returnOrderTrades``
            that did not describe the order): it waits for its own groups' room like any
            request, but is not spread over the window again (the poll was) and goes ahead
            of the round-robin, so the poll it completes is not held a slot longer.
        """
        groups = self.groups_of(kind)
        admitted = await self.admit(groups, companion=companion)
        answer = await send(self.client, request, connection=self.name,
                            deadline=self.config.timeout, max_bytes=self.max_answer_bytes)
        self.budget.answered(groups, admitted)  # an answer: the broker has had it
        return answer

    async def admit(self, groups: Sequence[str], *, companion: bool = False) -> float:
        """Wait until the budget lets a request into ``groups`` go; the admission time
        (``companion``: see :meth:`request`)."""
        priority = max(PRIORITY.get(), PRIORITY_URGENT) if companion else None
        return await self.budget.acquire(*groups, priority=priority)

    @property
    def max_answer_bytes(self) -> int:
        """The largest answer this connection reads (``max_answer_mb``)."""
        return int(self.config.max_answer_mb * 1024 * 1024)

    def read_answer(self, answer: Answer) -> Success | ErrorAnswer:
        """Read the broker's envelope: a success's data, or an error's code and message.

        The default, for brokers without an envelope, takes a 2xx JSON body as the data and
        gives any other answer no code (its HTTP status sorts it).

        :raises BrokerMalformed: a 2xx answer that is not a usable envelope.
        """
        if 200 <= answer.status < 300:
            if answer.body is None:
                raise BrokerMalformed(f"empty answer (HTTP {answer.status})",
                                      connection=self.name)
            return Success(answer.body)
        return ErrorAnswer()

    def unwrap(self, kind: RequestKind, answer: Answer, *, context: str = "",
               secrets: Sequence[str] = ()) -> Any:
        """The data of a success answer; an error answer raised as poller's error.

        :param context: what the message starts with (CoinW: the command).
        :param secrets: values of this one request to scrub besides the config's (a sign).
        :raises BrokerError: sorted by :attr:`errors`; :class:`~poller.errors.BrokerNotFound`
            only for a per-order read.
        """
        try:
            outcome = self.read_answer(answer)
        except BrokerMalformed as err:
            if not context:
                raise
            raise BrokerMalformed(f"{context}{err}", connection=self.name,
                                  code=err.code) from None
        if isinstance(outcome, Success):
            return outcome.data
        raise self.error_for(kind, answer, outcome, context=context, secrets=secrets)

    def error_for(self, kind: RequestKind, answer: Answer, error: ErrorAnswer, *,
                  context: str = "", secrets: Sequence[str] = ()) -> BrokerError:
        """Build the error for one error answer (pausing the groups after a rate limit)."""
        table = self.errors
        cls = table.classify(answer.status, error, per_order=kind in PER_ORDER_READS)
        stated = error.code or (str(error.status) if error.status else "")
        code = stated or str(answer.status)
        label = f"HTTP {answer.status}" + (f", code {stated}" if stated else "")
        # Scrubbed before it is shortened, so that no cut-off half of a secret survives.
        if error.message or stated:
            said = self.scrub(error.message or "no message", *secrets)[:200]
        else:
            said = describe_body(self.scrub(answer.text, *secrets))
        message = self.scrub(f"{context}{table.words(cls, error.code)} ({label}): {said}",
                             *secrets)
        if issubclass(cls, BrokerRateLimited):
            retry_after = (retry_after_seconds(answer.header("Retry-After"))
                           if table.retry_after else None)
            return self.rate_limited(kind, message, code=code, retry_after=retry_after)
        return cls(message, connection=self.name, code=code)

    def scrub(self, text: str, *also: str) -> str:
        """``text`` without the config's secrets (nor ``also``): brokers echo what they got."""
        # Longest first: a secret that contains another is replaced whole.
        for secret in sorted({*self.secrets(self.config), *also}, key=len, reverse=True):
            if len(secret) >= 4:  # replacing a one-letter test key would garble the text
                text = text.replace(secret, "***")
        return text

    def penalty_for(self, code: str) -> float:
        """Seconds to pause after a rate-limit answer with ``code`` and no Retry-After."""
        return self.errors.penalty_for(code)

    def rate_limited(
        self, kind: RequestKind, message: str, *, code: str = "",
        retry_after: float | None = None, penalty: float | None = None,
    ) -> BrokerRateLimited:
        """Pause the groups of ``kind`` and build the error to raise.

        The pause is the broker's ``retry_after`` when it gave one, else ``penalty`` (by
        default :meth:`penalty_for` the code): long enough to leave the broker's own penalty
        window.
        """
        groups = self.groups_of(kind)
        if retry_after is not None:
            pause = retry_after
        else:
            pause = penalty if penalty is not None else self.penalty_for(code)
        self.budget.pause(groups, pause)
        return BrokerRateLimited(
            message, connection=self.name, code=code, retry_after=pause
        )

    async def aclose(self) -> None:
        """Release the connection's resources."""
        await self.client.aclose()


def adapter_problems(cls: type[BrokerAdapter[Any]]) -> list[str]:
    """What is wrong with an adapter class's declarations, one line each (none: usable).

    Run when the class is registered: every ``request_groups`` key is a :class:`RequestKind`,
    every group it names is in ``limits``, the kinds its capabilities need are there (list
    always; detail, replace, cancel with ``supports_fetch``/``_replace``/``_cancel``), and
    ``Config`` is the class's type argument.
    """
    problems, suggested = _request_kind_problems(cls)
    needed = [(RequestKind.LIST, "every adapter")] + [
        (kind, flag) for kind, flag, on in (
            (RequestKind.DETAIL, "supports_fetch", cls.supports_fetch),
            (RequestKind.REPLACE, "supports_replace", cls.supports_replace),
            (RequestKind.CANCEL, "supports_cancel", cls.supports_cancel)) if on]
    problems += [f"request_groups has no {kind.value!r} kind, which {why} needs"
                 for kind, why in needed
                 # A misspelt key already said "did you mean" this kind: one line is enough.
                 if kind not in cls.request_groups and kind not in suggested]
    return problems + _type_argument_problems(cls)


def _request_kind_problems(cls: type[BrokerAdapter[Any]]) -> tuple[list[str], set[str]]:
    """Problems with the keys and groups of ``request_groups``; the kinds suggested."""
    problems: list[str] = []
    kinds = [k.value for k in RequestKind]
    suggested: set[str] = set()
    for key, groups in cls.request_groups.items():
        if key not in kinds:
            close = difflib.get_close_matches(str(key), kinds, n=1)
            suggested.update(close)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(kinds)})"
            problems.append(f"request_groups has an unknown request kind {str(key)!r}{hint}")
            continue
        if not groups:
            problems.append(f"request_groups[{str(key)!r}] names no limit group")
        known = ", ".join(cls.limits) or "none"
        problems += [f"request_groups[{str(key)!r}] names limit group {group!r}, which "
                     f"limits does not have (it has {known})"
                     for group in groups if group not in cls.limits]
    return problems, suggested


def _type_argument_problems(cls: type[BrokerAdapter[Any]]) -> list[str]:
    """Whether ``Config`` is (a subclass of) the class's ``BrokerAdapter[...]`` argument."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, BrokerAdapter):
            wanted = get_args(base)[0]
            if isinstance(wanted, type) and not issubclass(cls.Config, wanted):
                return [f"Config is {cls.Config.__name__}, but the class is a "
                        f"BrokerAdapter[{wanted.__name__}]"]
    return []


def describe_body(text: str) -> str:
    """A short description of an error answer's body for a message (never a whole page)."""
    text = text.strip()
    if text.startswith("<"):
        return "an HTML error page"
    return text[:120] or "no body"


class ParseCache:
    """The snapshots of the last list answer, by the raw item they were read from.

    A list of thousands of open orders mostly repeats itself; an item equal to the one the
    same scope answered last time gives the same snapshot back without building Decimals
    and a new snapshot again (and the diff sees an identical object). One generation per
    scope: items that left the list leave the cache with the next answer.
    """

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, tuple[Any, OrderSnapshot]]] = {}
        self._fresh: dict[str, dict[str, tuple[Any, OrderSnapshot]]] = {}

    def get(self, scope: str, item_id: str, item: Any, parse: Callable[[], OrderSnapshot]
            ) -> OrderSnapshot:
        """The snapshot of ``item``: cached when the raw item is unchanged, else parsed."""
        fresh = self._fresh.setdefault(scope, {})
        cached = self._scopes.get(scope, {}).get(item_id)
        if cached is not None and cached[0] == item:
            snapshot = cached[1]
        else:
            snapshot = parse()
        fresh[item_id] = (item, snapshot)
        return snapshot

    def done(self, scope: str) -> None:
        """The list answer of ``scope`` is read: its items are the cache from now on."""
        self._scopes[scope] = self._fresh.pop(scope, {})


def secret_values(model: BaseModel) -> list[str]:
    """All non-empty ``SecretStr`` values inside a pydantic model (nested too)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(model)
    return found


def first_problem(errors: Sequence[str]) -> str:
    """The first of several per-item problems, with a count of the rest."""
    if not errors:
        return ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return errors[0] + more
