"""The Slack notifier against a real HTTP receiver: Block Kit, escaping, outcomes, pacing.

Every delivery runs on a virtual-time loop (tests.notifiers.virtualtime): pacing waits take
no real time, and the receiver stamps arrivals with the same clock.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
)
from poller.events import system_event
from poller.models import SystemScene
from poller.settings import problems_from
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer, SlidingWindow
from poller.templates import Message
from poller_plugins.slack import (
    DEFAULT_PAUSE,
    SECTION_MAX,
    LogScrubber,
    SlackConfig,
    SlackNotifier,
    escape_mrkdwn,
    escaped_chunks,
    register_notifiers,
)
from tests.notifiers.helpers import NOW, deliver, leaked, order_event, reveals
from tests.notifiers.virtualtime import VirtualClock, run

CANARY = "canary-slack-7d41c9"
HOOK = f"/services/T0CANARY/B0CANARY/{CANARY}"




EVENT = order_event()


@pytest.fixture
def server() -> Iterator[SimServer]:
    srv = SimServer("slack")
    # Answer headers and body without waiting for a delayed ACK (Nagle): ~40 ms a request.
    srv._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, httpx and httpcore included (they log request URLs)."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def notifier(url: str, *, http_timeout: float = 60.0, **cfg: Any) -> SlackNotifier:
    """A notifier for ``url``. The HTTP client's time limit is at least the virtual loop's
    ``jump_below`` unless a test means it to run out."""
    config = SlackConfig.model_validate({"kind": "slack", "webhook_url": url, **cfg})
    return SlackNotifier("desk", config, httpx.AsyncClient(timeout=http_timeout))


def paced(server: SimServer) -> VirtualClock:
    """A virtual clock the receiver stamps arrivals with."""
    clock = VirtualClock()
    server.clock = clock
    return clock








# --- outcomes --------------------------------------------------------------------------

OUTCOMES: list[tuple[int, str, dict[str, str], type[Exception] | None, str]] = [
    (200, "ok", {}, None, ""),
    (400, "invalid_payload", {}, DeliveryFailed, "invalid_payload"),
    (400, "invalid_blocks", {}, DeliveryFailed, "invalid_blocks"),
    (403, "action_prohibited", {}, DeliveryFailed, "action_prohibited"),
    (404, "no_service", {}, DeliveryFailed, "no_service"),
    (404, "channel_not_found", {}, DeliveryFailed, "channel_not_found"),
    (410, "channel_is_archived", {}, DeliveryFailed, "channel_is_archived"),
    (408, "", {}, DeliveryRetryable, "HTTP 408"),
    (429, "rate_limited", {"Retry-After": "7"}, DeliveryRateLimited, "rate_limited"),
    (500, "rollup_error", {}, DeliveryRetryable, "HTTP 500"),
    (502, "", {}, DeliveryRetryable, "HTTP 502"),
    (503, "", {}, DeliveryRetryable, "HTTP 503"),
]


@pytest.mark.parametrize(("status", "body", "headers", "error", "text"), OUTCOMES,
                         ids=[f"{o[0]}-{o[1] or 'empty'}" for o in OUTCOMES])
def test_outcomes(server: SimServer, logs: pytest.LogCaptureFixture, status: int, body: str,
                  headers: dict[str, str], error: type[Exception] | None, text: str) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(
        status, raw=body.encode(), headers={"Content-Type": "text/plain", **headers}))
    [outcome] = deliver(notifier(server.url + HOOK), EVENT)
    assert len(server.requests(HOOK)) == 1
    if error is None:
        assert outcome is None
    else:
        assert type(outcome) is error, outcome
        assert text in str(outcome) and "slack desk" in str(outcome)
        assert not reveals(outcome, CANARY)
    if status == 429:
        assert isinstance(outcome, DeliveryRateLimited) and outcome.retry_after == 7.0
    assert not leaked(logs, CANARY)


def test_connection_refused_is_retryable_and_hides_the_url(
        logs: pytest.LogCaptureFixture) -> None:
    gone = SimServer("gone")
    port = gone.port
    gone._httpd.server_close()
    [outcome] = deliver(notifier(f"http://127.0.0.1:{port}{HOOK}"), EVENT)
    assert isinstance(outcome, DeliveryRetryable) and "cannot connect" in str(outcome)
    assert not reveals(outcome, CANARY) and not leaked(logs, CANARY)


def test_no_answer_after_sending_is_uncertain(server: SimServer,
                                              logs: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def hold(_: SimRequest) -> SimResponse:
        release.wait(5)  # answers only after the client gave up
        return SimResponse(200, raw=b"ok")

    server.route("POST", HOOK, hold)
    try:
        [outcome] = deliver(notifier(server.url + HOOK, http_timeout=0.2), EVENT)
    finally:
        release.set()
    assert isinstance(outcome, DeliveryUncertain), outcome
    assert "no answer after sending" in str(outcome)
    assert not reveals(outcome, CANARY) and not leaked(logs, CANARY)


# --- payload ---------------------------------------------------------------------------


def received(server: SimServer) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests(HOOK)]


def test_block_kit_payload_and_fallback_text(server: SimServer,
                                             logs: pytest.LogCaptureFixture) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    slack = notifier(server.url + HOOK, username="poller", icon_emoji=":chart:")
    message = slack.render(EVENT)
    assert deliver(slack, EVENT) == [None]
    [payload] = received(server)
    assert payload["username"] == "poller" and payload["icon_emoji"] == ":chart:"
    header, *sections, context = payload["blocks"]
    assert header == {"type": "header",
                      "text": {"type": "plain_text", "text": message.title, "emoji": True}}
    assert message.title == "tw-main: BUY 2 2890 filled @ 27.1"
    assert [s["type"] for s in sections] == ["section"]
    assert sections[0]["text"] == {"type": "mrkdwn", "text": message.body, "verbatim": True}
    assert context == {"type": "context", "elements": [
        {"type": "mrkdwn", "text": EVENT.short_id, "verbatim": True}]}
    assert payload["text"] == message.text
    assert EVENT.short_id in payload["text"]
    # The webhook URL appears in httpx's request line only in redacted form.
    lines = [r.getMessage() for r in logs.records if r.name == "httpx"]
    assert any("HTTP Request: POST" in line and "**********" in line for line in lines)
    assert not leaked(logs, CANARY)


ESCAPES = [
    ("<b>bold</b>", "&lt;b&gt;bold&lt;/b&gt;"),
    ("AT&T", "AT&amp;T"),
    ("<!channel> <@U123> <https://evil.example|click>",
     "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil.example|click&gt;"),
    ("&amp; stays literal", "&amp;amp; stays literal"),
    ("*_~`> no escape exists for these", "*_~`&gt; no escape exists for these"),
    ("", ""),
]


@pytest.mark.parametrize(("plain", "escaped"), ESCAPES)
def test_escape_mrkdwn(plain: str, escaped: str) -> None:
    assert escape_mrkdwn(plain) == escaped
    assert html.unescape(escaped) == plain


def test_broker_text_cannot_inject_markup(server: SimServer) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    event = system_event(SystemScene.ORDER_STALE, broker="tw<b>", detected_at=NOW,
                         discriminator="x", message="<!channel> filled & <b>done</b>")
    assert deliver(notifier(server.url + HOOK), event) == [None]
    [payload] = received(server)
    header, section, _ = payload["blocks"]
    assert header["text"]["text"] == "poller: ORDER_STALE (tw<b>)"  # plain_text: no markup
    assert section["text"]["text"].startswith("&lt;!channel&gt; filled &amp; &lt;b&gt;done")
    assert "<" not in payload["text"] and "<" not in section["text"]["text"]


def test_long_bodies_split_into_sections_without_cutting_entities(server: SimServer) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    body = "".join(f"line {i}: P&L <up> {'x' * (i % 50)}\n" for i in range(400))
    message = Message(title="T" * 200, body=body, short_id="#ABCD", scene="FILLED",
                      event_type="TRADE")
    assert deliver(notifier(server.url + HOOK), message) == [None]
    [payload] = received(server)
    header, *sections, _ = payload["blocks"]
    assert len(header["text"]["text"]) == 150 and header["text"]["text"].endswith("…")
    texts = [s["text"]["text"] for s in sections]
    assert len(texts) >= 3 and all(len(t) <= SECTION_MAX for t in texts)
    assert html.unescape("".join(texts)) == body
    for text in texts:  # every piece ends on a whole entity
        assert html.unescape(text) == text.replace("&amp;", "&").replace(
            "&lt;", "<").replace("&gt;", ">")
        assert text.count("&") == text.count(";")
    assert len(payload["blocks"]) <= 50 and len(payload["text"]) <= 3000


# --- pacing ----------------------------------------------------------------------------


def test_pacing_one_message_per_second_per_webhook(server: SimServer) -> None:
    clock = paced(server)
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    assert deliver(notifier(server.url + HOOK), *[EVENT] * 6, clock=clock) == [None] * 6
    arrivals = [r.arrived for r in server.requests(HOOK)]
    assert len(arrivals) == 6
    window = SlidingWindow(1, 1.0)  # Slack: about one message per second per webhook
    assert all(window.admit(t) for t in arrivals) and window.violations == 0
    assert arrivals[-1] - arrivals[0] < 6.0  # paced, not stalled: slept each wait through


def test_pacing_slower_when_configured(server: SimServer) -> None:
    clock = paced(server)
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    assert deliver(notifier(server.url + HOOK, per_second=0.5), *[EVENT] * 4,
                   clock=clock) == [None] * 4
    window = SlidingWindow(1, 2.0)
    assert all(window.admit(r.arrived) for r in server.requests(HOOK))


def test_a_wait_longer_than_half_the_timeout_is_handed_back(server: SimServer) -> None:
    # per_second 0.1: the next slot is 10 s away, more than timeout / 2 = 4 s.
    clock = paced(server)
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))

    async def scenario(slack: SlackNotifier) -> DeliveryRateLimited:
        try:
            await slack.send(EVENT)
            with pytest.raises(DeliveryRateLimited) as caught:
                await slack.send(EVENT)  # handed back at once, not slept on
            clock.advance(caught.value.retry_after or 0.0)  # the dispatcher waits, retries
            await slack.send(EVENT)
            return caught.value
        finally:
            await slack.aclose()

    held = run(scenario(notifier(server.url + HOOK, per_second=0.1, timeout=8.0)), clock)
    assert held.retry_after is not None and 10.0 <= held.retry_after <= 10.6
    assert "holding back" in str(held) and "per_second (0.1 per 1 s)" in str(held)
    first, second = (r.arrived for r in server.requests(HOOK))
    assert second - first >= 10.0


def test_429_pauses_the_webhook_for_retry_after(server: SimServer) -> None:
    clock = paced(server)
    answers = [SimResponse(429, raw=b"rate_limited", headers={"Retry-After": "4"})]
    server.route("POST", HOOK, lambda r: answers.pop(0) if answers
                 else SimResponse(200, raw=b"ok"))
    outcomes = deliver(notifier(server.url + HOOK), EVENT, EVENT, clock=clock)
    assert isinstance(outcomes[0], DeliveryRateLimited) and outcomes[0].retry_after == 4.0
    assert outcomes[1] is None  # 4 s is under timeout / 2: slept through
    first, second = (r.arrived for r in server.requests(HOOK))
    assert second - first >= 4.0


def test_a_429_without_retry_after_pauses_for_the_default(server: SimServer) -> None:
    clock = paced(server)
    server.route("POST", HOOK, lambda r: SimResponse(429, raw=b"rate_limited"))
    outcomes = deliver(notifier(server.url + HOOK), EVENT, EVENT, clock=clock)
    assert [getattr(o, "retry_after", None) for o in outcomes] == pytest.approx(
        [DEFAULT_PAUSE] * 2)
    assert "holding back" in str(outcomes[1]) and len(server.requests(HOOK)) == 1


def test_a_long_pause_is_handed_back_to_the_dispatcher(server: SimServer) -> None:
    clock = paced(server)
    answers = [SimResponse(429, raw=b"rate_limited", headers={"Retry-After": "60"})]
    server.route("POST", HOOK, lambda r: answers.pop(0) if answers
                 else SimResponse(200, raw=b"ok"))
    slack = notifier(server.url + HOOK)
    outcomes = deliver(slack, EVENT, EVENT, clock=clock)
    assert [type(o) for o in outcomes] == [DeliveryRateLimited, DeliveryRateLimited]
    held = outcomes[1]
    assert isinstance(held, DeliveryRateLimited) and held.retry_after is not None
    assert 55 <= held.retry_after <= 60 + 1e-6 and "holding back" in str(held)
    assert "a pause the service asked for" in str(held)
    assert len(server.requests(HOOK)) == 1  # nothing sent while paused


# --- configuration ---------------------------------------------------------------------

CONFIGS: list[tuple[dict[str, Any], str | None]] = [
    ({"webhook_url": f"https://hooks.slack.com{HOOK}"}, None),
    ({"webhook_url": f"https://hooks.slack-gov.com{HOOK}"}, None),
    ({"webhook_url": f"http://127.0.0.1:8080/relay/{CANARY}"}, None),
    ({"webhook_url": f"http://localhost/relay/{CANARY}"}, None),
    ({"webhook_url": f"http://hooks.slack.com{HOOK}"}, "Slack incoming-webhook URL"),
    ({"webhook_url": f"https://evil.example{HOOK}"}, "Slack incoming-webhook URL"),
    ({"webhook_url": f"https://hooks.slack.com/workflows/{CANARY}"}, "path /services/"),
    ({"webhook_url": "https://hooks.slack.com/services/"}, "path /services/"),
    ({"webhook_url": f"ftp://127.0.0.1/{CANARY}"}, "http:// or https://"),
    ({"webhook_url": f"https://hooks.slack.com{HOOK}", "per_second": 2}, "less than or equal"),
    ({"webhook_url": f"https://hooks.slack.com{HOOK}", "per_second": 0}, "greater than"),
    ({"webhook_url": f"https://hooks.slack.com{HOOK}", "icon_emoji": "chart"}, ":chart"),
    ({}, "required key is missing"),
]


@pytest.mark.parametrize(("table", "problem"), CONFIGS)
def test_config(table: dict[str, Any], problem: str | None) -> None:
    if problem is None:
        config = SlackConfig.model_validate({"kind": "slack", **table})
        assert CANARY not in repr(config) and CANARY not in str(config.model_dump())
        return
    with pytest.raises(ValidationError) as caught:
        SlackConfig.model_validate({"kind": "slack", **table})
    # What `poller check-config` prints: one line per problem, never a value.
    lines = [str(p) for p in problems_from(caught.value, "<test>", ("notifiers", "desk"))]
    assert any(problem in line and "notifiers.desk" in line for line in lines), lines
    assert CANARY not in str(caught.value) and not any(CANARY in line for line in lines)


def test_registers_the_notifier() -> None:
    registered: list[type[object]] = []
    register_notifiers(register=registered.append)
    assert registered == [SlackNotifier] and SlackNotifier.kind == "slack"


def test_payload_is_json_serialisable_for_every_scene(server: SimServer) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    events = [order_event(symbol="<x>&", message="m & <n>"),
              system_event(SystemScene.BROKER_AUTH_FAILED, broker="tw", detected_at=NOW,
                           discriminator="a", message="refused")]
    slack = notifier(server.url + HOOK)  # paced on the virtual clock: no real wait
    assert deliver(slack, *events) == [None, None]
    for request in server.requests(HOOK):
        payload = json.loads(request.body)
        assert request.headers["content-type"] == "application/json"
        assert payload["blocks"][0]["type"] == "header"


def test_a_huge_body_is_cut_to_slacks_50_blocks(server: SimServer) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    body = "&" * (60 * SECTION_MAX)  # every character escapes to five
    message = Message(title="T", body=body, short_id="#ABCD", scene="FILLED",
                      event_type="TRADE")
    assert deliver(notifier(server.url + HOOK), message) == [None]
    [payload] = received(server)
    blocks = payload["blocks"]
    assert len(blocks) == 50 and blocks[-1]["type"] == "context"
    last = blocks[-2]["text"]["text"]
    assert last.endswith("\n… (truncated)") and len(last) <= SECTION_MAX
    assert last.removesuffix("\n… (truncated)").replace("&amp;", "") == ""


def test_digest_message_without_short_id(server: SimServer) -> None:
    server.route("POST", HOOK, lambda r: SimResponse(200, raw=b"ok"))
    digest = Message(title="3 messages held", body="• a <1>\n• b", short_id="",
                     scene="DIGEST", event_type="DIGEST")
    assert deliver(notifier(server.url + HOOK), digest) == [None]
    [payload] = received(server)
    assert [b["type"] for b in payload["blocks"]] == ["header", "section"]
    assert payload["blocks"][1]["text"]["text"] == "• a &lt;1&gt;\n• b"


def test_preview_is_the_json_body() -> None:
    slack = notifier(f"https://hooks.slack.com{HOOK}")
    try:
        preview = json.loads(slack.preview(EVENT))
    finally:
        asyncio.run(slack.aclose())
    assert preview["blocks"][0]["text"]["text"] == slack.render(EVENT).title
    assert CANARY not in json.dumps(preview)


def test_without_a_client_nothing_is_sent() -> None:
    config = SlackConfig.model_validate({"kind": "slack",
                                         "webhook_url": f"http://127.0.0.1{HOOK}"})
    slack = SlackNotifier("desk", config, None)
    [outcome] = deliver(slack, EVENT)
    assert isinstance(outcome, DeliveryFailed) and "no HTTP client" in str(outcome)


def test_an_unparseable_url_is_refused_without_echo() -> None:
    with pytest.raises(ValidationError) as caught:
        SlackConfig.model_validate({"kind": "slack", "webhook_url": f"http://\x00{CANARY}/"})
    lines = [str(p) for p in problems_from(caught.value, "<test>", ("notifiers", "desk"))]
    assert lines == ["<test>: notifiers.desk.webhook_url: not a URL"]
    assert CANARY not in str(caught.value)


def test_closing_removes_the_httpx_log_filter(server: SimServer) -> None:
    slack = notifier(server.url + HOOK)
    assert any(isinstance(f, LogScrubber) for f in logging.getLogger("httpx").filters)
    asyncio.run(slack.aclose())
    assert not any(isinstance(f, LogScrubber) for f in logging.getLogger("httpx").filters)


def test_the_split_look_back_is_measured_in_characters() -> None:
    """A newline 1 000 characters back (of '&', 5 each escaped) is beyond the final quarter
    of a 3 000-character section: the cut must not go back there."""
    text = "a" * 10 + "\n" + "&" * 1000
    first, *_ = escaped_chunks(text, SECTION_MAX)
    assert len(first) >= SECTION_MAX - 5  # cut near the limit, not at the early newline
    # A newline within the final quarter is still preferred.
    near = "b" * 2500 + "\n" + "c" * 1000
    assert escaped_chunks(near, SECTION_MAX)[0] == "b" * 2500 + "\n"


def test_no_section_is_only_whitespace() -> None:
    text = "x" * 2999 + "\n" * 3000 + "y"
    chunks = escaped_chunks(text, SECTION_MAX)
    assert all(chunk.strip() for chunk in chunks)
    assert "".join(chunks).replace("\n", "") == "x" * 2999 + "y"
