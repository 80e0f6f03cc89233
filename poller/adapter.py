"""The base every broker adapter builds on: config model, limit groups, list and fetch calls.

An adapter knows one broker's wire format and nothing else: it signs requests, reads answers
into canonical :class:`~poller.models.OrderSnapshot` objects through its status table, and
translates every failure into :mod:`poller.errors` at its edge. Scheduling, diffing, storing
and delivery belong to the daemon.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from poller.errors import BrokerRateLimited
from poller.httpclient import Answer, send
from poller.models import OrderSnapshot
from poller.ratelimit import LimitSpec, RateBudget

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
    enabled: bool = Field(default=True, description="Set false to keep the section but not poll.")
    per_order_polling: bool | None = Field(
        default=None,
        description="Poll every open order with the per-order call, round-robin at the "
                    "budget (default: the adapter's choice).",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")


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


class BrokerAdapter(ABC):
    """Base class of broker adapters.

    Subclasses set ``kind``, ``Config`` (a :class:`BrokerConfig` subclass), ``limits`` (the
    broker's documented limit groups) and ``request_groups`` (which groups each kind of
    request consumes), and implement :meth:`scopes`, :meth:`list_orders` and, where the
    broker has one, :meth:`fetch_order`.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[BrokerConfig]] = BrokerConfig
    limits: ClassVar[dict[str, LimitSpec]] = {}
    request_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    supports_fetch: ClassVar[bool] = False
    #: Poll every open order with the per-order call, round-robin at the budget (CoinW, whose
    #: list call is per pair); otherwise the per-order call only confirms orders that left a
    #: list answer, refreshes orders that just changed, and reads watched orders.
    per_order_polling: ClassVar[bool] = False
    #: Seconds after placement when the broker stops answering for an order (CoinW: 7 days);
    #: older open orders are retired with an operator event instead of polled for ever.
    retire_after: ClassVar[float | None] = None

    def __init__(
        self, name: str, config: BrokerConfig, client: httpx.AsyncClient, budget: RateBudget
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.budget = budget
        #: Whether this connection polls every open order (config, else the adapter default).
        self.polls_each_order = self.supports_fetch and (
            self.per_order_polling if config.per_order_polling is None
            else config.per_order_polling)

    @classmethod
    def secrets(cls, config: BrokerConfig) -> list[str]:
        """Every secret value in a config, for log redaction."""
        return secret_values(config)

    @classmethod
    def check(cls, config: BrokerConfig) -> list[tuple[str, str]]:
        """Extra problems with a validated config, as (key, message); none by default."""
        return []

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
        groups = self.request_groups.get("detail", ())
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

    async def request(self, kind: str, request: httpx.Request) -> Answer:
        """Send one request through the rate budget of the groups ``kind`` consumes."""
        groups = self.request_groups.get(kind, ())
        await self.budget.acquire(*groups)
        return await send(
            self.client, request, connection=self.name, deadline=self.config.timeout
        )

    def rate_limited(
        self, kind: str, message: str, *, code: str = "", retry_after: float | None = None,
        penalty: float = 60.0,
    ) -> BrokerRateLimited:
        """Pause the groups of ``kind`` and build the error to raise.

        The pause is the broker's ``retry_after`` when it gave one, else ``penalty``: long
        enough to leave the broker's own penalty window.
        """
        groups = self.request_groups.get(kind, ())
        pause = retry_after if retry_after is not None else penalty
        self.budget.pause(groups, pause)
        return BrokerRateLimited(
            message, connection=self.name, code=code, retry_after=pause
        )

    async def aclose(self) -> None:
        """Release the connection's resources."""
        await self.client.aclose()


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
