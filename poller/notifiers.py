"""The base every notifier builds on, and the HTTP outcome table they share.

A notifier turns one :class:`~poller.models.OrderEvent` into one message at one service. It
either returns (the service accepted) or raises a :mod:`poller.errors` delivery error that
says whether to retry. The outbox dispatcher owns retries, ordering and give-up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
)
from poller.httpclient import retry_after_seconds
from poller.models import OrderEvent

#: HTTP statuses worth retrying besides 5xx (RFC 9110: request timeout, too early, too many).
RETRY_STATUSES = frozenset({408, 425, 429})


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
    timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds per delivery.")


class Notifier(ABC):
    """Base class of notifiers; subclasses set ``kind`` and ``Config`` and implement send."""

    kind: ClassVar[str]
    Config: ClassVar[type[NotifierConfig]] = NotifierConfig
    #: False for notifiers that never talk HTTP (console): no client is built for them.
    uses_http: ClassVar[bool] = True

    def __init__(
        self, name: str, config: NotifierConfig, client: httpx.AsyncClient | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.client = client

    def accepts(self, event: OrderEvent) -> bool:
        """Whether this notifier's routing rules want ``event``."""
        cfg = self.config
        if cfg.event_types and event.event_type not in cfg.event_types:
            return False
        if cfg.scenes and event.scene not in cfg.scenes:
            return False
        return not (cfg.brokers and event.broker and event.broker not in cfg.brokers)

    @abstractmethod
    async def send(self, event: OrderEvent) -> None:
        """Deliver one event; return only once the service accepted it.

        :raises DeliveryRetryable: try again later (5xx, 408, 429, timeouts).
        :raises DeliveryFailed: the service refused for good.
        """

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
    try:
        response = await client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
        raise DeliveryRetryable(f"{service}: cannot connect ({type(err).__name__})") from None
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError,
            httpx.ReadError, httpx.WriteError) as err:
        raise DeliveryUncertain(
            f"{service}: no answer after sending ({type(err).__name__})"
        ) from None
    except httpx.HTTPError as err:
        raise DeliveryRetryable(f"{service}: request failed ({type(err).__name__})") from None
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
