"""The Telegram notifier against a real Bot API stand-in: markup, splitting, chats, pacing.

The bot token is a canary: it must never show up in a log line (httpx and httpcore at DEBUG
included) or in the text, repr or traceback of any error. Every delivery runs on a
virtual-time loop (tests.notifiers.virtualtime): pacing waits take no real time, and the
stand-in stamps arrivals with the same clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from poller.errors import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
)
from poller.events import OrderEvent, system_event
from poller.models import SystemScene
from poller.settings import problems_from
from poller.simulator.httpserver import SimRequest, SimResponse, SimServer, SlidingWindow
from poller.templates import Message
from poller_plugins.telegram import (
    MARKDOWN_V2_SPECIAL,
    MAX_LENGTH,
    LogScrubber,
    TelegramConfig,
    TelegramNotifier,
    escape_html,
    escape_markdown_v2,
    register_notifiers,
    render_parts,
    units,
)
from tests.notifiers.helpers import NOW, deliver, leaked, order_event, reveals
from tests.notifiers.virtualtime import VirtualClock, run

SECRET = "canary-TG_9f3a2b7c1d0e"
TOKEN = f"123456789:{SECRET}"
PATH = f"/bot{TOKEN}/sendMessage"




def stale_event(n: int, message: str = "order gone") -> OrderEvent:
    return system_event(SystemScene.ORDER_STALE, broker="tw", detected_at=NOW,
                         discriminator=str(n), message=message)


EVENT = order_event()


def api_error(code: int, description: str, **parameters: Any) -> SimResponse:
    """A Bot API error answer."""
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return SimResponse(code, body)


class BotApi:
    """A Bot API stand-in on a real loopback server: scripted answers per chat, else ok."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.script: dict[str, list[SimResponse]] = {}
        self.accepted: list[tuple[str, str]] = []
        server.route("POST", PATH, self._send_message)

    def _send_message(self, request: SimRequest) -> SimResponse:
        data = request.json()
        queue = self.script.get(str(data["chat_id"]))
        if queue:
            return queue.pop(0)
        self.accepted.append((str(data["chat_id"]), data["text"]))
        return SimResponse(200, {"ok": True, "result": {"message_id": len(self.accepted)}})

    def fail(self, chat: str, *answers: SimResponse) -> None:
        self.script.setdefault(chat, []).extend(answers)

    def requests(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.server.requests(PATH)]

    def texts(self, chat: str) -> list[str]:
        return [text for c, text in self.accepted if c == chat]


@pytest.fixture
def server() -> Iterator[SimServer]:
    srv = SimServer("telegram")
    # Answer headers and body without waiting for a delayed ACK (Nagle): ~40 ms a request.
    srv._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server: SimServer) -> BotApi:
    return BotApi(server)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, httpx and httpcore included (httpx logs request URLs)."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def notifier(base: str, *, chats: tuple[str, ...] = ("4242",), http_timeout: float = 60.0,
             **cfg: Any) -> TelegramNotifier:
    """A notifier for the stand-in at ``base``. The HTTP client's time limit is at least the
    virtual loop's ``jump_below`` unless a test means it to run out."""
    config = TelegramConfig.model_validate({
        "kind": "telegram", "bot_token": TOKEN, "chat_ids": list(chats), "api_base": base,
        "late_after": 10**9, **cfg})
    return TelegramNotifier("tg", config, httpx.AsyncClient(timeout=http_timeout))


def paced(server: SimServer) -> VirtualClock:
    """A virtual clock the stand-in stamps arrivals with."""
    clock = VirtualClock()
    server.clock = clock
    return clock








# --- outcomes --------------------------------------------------------------------------

