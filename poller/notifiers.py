"""The base every notifier builds on, and the HTTP outcome table they share.

A notifier turns one :class:`~poller.models.OrderEvent` into one message at one service. It
either returns (the service accepted) or raises a :mod:`poller.errors` delivery error that
says whether to retry. The outbox dispatcher owns retries, ordering and give-up. The
service's soft limits are declared on the class (``pacing``) and kept by the base.
"""

from __future__ import annotations

from abc import ABC
from contextlib import asynccontextmanager
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypeVar

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
    NotifierConfigError,
    NotifierError,
)
from poller.events import OrderEvent
from poller.httpclient import retry_after_seconds, send_streaming
from poller.models import utcnow
from poller.pacing import DEFAULT_PAUSE, Pace, Pacer
from poller.templates import Message, Templates, digest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: HTTP statuses worth retrying besides 5xx (RFC 9110: request timeout, too early, too many).
RETRY_STATUSES = frozenset({408, 425, 429})


class QuietHours(BaseModel):
    """A daily window in which matching messages are held and sent as one digest at its end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(description='Local start, e.g. "22:00".')
    end: time = Field(description='Local end, e.g. "07:00" (may be after midnight).')
    timezone: str = Field(default="UTC", description='IANA zone, e.g. "Asia/Taipei".')
    break_through: list[str] = Field(
        default_factory=lambda: ["FINAL_FILLED", "PLACE_FAILED"],
        description="Scenes delivered at once even during quiet hours.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def end_of_quiet(self, now: datetime) -> datetime | None:
        """When the quiet window containing ``now`` ends, or ``None`` outside it."""
        local = now.astimezone(ZoneInfo(self.timezone))
        today_start = local.replace(hour=self.start.hour, minute=self.start.minute,
                                    second=self.start.second, microsecond=0)
        today_end = local.replace(hour=self.end.hour, minute=self.end.minute,
                                  second=self.end.second, microsecond=0)
        if self.start <= self.end:
            return today_end if today_start <= local < today_end else None
        if local >= today_start:  # e.g. 23:30 in a 22:00–07:00 window
            return today_end + timedelta(days=1)
        return today_end if local < today_end else None


class NotifierConfig(BaseModel):
    """Settings every ``[notifiers.NAME]`` table accepts; notifiers extend it."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    kind: str = Field(description="Which notifier to use (console, webhook, ...).")
    scenes: list[str] = Field(
        default_factory=list,
        description="Only these scene types (e.g. FINAL_FILLED); empty means all.",
    )
    brokers: list[str] = Field(
        default_factory=list, description="Only events of these broker connections."
    )
    event_types: list[Literal["TRADE", "SYSTEM"]] = Field(
        default_factory=list, description="TRADE (order events), SYSTEM (operator events)."
    )
    accounts: list[str] = Field(
        default_factory=list, description="Only events of these accounts."
    )
    symbols: list[str] = Field(default_factory=list, description="Only events of these symbols.")
    timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds per delivery.")
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Per-scene title templates (Jinja2), and 'body' for the message body.",
    )
    late_after: float = Field(
        default=300.0, ge=0, description="Mark messages delivered this many seconds late."
    )
    quiet_hours: QuietHours | None = Field(
        default=None, description="Hold messages in this window; one digest at its end."
    )
    coalesce_fills: float | None = Field(
        default=None, ge=0, le=300,
        description="Seconds to gather partial fills of one order into one message (0: one "
                    "message per fill). Default: 10 for chat and mail notifiers, 0 for "
                    "webhook and console. FINAL_FILLED and other events are never held.",
    )

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        problems = Templates.check(value)
        if problems:
            raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        return value


#: The config type of a notifier. Covariant, since a notifier only reads its config; the
#: default lets code that handles any notifier write plain ``Notifier``.
C = TypeVar("C", bound=NotifierConfig, default=NotifierConfig, covariant=True)


