"""The ``webhook`` notifier: POSTs the event JSON (design.md §3) to a URL.

Every request follows `Standard Webhooks <https://www.standardwebhooks.com/>`_, so receivers
can use its stock verifiers: ``webhook-id`` (the event id: a dedupe key, the same on every
retry), ``webhook-timestamp`` (Unix seconds of this attempt: a replay window) and, with a
``secret``, ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``. The key is
the secret's bytes, or — for a secret written ``whsec_<base64>`` as Standard Webhooks issues
them — the decoded base64. Verify over the raw body bytes, before parsing the JSON.

For receivers written against earlier versions, ``X-Poller-Event-Id`` and
``X-Poller-Signature: sha256=<hex HMAC-SHA256 of the body>`` are still sent. Custom
``headers`` cannot replace any of these or ``Content-Type``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
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

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        taken = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by poller itself (the body's type, "
                             "its id and signatures), so it cannot be a custom header")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            signing_key(value.get_secret_value())  # a whsec_ secret must be base64
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        url = httpx.URL(value.get_secret_value())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        return value


#: Headers poller sets on every request (lower-case); custom headers cannot replace them.
RESERVED_HEADERS = frozenset({"content-type", "webhook-id", "webhook-timestamp",
                              "webhook-signature", "x-poller-event-id", "x-poller-signature"})


def sign(secret: str, body: bytes) -> str:
    """The ``X-Poller-Signature`` value for ``body`` (the header of earlier versions)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signing_key(secret: str) -> bytes:
    """The Standard Webhooks key: ``whsec_<base64>`` decoded, else the secret's bytes.

    :raises ValueError: a ``whsec_`` secret that is not base64.
    """
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("a secret written whsec_… must be base64 after the prefix") from None
    if not key:
        raise ValueError("a secret written whsec_… must be base64 after the prefix")
    return key


def standard_signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``"{id}.{timestamp}." + body``."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


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
        # Custom headers first, so poller's own always win (the config refuses them anyway).
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        timestamp = int(time.time())
        headers.update({"Content-Type": "application/json", "X-Poller-Event-Id": event.id,
                        "webhook-id": event.id, "webhook-timestamp": str(timestamp)})
        if cfg.secret is not None:
            secret = cfg.secret.get_secret_value()
            headers["webhook-signature"] = standard_signature(signing_key(secret), event.id,
                                                              timestamp, body)
            headers["X-Poller-Signature"] = sign(secret, body)
        request = self.client.build_request(
            "POST", cfg.url.get_secret_value(), content=body, headers=headers
        )
        await post(self.client, request, service=self.service)


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the webhook notifier."""
    register(WebhookNotifier)
