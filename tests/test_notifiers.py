"""The notifier base: every HTTP status classified (as Alertmanager's RetryTests table does),
network failures sorted without leaking the URL, routing rules, and the config checks."""

from __future__ import annotations

import asyncio
import socket
from http import HTTPStatus
from typing import ClassVar

import httpx
import pytest

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
    NotifierConfigError,
)
from poller.events import system_event
from poller.models import SystemScene
from poller.notifiers import RETRY_STATUSES, Notifier, NotifierConfig, classify, post
from poller.samples import sample_event
from poller.simulator.httpserver import SimResponse, SimServer
from tests.scripted import T0

SECRET_PATH = "/hook/T000-canary-9f3b"


def expected(status: int) -> type[Exception] | None:
    if 200 <= status < 300:
        return None
    if status == 429:
        return DeliveryRateLimited
    if status >= 500 or status in RETRY_STATUSES:
        return DeliveryRetryable
    return DeliveryFailed


@pytest.mark.parametrize("status", [s.value for s in HTTPStatus if s.value >= 200])
def test_every_http_status_is_classified(status: int) -> None:
    wanted = expected(status)
    if wanted is None:
        classify(status, service="svc")
        return
    with pytest.raises(wanted) as caught:
        classify(status, service="svc", retry_after=7.0, detail="  why  ")
    assert type(caught.value) is wanted
    assert str(caught.value) == f"svc: HTTP {status}: why"
    if isinstance(caught.value, DeliveryRetryable):
        assert caught.value.retry_after == 7.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_post_sorts_answers_and_network_failures_without_the_url() -> None:
    server = SimServer("svc")
    server.route("POST", SECRET_PATH, lambda r: SimResponse(
        404, raw=b"no such hook", headers={"Content-Type": "text/plain"}))
    server.route("POST", "/slow", lambda r: SimResponse(429, {}, headers={"Retry-After": "9"}))
    server.route("POST", "/hang", lambda r: SimResponse(200, {}, delay=2.0))
    server.start()

    async def run() -> list[Exception]:
        caught: list[Exception] = []
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as client:
            for url in (server.url + SECRET_PATH, server.url + "/slow", server.url + "/hang",
                        f"http://127.0.0.1:{closed_port()}/x"):
                try:
                    await post(client, client.build_request("POST", url, content=b"{}"),
                               service="svc")
                except Exception as err:  # collected and checked below
                    caught.append(err)
        return caught

    try:
        refused, limited, hung, down = asyncio.run(run())
    finally:
        server.stop()
    assert isinstance(refused, DeliveryFailed) and "HTTP 404: no such hook" in str(refused)
    assert isinstance(limited, DeliveryRateLimited) and limited.retry_after == 9.0
    assert isinstance(hung, DeliveryUncertain)  # sent, but no answer: maybe delivered
    assert type(down) is DeliveryRetryable and "cannot connect" in str(down)
    for err in (refused, limited, hung, down):
        assert "canary" not in str(err) and err.__context__ is None and err.__cause__ is None


class Plain(Notifier):
    kind: ClassVar[str] = "plain"


def test_routing_rules() -> None:
    fill = sample_event("FILLED")
    stale = system_event(SystemScene.ORDER_STALE, broker="other", message="m",
                         discriminator="1", detected_at=T0)

    def wants(**rules: object) -> tuple[bool, bool]:
        notifier = Plain("n", NotifierConfig(kind="plain", **rules))  # type: ignore[arg-type]
        return notifier.accepts(fill), notifier.accepts(stale)

    broker = fill.payload["broker"]
    assert wants() == (True, True)
    assert wants(scenes=["FINAL_FILLED"]) == (False, False)
    assert wants(event_types=["SYSTEM"]) == (False, True)
    assert wants(brokers=[broker]) == (True, True)  # operator events are not about a broker
    assert wants(brokers=["elsewhere"]) == (False, True)
    assert wants(symbols=[fill.payload["symbol"]], accounts=[fill.payload["account_id"]]) \
        == (True, True)
    assert wants(accounts=["nobody"]) == (False, True)


def test_a_notifier_refuses_a_config_of_another_class() -> None:
    class OtherConfig(NotifierConfig):
        pass

    class Picky(Notifier[OtherConfig]):
        kind: ClassVar[str] = "picky"
        Config: ClassVar[type[NotifierConfig]] = OtherConfig

    with pytest.raises(NotifierConfigError):
        Picky("p", NotifierConfig(kind="picky"))
    assert Picky("p", OtherConfig(kind="picky")).service == "picky p"


def test_a_notifier_without_send_says_so() -> None:
    async def run() -> None:
        await Plain("n", NotifierConfig(kind="plain")).send(sample_event("FILLED"))

    with pytest.raises(NotImplementedError, match="implements neither send nor send_message"):
        asyncio.run(run())