OUTCOMES: list[tuple[str, SimResponse, type[Exception], str, float | None]] = [
    ("parse-error", api_error(400, "Bad Request: can't parse entities: Can't find end of the "
                              "entity starting at byte offset 12"),
     DeliveryFailed, "can't parse entities", None),
    ("chat-not-found", api_error(400, "Bad Request: chat not found"),
     DeliveryFailed, "chat not found", None),
    ("blocked", api_error(403, "Forbidden: bot was blocked by the user"),
     DeliveryFailed, "bot was blocked by the user", None),
    ("kicked", api_error(403, "Forbidden: bot was kicked from the group chat"),
     DeliveryFailed, "bot was kicked", None),
    ("unauthorized", api_error(401, "Unauthorized"), DeliveryFailed, "refused the bot token",
     None),
    ("not-found", api_error(404, "Not Found"), DeliveryFailed, "refused the bot token", None),
    ("flood", api_error(429, "Too Many Requests: retry after 5", retry_after=5),
     DeliveryRateLimited, "Too Many Requests: retry after 5", 5.0),
    ("flood-huge", api_error(429, "Too Many Requests: retry after 99999999",
                             retry_after=99999999),
     DeliveryRateLimited, "retry after 99999999", 3600.0),  # clamped to an hour
    ("flood-infinite", SimResponse(429, raw=b'{"ok": false, "error_code": 429, '
                                        b'"description": "slow", "parameters": '
                                        b'{"retry_after": 1e400}}'),
     DeliveryRateLimited, "slow", 30.0),  # garbage: the default pause
    ("flood-header", SimResponse(429, raw=b"slow down", headers={"Retry-After": "4"}),
     DeliveryRateLimited, "slow down", 4.0),
    ("migrated", api_error(400, "Bad Request: group chat was upgraded to a supergroup chat",
                           migrate_to_chat_id=-1001234567890),
     DeliveryFailed, "use chat id -1001234567890", None),
    ("server-error", api_error(500, "Internal Server Error"), DeliveryRetryable,
     "Internal Server Error", None),
    ("bad-gateway", SimResponse(502, raw=b"<html>Bad Gateway</html>",
                                headers={"Content-Type": "text/html"}),
     DeliveryRetryable, "HTTP 502", None),
    ("gateway-timeout", api_error(504, "Gateway Timeout"), DeliveryRetryable, "HTTP 504",
     None),
    ("ok-false", SimResponse(200, {"ok": False}), DeliveryUncertain, "not ok", None),
    ("not-json", SimResponse(200, raw=b"<html>hi</html>"), DeliveryUncertain, "not ok", None),
]


@pytest.mark.parametrize(("answer", "error", "text", "retry_after"),
                         [o[1:] for o in OUTCOMES], ids=[o[0] for o in OUTCOMES])
def test_outcomes(server: SimServer, api: BotApi, logs: pytest.LogCaptureFixture,
                  answer: SimResponse, error: type[Exception], text: str,
                  retry_after: float | None) -> None:
    api.fail("4242", answer)
    [outcome] = deliver(notifier(server.url), EVENT)
    assert type(outcome) is error, outcome
    assert text in str(outcome) and "telegram tg: chat 4242" in str(outcome)
    assert getattr(outcome, "retry_after", None) == retry_after
    assert not reveals(outcome, SECRET) and not leaked(logs, SECRET)


def test_success_request(server: SimServer, api: BotApi, logs: pytest.LogCaptureFixture
                         ) -> None:
    tg = notifier(server.url, disable_notification=True)
    message = tg.render(EVENT)
    assert deliver(tg, EVENT) == [None]
    [request] = api.requests()
    assert request == {
        "chat_id": "4242",
        "text": f"<b>{escape_html(message.title)}</b>\n{escape_html(message.body)}",
        "parse_mode": "HTML",
        "disable_notification": True,
        "link_preview_options": {"is_disabled": True},
    }
    assert EVENT.short_id in request["text"]
    # httpx's request line is there, with the token redacted.
    lines = [r.getMessage() for r in logs.records if r.name == "httpx"]
    assert any("HTTP Request: POST" in line and "/bot**********/sendMessage" in line
               for line in lines), lines
    assert not leaked(logs, SECRET)


def test_unknown_path_echoed_by_a_server_is_scrubbed(server: SimServer,
                                                    logs: pytest.LogCaptureFixture) -> None:
    # No route: the stand-in answers 404 with the request path (token included) in its body.
    [outcome] = deliver(notifier(server.url), EVENT)
    assert isinstance(outcome, DeliveryFailed) and "refused the bot token" in str(outcome)
    assert "**********" in str(outcome)
    assert not reveals(outcome, SECRET) and not leaked(logs, SECRET)


