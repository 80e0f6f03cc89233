"""The webhook notifier against a real HTTP receiver: body, headers, signature, outcomes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime

import httpx
import pytest

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