class Notifier(ABC, Generic[C]):
    """Base class of notifiers, generic over their config: ``Notifier[SlackConfig]``.

    Subclasses set ``kind`` and ``Config`` (the same class as the type argument) and
    implement :meth:`send_message` (deliver a rendered :class:`~poller.templates.Message`),
    or override :meth:`send` to deliver the raw event (the webhook does). A service with
    rate limits declares them in ``pacing`` and sends each message inside
    ``async with self.pace(target):``.
    """

    kind: ClassVar[str]
    #: A ClassVar cannot hold the type variable, so the config class is named twice;
    #: ``__init_subclass__`` checks that the two agree.
    Config: ClassVar[type[NotifierConfig]] = NotifierConfig
    #: False for notifiers that never talk HTTP (console): no client is built for them.
    uses_http: ClassVar[bool] = True
    #: The service's soft limits (see :class:`~poller.pacing.Pace`); none by default.
    pacing: ClassVar[tuple[Pace, ...]] = ()
    #: The longest pacing wait slept through inside one delivery; a longer one is handed
    #: back to the dispatcher. None: half of ``config.timeout``, well inside the
    #: dispatcher's time limit for a delivery (``timeout`` + 5 s).
    max_pacing_sleep: ClassVar[float | None] = None
    #: ``coalesce_fills`` when the config does not say: on for notifiers a person reads
    #: on a phone, off for machines (a webhook receiver wants every fill).
    coalesce_fills_default: ClassVar[float] = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Notifier):
                wanted = get_args(base)[0]
                if isinstance(wanted, type) and not issubclass(cls.Config, wanted):
                    raise TypeError(f"{cls.__name__}.Config is {cls.Config.__name__}, but the "
                                    f"class is a Notifier[{wanted.__name__}]")
        for pace in cls.pacing:
            if isinstance(pace.count, str) and pace.count not in cls.Config.model_fields:
                raise TypeError(f"{cls.__name__}.pacing names {pace.count!r}, which "
                                f"{cls.Config.__name__} does not have")

    def __init__(
        self, name: str, config: C, client: httpx.AsyncClient | None = None
    ) -> None:
        # Callers holding any notifier class pass a plain NotifierConfig (the registry
        # validated it with Config): the one runtime check the type argument needs.
        if not isinstance(config, type(self).Config):
            raise NotifierConfigError(f"notifier {name}: needs a {type(self).Config.__name__}, "
                                      f"got {type(config).__name__}")
        self.name = name
        self.config = config
        self.client = client
        self.templates = Templates(config.templates)
        try:
            self.pacer = Pacer(type(self).pacing, config, name=self.service)
        except ValueError as err:
            raise NotifierConfigError(f"notifier {name}: {err}") from None

    @property
    def coalesce_window(self) -> float:
        """Seconds partial fills of one order are gathered for (0: not at all)."""
        configured = self.config.coalesce_fills
        return type(self).coalesce_fills_default if configured is None else configured

    @property
    def service(self) -> str:
        """How errors name this notifier: ``slack desk`` (never by its URL)."""
        return f"{getattr(self, 'kind', type(self).__name__)} {self.name}"

    @asynccontextmanager
    async def pace(self, target: str | None = None) -> AsyncIterator[None]:
        """Send one message to ``target`` (a chat; None for the only one) in this block.

        Entering waits until the declared limits allow the message. A wait longer than
        :attr:`max_pacing_sleep` raises ``DeliveryRateLimited(retry_after=...)`` instead,
        and the dispatcher keeps the message queued until then. A ``DeliveryRateLimited``
        raised inside the block (the service's 429) pauses every bucket the message went
        through for its ``retry_after``, so the following messages wait as well.
        """
        longest = self.max_pacing_sleep
        await self.pacer.acquire(target, longest=self.config.timeout / 2 if longest is None
                                 else longest)
        try:
            yield
        except DeliveryRateLimited as err:
            self.pacer.pause(target, DEFAULT_PAUSE if err.retry_after is None
                             else err.retry_after)
            raise

    def accepts(self, event: OrderEvent) -> bool:
        """Whether this notifier's routing rules want ``event``."""
        cfg = self.config
        if cfg.event_types and event.event_type not in cfg.event_types:
            return False
        if cfg.scenes and event.scene not in cfg.scenes:
            return False
        if event.event_type == "SYSTEM":
            return True  # operator events are not about one account or symbol
        if cfg.brokers and event.broker not in cfg.brokers:
            return False
        if cfg.accounts and event.account_id not in cfg.accounts:
            return False
        return not (cfg.symbols and event.payload.get("symbol") not in cfg.symbols)

    def render(self, event: OrderEvent, now: datetime | None = None) -> Message:
        """The message for ``event`` from this notifier's templates."""
        return self.templates.render(event, now=now or utcnow(),
                                     late_after=self.config.late_after)

    def preview(self, event: OrderEvent) -> str:
        """What this notifier would send for ``event`` (``test-notify --dry-run``)."""
        return self.render(event).text

    async def send(self, event: OrderEvent) -> None:
        """Deliver one event; return only once the service accepted it.

        :raises DeliveryRetryable: try again later (5xx, 408, 429, timeouts).
        :raises DeliveryFailed: the service refused for good.
        """
        await self.send_message(self.render(event))

    async def send_message(self, message: Message) -> None:
        """Deliver one rendered message (same contract as :meth:`send`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither send nor "
                                  "send_message")

    async def send_digest(self, events: list[OrderEvent], *, title: str) -> None:
        """Deliver several held events as one message (end of quiet hours)."""
        now = utcnow()
        await self.send_message(digest([self.render(e, now) for e in events], title=title))

    async def aclose(self) -> None:
        """Release the notifier's resources."""
        if self.client is not None:
            await self.client.aclose()


async def post(
    client: httpx.AsyncClient, request: httpx.Request, *, service: str
) -> httpx.Response:
    """Send a delivery request and classify the outcome (never leaks the URL in errors).

    Service URLs often are secrets (Slack webhooks, Telegram bot tokens), so error texts
    name the service and the failure class, never the URL.
    """
    failure: NotifierError | None = None
    try:
        response = await send_streaming(client, request)
        try:
            await response.aread()
        finally:
            await response.aclose()
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
        failure = DeliveryRetryable(f"{service}: cannot connect ({type(err).__name__})")
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError,
            httpx.ReadError, httpx.WriteError) as err:
        failure = DeliveryUncertain(f"{service}: no answer after sending ({type(err).__name__})")
    except httpx.HTTPError as err:
        failure = DeliveryRetryable(f"{service}: request failed ({type(err).__name__})")
    if failure is not None:
        # Raised outside the except block: httpx's exception (whose request holds the URL,
        # maybe a token) must not even be reachable as __context__.
        raise failure
    classify(response.status_code, service=service,
             retry_after=retry_after_seconds(response.headers.get("retry-after")),
             detail=response.text[:200])
    return response


def classify(status: int, *, service: str, retry_after: float | None = None,
             detail: str = "") -> None:
    """Raise the delivery error an HTTP status means; return for 2xx."""
    if 200 <= status < 300:
        return
    text = f"{service}: HTTP {status}" + (f": {detail.strip()}" if detail.strip() else "")
    if status == 429:
        raise DeliveryRateLimited(text, retry_after=retry_after)
    if status >= 500 or status in RETRY_STATUSES:
        raise DeliveryRetryable(text, retry_after=retry_after)
    raise DeliveryFailed(text)