def test_connection_refused_is_retryable(logs: pytest.LogCaptureFixture) -> None:
    gone = SimServer("gone")
    port = gone.port
    gone._httpd.server_close()
    [outcome] = deliver(notifier(f"http://127.0.0.1:{port}"), EVENT)
    assert type(outcome) is DeliveryRetryable and "cannot connect" in str(outcome)
    assert outcome.__context__ is None  # not even the httpx error (it holds the URL)
    assert not reveals(outcome, SECRET) and not leaked(logs, SECRET)


def test_no_answer_after_sending_is_uncertain(server: SimServer,
                                              logs: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def hold(_: SimRequest) -> SimResponse:
        release.wait(5)  # answers only after the client gave up
        return SimResponse(200, {"ok": True, "result": {}})

    server.route("POST", PATH, hold)
    try:
        [outcome] = deliver(notifier(server.url, http_timeout=0.2), EVENT)
    finally:
        release.set()
    assert type(outcome) is DeliveryUncertain and "no answer after sending" in str(outcome)
    assert outcome.__context__ is None
    assert not reveals(outcome, SECRET) and not leaked(logs, SECRET)


def test_token_never_in_config_repr_or_dump() -> None:
    config = TelegramConfig.model_validate(
        {"kind": "telegram", "bot_token": TOKEN, "chat_ids": ["1"]})
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump())
    assert SECRET not in config.model_dump_json()


# --- markup ----------------------------------------------------------------------------

ESCAPES = [
    ("HTML", "<b>Buy</b> & sell", "&lt;b&gt;Buy&lt;/b&gt; &amp; sell"),
    ("HTML", "P&L > 0 <script>", "P&amp;L &gt; 0 &lt;script&gt;"),
    ("HTML", "&amp; \"quoted\" 'single'", "&amp;amp; \"quoted\" 'single'"),
    ("HTML", "*_[x](y)", "*_[x](y)"),
    ("MarkdownV2", "*bold* _it_ [x](http://y)",
     r"\*bold\* \_it\_ \[x\]\(http://y\)"),
    ("MarkdownV2", "a.b!c-d=e|f{g}h#i+j~k`l>m", r"a\.b\!c\-d\=e\|f\{g\}h\#i\+j\~k\`l\>m"),
    ("MarkdownV2", "back\\slash", r"back\\slash"),
    ("MarkdownV2", "<b>&", r"<b\>&"),
    ("MarkdownV2", "27.1 @ -0.5%", r"27\.1 @ \-0\.5%"),
]


@pytest.mark.parametrize(("mode", "plain", "escaped"), ESCAPES)
def test_escape(mode: str, plain: str, escaped: str) -> None:
    escape = escape_html if mode == "HTML" else escape_markdown_v2
    assert escape(plain) == escaped
    assert parse(escaped, mode)[0] == plain


def test_every_markdown_v2_special_character_is_escaped() -> None:
    special = "_*[]()~`>#+-=|{}.!\\"
    assert set(special) == MARKDOWN_V2_SPECIAL
    assert escape_markdown_v2(special) == "".join("\\" + c for c in special)


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_broker_text_cannot_inject_markup(server: SimServer, api: BotApi, mode: str) -> None:
    event = order_event(symbol="<b>2890</b>*_", message="x")
    tg = notifier(server.url, parse_mode=mode)
    message = tg.render(event)
    assert deliver(tg, event) == [None]
    [(_, text)] = api.accepted
    plain, bold = parse(text, mode)
    assert plain == message.text and bold == message.title
    assert api.requests()[0]["parse_mode"] == mode


# --- splitting -------------------------------------------------------------------------


