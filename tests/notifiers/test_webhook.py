"""The webhook notifier against a real HTTP receiver: body, headers, signature, outcomes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from poller.errors import DeliveryFailed, DeliveryRateLimited, DeliveryRetryable
from poller.events import OrderEvent, system_event
from poller.models import SystemScene
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller_plugins.webhook import WebhookConfig, WebhookNotifier

NOW = datetime(2026, 5, 20, 3, 24, 31, tzinfo=UTC)
CANARY = "tok-canary-9b1e77"
EVENT: OrderEvent = system_event(SystemScene.ORDER_STALE, broker="tw", detected_at=NOW,
                                 discriminator="d", message="order gone")


@pytest.fixture
def server() -> SimServer:
    srv = SimServer("hook").start()
    yield srv  # type: ignore[misc]
    srv.stop()


def notifier(url: str, timeout: float = 2.0, **cfg: object) -> WebhookNotifier:
    config = WebhookConfig.model_validate({"kind": "webhook", "url": url, **cfg})
    return WebhookNotifier("hook", config, httpx.AsyncClient(timeout=timeout))


def deliver(hook: WebhookNotifier, event: OrderEvent = EVENT) -> None:
    """Send one event and close the notifier's client, whatever happens."""
    async def run() -> None:
        try:
            await hook.send(event)
        finally:
            await hook.aclose()

    asyncio.run(run())


OUTCOMES = [
    (200, None, None),
    (204, None, None),
    (400, None, DeliveryFailed),
    (401, None, DeliveryFailed),
    (404, None, DeliveryFailed),
    (408, None, DeliveryRetryable),
    (429, "7", DeliveryRateLimited),
    (500, None, DeliveryRetryable),
    (502, None, DeliveryRetryable),
    (503, None, DeliveryRetryable),
]


@pytest.mark.parametrize(("status", "retry_after", "error"), OUTCOMES)
def test_outcomes(server: SimServer, status: int, retry_after: str | None,
                  error: type[Exception] | None) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    server.route("POST", f"/{CANARY}/hook", lambda r: SimResponse(status, {"ok": False},
                                                                   headers=headers))
    hook = notifier(f"{server.url}/{CANARY}/hook")
    if error is None:
        deliver(hook)
        return
    with pytest.raises(error) as caught:
        deliver(hook)
    assert CANARY not in str(caught.value) and f"HTTP {status}" in str(caught.value)
    if retry_after:
        assert getattr(caught.value, "retry_after", None) == 7.0


def test_body_headers_and_signature(server: SimServer) -> None:
    seen: list[SimRequest] = []
    server.route("POST", "/hook", lambda r: (seen.append(r), SimResponse(200, {}))[1])
    hook = notifier(f"{server.url}/hook", secret="s3cret-key", headers={"X-Team": "desk-1"})
    deliver(hook)
    request = seen[0]
    assert json.loads(request.body) == EVENT.to_json()
    assert request.headers["x-poller-event-id"] == EVENT.id
    assert request.headers["x-team"] == "desk-1"
    expected = hmac.new(b"s3cret-key", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-poller-signature"] == "sha256=" + expected


@pytest.mark.parametrize("secret", ["s3cret-key", "whsec_" + base64.b64encode(b"k" * 24).decode()])
def test_standard_webhooks_verifies_with_the_stock_library(server: SimServer,
                                                           secret: str) -> None:
    """The ``standardwebhooks`` package (the spec's own Python verifier) is the oracle: it
    accepts our headers over the raw body, and refuses a replay outside its window."""
    seen: list[SimRequest] = []
    server.route("POST", "/hook", lambda r: (seen.append(r), SimResponse(200, {}))[1])
    deliver(notifier(f"{server.url}/hook", secret=secret))
    deliver(notifier(f"{server.url}/hook", secret=secret))  # a retry: same id, new timestamp
    first, retry = seen
    headers = {k: v for k, v in first.headers.items() if k.startswith("webhook-")}
    assert headers["webhook-id"] == EVENT.id == retry.headers["webhook-id"]
    assert headers["webhook-signature"].startswith("v1,")
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    assert Webhook(key).verify(first.body, headers) == EVENT.to_json()
    with pytest.raises(WebhookVerificationError):  # one byte changed
        Webhook(key).verify(first.body.replace(b"order gone", b"order Gone"), headers)
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(key).verify(first.body, stale)


def test_without_a_secret_the_id_and_timestamp_are_still_sent(server: SimServer) -> None:
    seen: list[SimRequest] = []
    server.route("POST", "/hook", lambda r: (seen.append(r), SimResponse(200, {}))[1])
    deliver(notifier(f"{server.url}/hook"))
    assert seen[0].headers["webhook-id"] == EVENT.id
    assert abs(int(seen[0].headers["webhook-timestamp"]) - time.time()) < 3600
    assert "webhook-signature" not in seen[0].headers


@pytest.mark.parametrize("name", ["Content-Type", "webhook-id", "X-Poller-Signature",
                                  "Webhook-Signature"])
def test_custom_headers_cannot_replace_poller_s_own(name: str) -> None:
    with pytest.raises(ValidationError, match="set by poller itself"):
        WebhookConfig.model_validate({"kind": "webhook", "url": "https://example.com/h",
                                      "headers": {name: "x"}})


def test_a_whsec_secret_must_be_base64() -> None:
    with pytest.raises(ValidationError, match="must be base64"):
        WebhookConfig.model_validate({"kind": "webhook", "url": "https://example.com/h",
                                      "secret": "whsec_"})


def test_connection_refused_is_retryable_and_hides_the_url(
        caplog: pytest.LogCaptureFixture) -> None:
    srv = SimServer("gone")
    port = srv.port
    srv._httpd.server_close()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DeliveryRetryable) as caught:
        deliver(notifier(f"http://127.0.0.1:{port}/{CANARY}"))
    assert CANARY not in str(caught.value) and "cannot connect" in str(caught.value)


def test_no_answer_after_sending_is_uncertain_and_retried(server: SimServer) -> None:
    def slow(_: SimRequest) -> SimResponse:
        time.sleep(0.5)
        return SimResponse(200, {})

    server.route("POST", "/slow", slow)
    with pytest.raises(DeliveryRetryable, match="no answer after sending"):
        deliver(notifier(f"{server.url}/slow", timeout=0.1))
