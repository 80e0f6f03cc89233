"""The Apprise notifier: apprise really POSTs (json://) to a loopback receiver.

Every URL carries a canary: it must never show up in a log line (apprise and urllib3 at
DEBUG included), in a configuration problem, or in the text, repr or traceback of an error.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apprise
import pytest
from pydantic import ValidationError

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    NotifierConfigError,
)
from poller.events import system_event
from poller.models import SystemScene
from poller.settings import problems_from
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer
from poller.templates import Message
from poller_plugins.apprise_notifier import (
    INSTALL_HINT,
    AppriseConfig,
    AppriseNotifier,
    LogScrubber,
    register_notifiers,
    url_fragments,
)
from tests.notifiers.helpers import NOW, deliver, leaked, order_event, reveals

# apprise loads its plugins lazily; its e-mail plugin imports the deprecated stdlib imghdr
# (a third-party warning that the suite's filterwarnings=error would turn into a failure).
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

CANARY = "canaryApprise5e8f1"




EVENT = order_event()


class Receiver:
    """Loopback JSON receivers at /a/<canary> and /b/<canary>; scripted failures per path."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.script: dict[str, list[SimResponse]] = {}
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        for name in ("a", "b"):
            server.route("POST", self.path(name), self._handle)

    @staticmethod
    def path(name: str) -> str:
        return f"/{name}/{CANARY}"

    def url(self, name: str) -> str:
        return f"json://127.0.0.1:{self.server.port}{self.path(name)}"

    def _handle(self, request: SimRequest) -> SimResponse:
        queue = self.script.get(request.path)
        if queue:
            return queue.pop(0)
        self.accepted.append((request.path, request.json()))
        return SimResponse(200, {"ok": True})

    def fail(self, name: str, *answers: SimResponse) -> None:
        self.script.setdefault(self.path(name), []).extend(answers)

    def hits(self) -> Counter[str]:
        return Counter(r.path.split("/")[1] for r in self.server.requests())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = SimServer("apprise-receiver")
    # Answer headers and body without waiting for a delayed ACK (Nagle): ~40 ms a request.
    server._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    server.start()
    yield Receiver(server)
    server.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, apprise and urllib3 included (they log URLs and paths)."""
    caplog.set_level(logging.DEBUG)
    for name in ("apprise", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def notifier(*urls: str, **cfg: Any) -> AppriseNotifier:
    config = AppriseConfig.model_validate({"kind": "apprise", "urls": list(urls),
                                           "late_after": 10**9, **cfg})
    return AppriseNotifier("phone", config)








# --- delivery --------------------------------------------------------------------------


def test_success_posts_title_and_body(receiver: Receiver, logs: pytest.LogCaptureFixture
                                      ) -> None:
    notif = notifier(receiver.url("a"))
    message = notif.render(EVENT)
    assert deliver(notif, EVENT) == [None]
    [(path, body)] = receiver.accepted
    assert path == receiver.path("a")
    assert body["title"] == message.title and body["message"] == message.body
    assert EVENT.short_id in body["message"] and body["type"] == "info"
    # apprise and urllib3 did log about the request, with the URL parts redacted.
    names = {r.name for r in logs.records}
    assert "apprise" in names and any(n.startswith("urllib3") for n in names)
    assert any("JSON POST URL" in r.getMessage() and "**********" in r.getMessage()
               for r in logs.records)
    assert not leaked(logs, CANARY)


def test_broker_text_reaches_apprise_unchanged(receiver: Receiver) -> None:
    # Plain text in (body_format=text); apprise converts it for each service's own markup.
    event = system_event(SystemScene.ORDER_STALE, broker="tw", detected_at=NOW,
                         discriminator="x", message="<b>P&L</b> *_[x]")
    assert deliver(notifier(receiver.url("a")), event) == [None]
    [(_, body)] = receiver.accepted
    assert body["message"].startswith("<b>P&L</b> *_[x]")


FAILURES = [
    ("server-error", SimResponse(500, {"error": "boom"})),
    ("bad-request", SimResponse(400, {"error": "bad"})),
    ("unauthorized", SimResponse(401, {"error": "no"})),
    ("not-found", SimResponse(404, {"error": "no such hook"})),
    ("rate-limited", SimResponse(429, {"error": "slow"}, headers={"Retry-After": "5"})),
    ("timeout", SimResponse(408, {"error": "slow client"})),
    ("unavailable", SimResponse(503, raw=b"<html>down</html>")),
]


#: What each answer becomes, as for every other notifier (the status read from apprise's log).
OUTCOME = {"server-error": DeliveryRetryable, "bad-request": DeliveryFailed,
           "unauthorized": DeliveryFailed, "not-found": DeliveryFailed,
           "rate-limited": DeliveryRateLimited, "timeout": DeliveryRetryable,
           "unavailable": DeliveryRetryable}


@pytest.mark.parametrize("answer", [f[1] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_refusals_are_classified_like_every_notifier(
        receiver: Receiver, logs: pytest.LogCaptureFixture, answer: SimResponse,
        request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.id
    receiver.fail("a", answer)
    [outcome] = deliver(notifier(receiver.url("a")), EVENT)
    assert type(outcome) is OUTCOME[name]
    assert f"apprise phone: urls.0: not delivered (HTTP {answer.status})" in str(outcome)
    assert not reveals(outcome, CANARY) and not leaked(logs, CANARY)


def test_a_permanent_refusal_at_one_url_and_an_outage_at_another_is_retried(
        receiver: Receiver) -> None:
    receiver.fail("a", SimResponse(404, {"error": "gone"}))
    receiver.fail("b", SimResponse(503, {"error": "down"}))
    [outcome] = deliver(notifier(receiver.url("a"), receiver.url("b")), EVENT)
    assert type(outcome) is DeliveryRetryable
    assert "urls.0: not delivered (HTTP 404)" in str(outcome) and "(HTTP 503)" in str(outcome)


def test_connection_refused_is_retryable(logs: pytest.LogCaptureFixture) -> None:
    gone = SimServer("gone")
    port = gone.port
    gone._httpd.server_close()
    [outcome] = deliver(notifier(f"json://127.0.0.1:{port}/a/{CANARY}"), EVENT)
    assert type(outcome) is DeliveryRetryable and "not delivered" in str(outcome)
    assert not reveals(outcome, CANARY) and not leaked(logs, CANARY)
    # urllib3's exception text (with the path) was logged by apprise, redacted.
    assert any("Socket Exception" in r.getMessage() for r in logs.records)


def test_an_exception_inside_apprise_is_retryable_and_hides_its_text(
        receiver: Receiver, logs: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: apprise.Apprise, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError(f"failed for json://127.0.0.1/a/{CANARY}")

    monkeypatch.setattr(apprise.Apprise, "notify", explode)
    [outcome] = deliver(notifier(receiver.url("a")), EVENT)
    assert type(outcome) is DeliveryRetryable
    assert "urls.0: apprise raised RuntimeError" in str(outcome)
    assert outcome.__context__ is None and not reveals(outcome, CANARY)


def test_several_urls_and_a_retry_only_where_it_failed(receiver: Receiver) -> None:
    receiver.fail("b", SimResponse(502, {"error": "gateway"}))
    notif = notifier(receiver.url("a"), receiver.url("b"))
    outcomes = deliver(notif, EVENT, EVENT)
    assert isinstance(outcomes[0], DeliveryRetryable) and "urls.1" in str(outcomes[0])
    assert "urls.0" not in str(outcomes[0]) and outcomes[1] is None
    assert receiver.hits() == {"a": 1, "b": 2}
    assert [path.split("/")[1] for path, _ in receiver.accepted] == ["a", "b"]
    # The retry carried the same text as the first attempt.
    assert receiver.accepted[0][1]["message"] == receiver.accepted[1][1]["message"]


def test_a_new_delivery_of_a_delivered_event_is_sent_again(receiver: Receiver) -> None:
    notif = notifier(receiver.url("a"), receiver.url("b"))
    assert deliver(notif, EVENT, EVENT) == [None, None]
    assert receiver.hits() == {"a": 2, "b": 2}


def test_digest_messages(receiver: Receiver) -> None:
    message = Message(title="3 messages held", body="• a\n• b", short_id="", scene="DIGEST",
                      event_type="DIGEST")
    assert deliver(notifier(receiver.url("a")), message) == [None]
    [(_, body)] = receiver.accepted
    assert body["title"] == "3 messages held" and body["message"] == "• a\n• b"


# --- configuration ---------------------------------------------------------------------

CONFIGS: list[tuple[list[str] | str, str | None, str]] = [
    ([f"json://127.0.0.1:9/a/{CANARY}"], None, ""),
    ([f"jsons://hooks.example/{CANARY}", f"tgram://123456:{CANARY}/4242"], None, ""),
    (f"json://127.0.0.1/a/{CANARY}\njson://127.0.0.1/b/{CANARY}", None, ""),
    ([f"json://127.0.0.1/a/{CANARY}", f"nosuchservice://{CANARY}"], "urls.1", "Apprise"),
    ([f"not a url {CANARY}"], "urls.0", "Apprise"),
    ([f"http://example.com/{CANARY}"], "urls.0", "Apprise"),
    ([], "urls", "at least 1"),
]


@pytest.mark.parametrize(("urls", "key", "problem"), CONFIGS)
def test_config(logs: pytest.LogCaptureFixture, urls: list[str] | str, key: str | None,
                problem: str) -> None:
    if key is None:
        config = AppriseConfig.model_validate({"kind": "apprise", "urls": urls})
        assert len(config.urls) == (2 if isinstance(urls, str) else len(urls))
        assert CANARY not in repr(config) and CANARY not in str(config.model_dump())
    else:
        with pytest.raises(ValidationError) as caught:
            AppriseConfig.model_validate({"kind": "apprise", "urls": urls})
        lines = [str(p) for p in problems_from(caught.value, "<test>", ("notifiers", "phone"))]
        assert any(f"notifiers.phone.{key}:" in line and problem in line for line in lines)
        assert CANARY not in str(caught.value) and not any(CANARY in line for line in lines)
    # apprise's own "Unsupported URL: …" error line was redacted too.
    assert not leaked(logs, CANARY)


def test_without_apprise_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise -> ImportError
    with pytest.raises(ValidationError) as caught:
        AppriseConfig.model_validate({"kind": "apprise", "urls": [f"json://h/{CANARY}"]})
    assert "pip install '.[apprise]'" in str(caught.value)
    [problem] = problems_from(caught.value, "<test>", ("notifiers", "phone"))
    assert problem.key == "notifiers.phone" and problem.message == INSTALL_HINT
    assert CANARY not in str(caught.value)


FRAGMENTS = [
    (f"json://127.0.0.1:8080/hooks/{CANARY}?x=1", [CANARY, "127.0.0.1", "/hooks/" + CANARY]),
    (f"tgram://123456:{CANARY}/4242", ["123456", CANARY]),
    ("mailto://user:pw12@example.com", ["pw12", "example.com"]),
    (f"json://h/a%2F{CANARY}", [f"a%2F{CANARY}", f"a/{CANARY}"]),
]


@pytest.mark.parametrize(("url", "parts"), FRAGMENTS)
def test_url_fragments(url: str, parts: list[str]) -> None:
    found = url_fragments(url)
    assert url in found
    for part in parts:
        assert any(part in fragment for fragment in found), part
    assert "json" not in found and "tgram" not in found


def test_registers_the_notifier() -> None:
    registered: list[type[object]] = []
    register_notifiers(register=registered.append)
    assert registered == [AppriseNotifier] and AppriseNotifier.kind == "apprise"
    assert AppriseNotifier.uses_http is False  # apprise has its own HTTP stack


def test_building_without_apprise_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = AppriseConfig.model_validate({"kind": "apprise",
                                           "urls": [f"json://127.0.0.1/a/{CANARY}"]})
    monkeypatch.setitem(sys.modules, "apprise", None)  # uninstalled after validation
    with pytest.raises(NotifierConfigError, match=r"pip install '\.\[apprise\]'"):
        AppriseNotifier("phone", config)


def test_a_url_apprise_stops_accepting_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture) -> None:
    config = AppriseConfig.model_validate({"kind": "apprise",
                                           "urls": [f"json://127.0.0.1/a/{CANARY}"]})
    monkeypatch.setattr(apprise.Apprise, "instantiate", staticmethod(lambda *a, **k: None))
    with pytest.raises(NotifierConfigError, match="urls.0") as caught:
        AppriseNotifier("phone", config)
    assert not reveals(caught.value, CANARY)
    assert not any(isinstance(f, LogScrubber)
                   for f in logging.getLogger("apprise").filters)  # nothing left behind


def test_memory_of_partial_deliveries_is_bounded(receiver: Receiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("poller_plugins.apprise_notifier.PENDING_MAX", 1)
    first = system_event(SystemScene.ORDER_STALE, broker="tw", detected_at=NOW,
                         discriminator="1", message="one")
    second = system_event(SystemScene.ORDER_STALE, broker="tw", detected_at=NOW,
                          discriminator="2", message="two")
    receiver.fail("b", SimResponse(500, {}), SimResponse(500, {}))
    outcomes = deliver(notifier(receiver.url("a"), receiver.url("b")), first, second, first)
    assert [type(o) for o in outcomes] == [DeliveryRetryable, DeliveryRetryable, type(None)]
    # The first message was forgotten (bound of 1), so its retry reached "a" again.
    assert receiver.hits() == {"a": 3, "b": 3}


def test_closing_removes_the_log_filters(receiver: Receiver) -> None:
    notif = notifier(receiver.url("a"))
    assert any(isinstance(f, LogScrubber) for f in logging.getLogger("apprise").filters)
    asyncio.run(notif.aclose())
    for name in ("apprise", "urllib3.connectionpool"):
        assert not any(isinstance(f, LogScrubber) for f in logging.getLogger(name).filters)