def parse(part: str, mode: str) -> tuple[str, str]:
    """Check one part is valid markup; return its plain text and the text shown in bold.

    HTML: only <b>…</b>, balanced and not nested; only &amp; &lt; &gt; entities; no bare
    < > &. MarkdownV2: every backslash escape complete and of a special character, every
    other special character escaped, '*' balanced.
    """
    plain: list[str] = []
    bold: list[str] = []
    inside = False
    i = 0
    while i < len(part):
        char = part[i]
        if mode == "HTML" and part.startswith("<b>", i):
            assert not inside, "nested <b>"
            inside, i = True, i + 3
            continue
        if mode == "HTML" and part.startswith("</b>", i):
            assert inside, "</b> without <b>"
            inside, i = False, i + 4
            continue
        if mode == "HTML" and char == "&":
            entity = next((e for e in ("&amp;", "&lt;", "&gt;") if part.startswith(e, i)), "")
            assert entity, f"bare & or unknown entity at {i}: {part[i:i + 8]!r}"
            char, step = {"&amp;": "&", "&lt;": "<", "&gt;": ">"}[entity], len(entity)
        elif mode == "HTML":
            assert char not in "<>", f"unescaped {char!r} at {i}"
            step = 1
        elif char == "\\":
            assert i + 1 < len(part), "escape cut in half"
            char, step = part[i + 1], 2
            assert char in MARKDOWN_V2_SPECIAL, f"needless escape of {char!r}"
        elif char == "*":
            inside, i = not inside, i + 1
            continue
        else:
            assert char not in MARKDOWN_V2_SPECIAL, f"unescaped {char!r} at {i}"
            step = 1
        plain.append(char)
        if inside:
            bold.append(char)
        i += step
    assert not inside, "bold left open"
    return "".join(plain), "".join(bold)


def reassemble(parts: list[str], mode: str) -> tuple[str, str, bool]:
    """Check every part; return the joined plain text, the bold text, and 'truncated'."""
    count = len(parts)
    texts: list[str] = []
    bolds: list[str] = []
    truncated = False
    for index, part in enumerate(parts, 1):
        plain, bold = parse(part, mode)
        suffix = f"\n({index}/{count})"
        if index == count and plain.endswith(f"\n({index}/{count}, truncated)"):
            suffix, truncated = f"\n({index}/{count}, truncated)", True
        if count > 1 or truncated:
            assert plain.endswith(suffix), (index, plain[-30:])
            plain = plain[:-len(suffix)]
        texts.append(plain)
        bolds.append(bold)
    return "".join(texts), "".join(bolds), truncated


def long_text(size: int) -> str:
    words = ["fill", "P&L", "<b>x</b>", "27.1", "-0.5%", "[a](b)", "line\n", "*_~"]
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(words[len(out) % len(words)] + " ")
    return "".join(out)[:size]


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_a_10000_character_message_goes_in_three_valid_parts(
        server: SimServer, api: BotApi, mode: str) -> None:
    plain_words = "".join(f"word{i} " + ("\n" if i % 12 == 11 else "") for i in range(2000))
    event = stale_event(1, message=plain_words[:10_000])
    tg = notifier(server.url, parse_mode=mode)
    message = tg.render(event)
    assert len(message.text) > 10_000
    assert deliver(tg, event) == [None]
    texts = api.texts("4242")
    assert len(texts) == 3
    assert all(units(t) <= MAX_LENGTH for t in texts)
    assert [parse(t, mode)[0].rsplit("\n", 1)[1] for t in texts] == ["(1/3)", "(2/3)", "(3/3)"]
    plain, bold, truncated = reassemble(texts, mode)
    assert plain == message.text and bold == message.title and not truncated


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_heavy_escaping_counts_the_parsed_text(mode: str) -> None:
    """Telegram's 4096 is counted after entity parsing: escaping does not shorten a part."""
    body = long_text(9000)
    parts = render_parts("T<&>*", body, mode)
    assert all(units(parse(p, mode)[0]) <= MAX_LENGTH for p in parts) and len(parts) == 3
    assert reassemble(parts, mode)[:2] == (f"T<&>*\n{body}", "T<&>*")


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_a_4090_character_body_of_escaped_characters_is_one_message(mode: str) -> None:
    body = ("&" if mode == "HTML" else "*") * 4090
    parts = render_parts("", body, mode)
    assert len(parts) == 1 and units(parse(parts[0], mode)[0]) == 4090


def test_a_long_bold_title_is_closed_and_reopened_across_parts() -> None:
    title = "&*" * 300
    parts = render_parts(title, "body", "HTML", limit=256)
    assert len(parts) == 3 and parts[0].startswith("<b>") and parts[1].startswith("<b>")
    assert reassemble(parts, "HTML")[:2] == (f"{title}\nbody", title)


def test_too_many_parts_are_truncated_and_say_so() -> None:
    parts = render_parts("T", "x" * 5000, "MarkdownV2", limit=100, max_parts=4)
    assert len(parts) == 4
    assert parse(parts[-1], "MarkdownV2")[0].endswith("\n(4/4, truncated)")
    assert reassemble(parts, "MarkdownV2")[2] is True


