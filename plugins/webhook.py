"""The ``webhook`` notifier: POSTs the event JSON (design.md §3) to a URL.

Receivers can deduplicate on the ``X-Poller-Event-Id`` header (the event id), and verify the
sender with ``X-Poller-Signature: sha256=<hex HMAC-SHA256 of the body>`` when a ``secret`` is
configured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from poller import DeliveryFailed, Notifier, NotifierConfig, OrderEvent, hookimpl, post


class WebhookConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "webhook"``."""

    kind: Literal["webhook"] = "webhook"
    url: SecretStr = Field(description="Where to POST (a secret: webhook URLs often are).")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (values are secrets)."
    )
    secret: SecretStr | None = Field(
        default=None, description="Key for the X-Poller-Signature HMAC-SHA256 header."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        url = httpx.URL(value.get_secret_value())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        return value


def sign(secret: str, body: bytes) -> str:
    """The ``X-Poller-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier(Notifier[WebhookConfig]):
    """POSTs each event's JSON."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[NotifierConfig]] = WebhookConfig

    def preview(self, event: OrderEvent) -> str:
        """The JSON body this notifier would POST."""
        return json.dumps(event.to_json(), indent=2, ensure_ascii=False)

    async def send(self, event: OrderEvent) -> None:
        """POST the event; 2xx is success, the rest is classified by status."""
        cfg = self.config
        if self.client is None:
            raise DeliveryFailed("webhook: no HTTP client")
        body = json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-Poller-Event-Id": event.id}
        headers.update({k: v.get_secret_value() for k, v in cfg.headers.items()})
        if cfg.secret is not None:
            headers["X-Poller-Signature"] = sign(cfg.secret.get_secret_value(), body)
        request = self.client.build_request(
            "POST", cfg.url.get_secret_value(), content=body, headers=headers
        )
        await post(self.client, request, service=self.service)


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the webhook notifier."""
    register(WebhookNotifier)