def test_short_messages_are_not_numbered() -> None:
    assert render_parts("Title", "body", "HTML") == ["<b>Title</b>\nbody"]
    assert render_parts("T.", "", "MarkdownV2") == [r"*T\.*"]
    assert render_parts("", "", "HTML") == ["(empty message)"]


MARKUP = list("_*[]()~`>#+-=|{}.!\\<&;/\"' \n") + ["a", "b", "1", "é", "😀"]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(title=st.text(alphabet=st.sampled_from(MARKUP), max_size=60),
       chunk=st.text(alphabet=st.sampled_from(MARKUP), max_size=300),
       repeat=st.integers(min_value=1, max_value=45),
       limit=st.sampled_from([64, 200, 1000, MAX_LENGTH]),
       mode=st.sampled_from(["HTML", "MarkdownV2"]))
def test_split_property(title: str, chunk: str, repeat: int, limit: int, mode: str) -> None:
    body = chunk * repeat
    parts = render_parts(title, body, mode, limit=limit, max_parts=50)
    assert 1 <= len(parts) <= 50
    for part in parts:
        assert units(parse(part, mode)[0]) <= limit  # what Telegram counts
    plain, bold, truncated = reassemble(parts, mode)  # every part valid on its own
    if title and body:
        expected = f"{title}\n{body}"
    else:
        expected = title or body or "(empty message)"
    if truncated:
        assert expected.startswith(plain) and len(parts) == 50
    else:
        assert plain == expected and bold == title


# --- several chats ---------------------------------------------------------------------

CHATS = ("111", "-100222", "@poller_desk")


def test_every_chat_gets_the_message(server: SimServer, api: BotApi) -> None:
    assert deliver(notifier(server.url, chats=CHATS), EVENT) == [None]
    assert [chat for chat, _ in api.accepted] == list(CHATS)
    assert len({text for _, text in api.accepted}) == 1


def test_a_retry_only_sends_to_the_chats_that_missed_it(server: SimServer, api: BotApi) -> None:
    api.fail("-100222", api_error(500, "Internal Server Error"))
    outcomes = deliver(notifier(server.url, chats=CHATS), EVENT, EVENT)
    assert isinstance(outcomes[0], DeliveryRetryable) and "chat -100222" in str(outcomes[0])
    assert outcomes[1] is None
    sent = Counter(r["chat_id"] for r in api.requests())
    assert sent == {"111": 1, "-100222": 2, "@poller_desk": 1}
    assert Counter(chat for chat, _ in api.accepted) == {c: 1 for c in CHATS}


def test_a_retry_resumes_a_split_message_at_the_missing_part(server: SimServer,
                                                             api: BotApi) -> None:
    event = stale_event(2, message=long_text(9000))
    api.fail("111", api_error(502, "Bad Gateway"))  # part 1 to chat 111 fails once
    tg = notifier(server.url, chats=("111", "-100222"))
    outcomes = deliver(tg, event, event)
    assert isinstance(outcomes[0], DeliveryRetryable) and outcomes[1] is None
    parts = len(api.texts("-100222"))
    assert parts >= 3 and api.texts("111") == api.texts("-100222")
    # Chat 111: the failed part 1, then parts 1..n; chat -100222: parts 1..n once.
    assert Counter(r["chat_id"] for r in api.requests()) == {"111": parts + 1,
                                                             "-100222": parts}


def test_a_refusing_chat_does_not_keep_the_others_from_the_message(
        server: SimServer, api: BotApi) -> None:
    api.fail("-100222", api_error(403, "Forbidden: bot was kicked from the supergroup chat"))
    [outcome] = deliver(notifier(server.url, chats=CHATS), EVENT)
    assert isinstance(outcome, DeliveryFailed)
    assert "chat -100222" in str(outcome) and "kicked" in str(outcome)
    assert [chat for chat, _ in api.accepted] == ["111", "@poller_desk"]


def test_a_retryable_failure_wins_over_a_permanent_one(server: SimServer, api: BotApi) -> None:
    blocked = api_error(403, "Forbidden: bot was blocked by the user")
    api.fail("111", blocked, blocked)
    api.fail("-100222", api_error(503, "Service Unavailable"))
    outcomes = deliver(notifier(server.url, chats=CHATS), EVENT, EVENT)
    # Retried first (the 503 may clear); once only the refusal is left, it is permanent.
    assert type(outcomes[0]) is DeliveryRetryable
    assert isinstance(outcomes[1], DeliveryFailed) and "blocked" in str(outcomes[1])


def test_flood_wait_stops_at_once_and_pauses_the_chat(server: SimServer, api: BotApi) -> None:
    clock = paced(server)
    api.fail("111", api_error(429, "Too Many Requests: retry after 3", retry_after=3))
    outcomes = deliver(notifier(server.url, chats=CHATS), EVENT, EVENT, clock=clock)
    assert isinstance(outcomes[0], DeliveryRateLimited) and outcomes[0].retry_after == 3
    assert outcomes[1] is None
    first, *rest = server.requests(PATH)
    assert first.json()["chat_id"] == "111"
    assert rest[0].json()["chat_id"] == "111" and rest[0].arrived - first.arrived >= 3
    assert [chat for chat, _ in api.accepted] == list(CHATS)  # nothing sent twice


def test_a_new_delivery_of_a_delivered_event_is_sent_again(server: SimServer,
                                                          api: BotApi) -> None:
    # Memory covers partial failures only: a requeued, fully delivered event goes out again.
    assert deliver(notifier(server.url, chats=CHATS), EVENT, EVENT) == [None, None]
    assert Counter(chat for chat, _ in api.accepted) == {c: 2 for c in CHATS}


# --- pacing ----------------------------------------------------------------------------


def deliver_patiently(tg: TelegramNotifier, clock: VirtualClock, *events: OrderEvent) -> int:
    """Deliver every event as the dispatcher would: after a rate-limit answer, wait its
    ``retry_after`` (on the virtual clock) and try again. Returns how often that happened."""
    async def main() -> int:
        held = 0
        try:
            for event in events:
                while True:
                    try:
                        await tg.send(event)
                        break
                    except DeliveryRateLimited as err:
                        assert err.retry_after is not None and held < 100
                        held += 1
                        clock.advance(err.retry_after)
        finally:
            await tg.aclose()
        return held

    return run(main(), clock)


def arrivals_by_chat(server: SimServer) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for request in server.requests(PATH):
        found.setdefault(request.json()["chat_id"], []).append(request.arrived)
    return found


def test_pacing_per_chat_per_group_and_overall(server: SimServer, api: BotApi) -> None:
    clock = paced(server)
    # timeout 4: waits over 2 s are handed back, and a group's ~3 s spacing is one of them.
    tg = notifier(server.url, chats=("111", "-100222"), timeout=4.0)
    events = [stale_event(n) for n in range(25)]  # more than a group's minute allows
    assert deliver_patiently(tg, clock, *events) >= 1  # held back at least once
    arrivals = arrivals_by_chat(server)
    assert {chat: len(times) for chat, times in arrivals.items()} == {"111": 25, "-100222": 25}
    assert len(api.accepted) == 50  # every message once: a hand-back repeats nothing
    for chat, times in arrivals.items():
        per_chat = SlidingWindow(1, 1.0)
        assert all(per_chat.admit(t) for t in times), chat
    group = SlidingWindow(20, 60.0)
    assert all(group.admit(t) for t in arrivals["-100222"])
    overall = SlidingWindow(30, 1.0)
    assert all(overall.admit(r.arrived) for r in server.requests(PATH))


def test_a_group_is_held_back_for_its_minute(server: SimServer, api: BotApi) -> None:
    clock = paced(server)
    tg = notifier(server.url, chats=("-100222",), group_per_minute=1)
    events = [stale_event(n) for n in range(3)]

    async def main() -> DeliveryRateLimited:
        try:
            await tg.send(events[0])
            with pytest.raises(DeliveryRateLimited) as caught:
                await tg.send(events[1])  # the group's minute is not over: handed back
            assert caught.value.retry_after is not None
            clock.advance(caught.value.retry_after)  # the dispatcher waits, then retries
            await tg.send(events[1])
            clock.advance(61.0)
            await tg.send(events[2])
            return caught.value
        finally:
            await tg.aclose()

    held = run(main(), clock)
    assert held.retry_after is not None and 60.0 <= held.retry_after <= 61.0
    assert "holding back messages to -100222" in str(held)
    assert "group_per_minute (1 per 60 s)" in str(held)
    assert len(api.accepted) == 3
    window = SlidingWindow(1, 60.0)
    assert all(window.admit(r.arrived) for r in server.requests(PATH))


def test_the_group_limit_spares_private_chats(server: SimServer, api: BotApi) -> None:
    clock = paced(server)
    tg = notifier(server.url, chats=("111",), group_per_minute=1)
    assert deliver(tg, stale_event(1), stale_event(2), clock=clock) == [None, None]
    first, second = (r.arrived for r in server.requests(PATH))
    assert 1.0 <= second - first < 2.0  # the per-chat second only


def test_many_chats_stay_under_the_bot_wide_limit(server: SimServer, api: BotApi) -> None:
    clock = paced(server)
    chats = tuple(str(1000 + n) for n in range(45))  # more than one second's allowance
    tg = notifier(server.url, chats=chats)
    assert deliver(tg, EVENT, clock=clock) == [None]
    overall = SlidingWindow(30, 1.0)
    assert all(overall.admit(r.arrived) for r in server.requests(PATH))
    assert overall.max_seen >= 25  # paced close to the limit, not far below it
    assert len(api.accepted) == 45


# --- configuration ---------------------------------------------------------------------

CONFIGS: list[tuple[dict[str, Any], str | None]] = [
    ({}, None),
    ({"chat_ids": "111, -100222 @poller_desk"}, None),
    ({"api_base": "http://127.0.0.1:8081/"}, None),
    ({"parse_mode": "MarkdownV2", "disable_notification": True}, None),
    ({"bot_token": f"bot{TOKEN}"}, "not a bot token"),
    ({"bot_token": SECRET}, "not a bot token"),
    ({"bot_token": f"{TOKEN}/x"}, "not a bot token"),
    ({"chat_ids": []}, "at least 1"),
    ({"chat_ids": ["111", "111"]}, "listed twice"),
    ({"chat_ids": ["me"]}, "entry 0"),
    ({"api_base": "ftp://x"}, "http:// or https://"),
    ({"parse_mode": "Markdown"}, "'HTML' or 'MarkdownV2'"),
    ({"per_chat_per_second": 2}, "less than or equal"),
    ({"group_per_minute": 25}, "less than or equal"),
    ({"global_per_second": 31}, "less than or equal"),
]


@pytest.mark.parametrize(("table", "problem"), CONFIGS)
def test_config(table: dict[str, Any], problem: str | None) -> None:
    data = {"kind": "telegram", "bot_token": TOKEN, "chat_ids": ["111"], **table}
    if problem is None:
        config = TelegramConfig.model_validate(data)
        assert config.api_base.endswith(("org", "8081"))
        assert SECRET not in repr(config)
        return
    with pytest.raises(ValidationError) as caught:
        TelegramConfig.model_validate(data)
    lines = [str(p) for p in problems_from(caught.value, "<test>", ("notifiers", "tg"))]
    assert any(problem in line for line in lines), lines
    assert SECRET not in str(caught.value) and not any(SECRET in line for line in lines)


def test_chat_ids_from_one_string() -> None:
    config = TelegramConfig.model_validate(
        {"kind": "telegram", "bot_token": TOKEN, "chat_ids": "111, -100222 @poller_desk"})
    assert config.chat_ids == ["111", "-100222", "@poller_desk"]


def test_preview_shows_the_marked_up_parts(server: SimServer) -> None:
    tg = notifier(server.url, parse_mode="MarkdownV2")
    try:
        text = tg.preview(EVENT)
    finally:
        asyncio.run(tg.aclose())
    assert text.startswith("*tw\\-main: BUY 2 2890 filled @ 27\\.1*\n")


def test_registers_the_notifier() -> None:
    registered: list[type[object]] = []
    register_notifiers(register=registered.append)
    assert registered == [TelegramNotifier] and TelegramNotifier.kind == "telegram"


# --- every network failure, with an exception text that names the URL -----------------

NETWORK: list[tuple[type[httpx.TransportError], type[Exception], str]] = [
    (httpx.ConnectError, DeliveryRetryable, "cannot connect"),
    (httpx.ConnectTimeout, DeliveryRetryable, "cannot connect"),
    (httpx.PoolTimeout, DeliveryRetryable, "cannot connect"),
    (httpx.ReadTimeout, DeliveryUncertain, "no answer after sending"),
    (httpx.WriteTimeout, DeliveryUncertain, "no answer after sending"),
    (httpx.RemoteProtocolError, DeliveryUncertain, "no answer after sending"),
    (httpx.ReadError, DeliveryUncertain, "no answer after sending"),
    (httpx.WriteError, DeliveryUncertain, "no answer after sending"),
    (httpx.LocalProtocolError, DeliveryRetryable, "request failed"),
    (httpx.ProxyError, DeliveryRetryable, "request failed"),
    (httpx.UnsupportedProtocol, DeliveryRetryable, "request failed"),
]


@pytest.mark.parametrize(("raised", "error", "text"), NETWORK,
                         ids=[n[0].__name__ for n in NETWORK])
def test_network_failures(logs: pytest.LogCaptureFixture, raised: type[httpx.TransportError],
                          error: type[Exception], text: str) -> None:
    # The one place a transport stand-in is used: real sockets cannot produce each class.
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised(f"failed: {request.method} {request.url}", request=request)

    config = TelegramConfig.model_validate(
        {"kind": "telegram", "bot_token": TOKEN, "chat_ids": ["1"]})
    tg = TelegramNotifier("tg", config, httpx.AsyncClient(transport=httpx.MockTransport(fail)))
    [outcome] = deliver(tg, EVENT)
    assert type(outcome) is error and text in str(outcome) and raised.__name__ in str(outcome)
    assert outcome.__context__ is None and outcome.__cause__ is None
    assert not reveals(outcome, SECRET) and not leaked(logs, SECRET)


# --- odds and ends ---------------------------------------------------------------------


def test_digest_messages_are_remembered_by_content(server: SimServer, api: BotApi) -> None:
    digest = Message(title="3 messages held", body="• a <1>\n• b", short_id="",
                     scene="DIGEST", event_type="DIGEST")
    api.fail("-100222", api_error(500, "Internal Server Error"))
    outcomes = deliver(notifier(server.url, chats=("111", "-100222")), digest, digest)
    assert isinstance(outcomes[0], DeliveryRetryable) and outcomes[1] is None
    assert api.accepted == [("111", "<b>3 messages held</b>\n• a &lt;1&gt;\n• b"),
                            ("-100222", "<b>3 messages held</b>\n• a &lt;1&gt;\n• b")]


def test_memory_of_partial_deliveries_is_bounded(server: SimServer, api: BotApi,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("poller_plugins.telegram.PENDING_MAX", 1)
    first, second = stale_event(1), stale_event(2)
    api.fail("-100222", api_error(500, "Internal Server Error"),
             api_error(500, "Internal Server Error"))
    outcomes = deliver(notifier(server.url, chats=("111", "-100222")), first, second, first)
    assert [type(o) for o in outcomes] == [DeliveryRetryable, DeliveryRetryable, type(None)]
    # The first event was forgotten (bound of 1): its retry reached chat 111 a second time,
    # the documented residual duplicate (the same as after a restart).
    assert Counter(chat for chat, _ in api.accepted) == {"111": 3, "-100222": 1}


def test_without_a_client_nothing_is_sent() -> None:
    config = TelegramConfig.model_validate(
        {"kind": "telegram", "bot_token": TOKEN, "chat_ids": ["1"]})
    [outcome] = deliver(TelegramNotifier("tg", config, None), EVENT)
    assert isinstance(outcome, DeliveryFailed) and "no HTTP client" in str(outcome)


def test_a_limit_too_small_for_one_part_is_refused() -> None:
    with pytest.raises(ValueError, match="limit too small"):
        render_parts("T", "body", "HTML", limit=10)


def test_an_unparseable_api_base_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a URL"):
        TelegramConfig.model_validate({"kind": "telegram", "bot_token": TOKEN,
                                       "chat_ids": ["1"], "api_base": "http://\x00/"})


def test_closing_removes_the_httpx_log_filter(server: SimServer) -> None:
    tg = notifier(server.url)
    assert any(isinstance(f, LogScrubber) for f in logging.getLogger("httpx").filters)
    asyncio.run(tg.aclose())
    assert not any(isinstance(f, LogScrubber) for f in logging.getLogger("httpx").filters)
