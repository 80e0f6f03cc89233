"""The email notifier against a real SMTP server (aiosmtpd on loopback, a random free port).

Covers: the message (headers, plain and HTML parts, escaping of broker strings, no header
injection), plain / STARTTLS / implicit TLS with a self-signed certificate made here, AUTH,
connection reuse and reconnection, every outcome class, pacing, config validation, and a
canary password that must never show up in errors or logs. Pacing and the idle limit run on
the loop's clock: their tests use a virtual-time loop (tests.notifiers.virtualtime).
"""

from __future__ import annotations

import asyncio
import email
import email.header
import email.policy
import logging
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from poller.compose import validate
from poller.errors import (
    ConfigError,
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
)
from poller.events import OrderEvent, system_event
from poller.models import OrderStatus, SystemScene
from poller.plugins import DEFAULT_PLUGINS, get_plugin_manager
from poller.settings import load_settings
from poller.simulator.httpserver import SlidingWindow
from poller_plugins.email_smtp import MAX_IDLE, EmailConfig, EmailNotifier
from tests.notifiers.helpers import NOW, order_event
from tests.notifiers.virtualtime import VirtualClock
from tests.notifiers.virtualtime import run as run_virtual

SENDER = "poller <alerts@example.com>"
DESK = "desk@example.com"
USER = "alice@example.com"
PASSWORD = "s3cret-pw"
NASTY_SYMBOL = "台積電<script>alert(1)</script>\r\nBcc: evil@example.net"
NASTY_MESSAGE = "margin & <b>limits</b>\r\nX-Injected: yes"




FILLED = order_event(OrderStatus.FILLED, 2)
NASTY = order_event(OrderStatus.FAILED, 0, symbol=NASTY_SYMBOL, message=NASTY_MESSAGE)
STALE = system_event(SystemScene.ORDER_STALE, broker="tw-main", detected_at=NOW,
                     discriminator="d", message="order a647f23d no longer reported")


# -- a real SMTP server -------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    """A self-signed certificate for 127.0.0.1 / localhost."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    folder = tmp_path_factory.mktemp("tls")
    made = Cert(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(made.key), "-out", str(made.cert)],
        check=True, capture_output=True, timeout=30)
    return made


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes = b""


@dataclass
class Mailbox:
    """aiosmtpd handler: records messages and plays scripted replies.

    ``replies`` maps a command (``MAIL``, ``DATA``, or ``RCPT <address>``) to the reply to
    give instead of accepting; ``hang`` lists commands never answered; ``drop_after_data``
    closes the connection after receiving a message instead of replying. ``arrivals`` holds
    when each message arrived, on ``clock``.
    """

    replies: dict[str, str] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    drop_after_data: bool = False
    clock: Callable[[], float] = time.monotonic
    messages: list[Received] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    sessions: list[SMTP] = field(default_factory=list)  # one per connection that sent MAIL

    async def _hold(self, command: str) -> None:
        if command in self.hang:
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the client goes away

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not any(s is server for s in self.sessions):
            self.sessions.append(server)
        await self._hold("MAIL")
        if "MAIL" in self.replies:
            return self.replies["MAIL"]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if f"RCPT {address}" in self.replies:
            return self.replies[f"RCPT {address}"]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._hold("DATA")
        if "DATA" in self.replies:
            return self.replies["DATA"]
        content = cast(bytes, envelope.original_content)
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        self.messages.append(Received(cast(str, envelope.mail_from), list(envelope.rcpt_tos),
                                      cast(EmailMessage, parsed), content))
        self.arrivals.append(self.clock())
        if self.drop_after_data:
            assert server.transport is not None
            server.transport.close()  # the message arrived; the reply never will
        return "250 2.0.0 queued"


class TrackedSMTP(SMTP):
    """aiosmtpd's server protocol, keeping a set of its live connections."""

    def __init__(self, handler: object, *, live: Live, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._live.opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._live.lost(self)


class Live:
    """The server's open connections, so teardown can wait until clients have gone.

    Python 3.11's ``Server.close()`` leaves accepted connections open: stopping the server
    while one still closes would leak its socket (an unclosed-transport warning).
    """

    def __init__(self) -> None:
        self._open: set[object] = set()
        self._cond = threading.Condition()

    def opened(self, protocol: object) -> None:
        with self._cond:
            self._open.add(protocol)

    def lost(self, protocol: object) -> None:
        with self._cond:
            self._open.discard(protocol)
            self._cond.notify_all()

    def wait_all_closed(self, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: not self._open, timeout), "a client stayed"


class LoopbackController(Controller):
    """aiosmtpd's Controller on a port the kernel picks (port=0): no port guessing."""

    def __init__(self, handler: object, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.live = Live()

    def factory(self) -> SMTP:
        return TrackedSMTP(self.handler, live=self.live, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    def stop(self, no_assert: bool = False) -> None:
        self.live.wait_all_closed()

        async def settle() -> None:
            for _ in range(5):  # loop iterations (no time): pending close callbacks run
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(settle(), self.loop).result(timeout=5)
        super().stop(no_assert)


@dataclass
class Server:
    controller: LoopbackController
    mailbox: Mailbox
    cert: Cert | None

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def kick(self, line: bytes = b"") -> None:
        """Close the last connection from the server side (after ``line``); wait for it."""
        server = self.mailbox.sessions[-1]

        async def close() -> None:
            assert server.transport is not None
            if line:
                server.transport.write(line)  # type: ignore[attr-defined]
            server.transport.close()

        asyncio.run_coroutine_threadsafe(close(), self.controller.loop).result(timeout=5)


def authenticator(reply: str | None, password: str) -> Callable[..., AuthResult]:
    """Accept USER/``password``; otherwise refuse with ``reply`` (default 535)."""
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: object) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
              and auth_data.password == password.encode())
        return AuthResult(success=ok, handled=False, message=None if ok else reply)
    return check


@contextmanager
def smtp_server(cert: Cert | None = None, *, tls: str = "none", auth: bool = False,
                auth_reply: str | None = None, password: str = PASSWORD,
                mailbox: Mailbox | None = None) -> Iterator[Server]:
    """A running aiosmtpd server; ``tls`` is none, starttls (offered) or implicit."""
    box = mailbox or Mailbox()
    kwargs: dict[str, Any] = {"server_hostname": "mx.test"}
    if tls == "starttls":
        assert cert is not None
        kwargs["tls_context"] = cert.server_context()
    elif tls == "implicit":
        assert cert is not None
        kwargs["ssl_context"] = cert.server_context()
    if auth:
        kwargs["authenticator"] = authenticator(auth_reply, password)
        kwargs["auth_require_tls"] = tls == "starttls"
    controller = LoopbackController(box, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield Server(controller, box, cert)
    finally:
        controller.stop()


def config(port: int, **kw: Any) -> EmailConfig:
    """A plain-SMTP config for the loopback server. Pacing has tests of its own: the others
    set a limit they never reach, so they never wait for a slot."""
    data: dict[str, Any] = {"kind": "email", "host": "127.0.0.1", "port": port,
                            "security": "none", "sender": SENDER, "recipients": [DESK],
                            "timeout": 3.0, "max_per_minute": 10_000}
    return EmailConfig.model_validate({**data, **kw})


def virtual_clock() -> VirtualClock:
    """A virtual clock for SMTP tests: waits under 4 s are skipped. Every SMTP time limit
    there must be longer (QUIT's is 5 s; pass ``timeout=30`` to :func:`config`)."""
    return VirtualClock(jump_below=4.0)


def run(notifier: EmailNotifier, scenario: Callable[[EmailNotifier], Awaitable[None]],
        clock: VirtualClock | None = None) -> None:
    """Run ``scenario`` in a fresh loop (on ``clock`` when given), always closing the
    notifier in it."""
    async def main() -> None:
        try:
            await scenario(notifier)
        finally:
            await notifier.aclose()

    if clock is None:
        asyncio.run(main())
    else:
        run_virtual(main(), clock)


def send_all(*events: OrderEvent) -> Callable[[EmailNotifier], Awaitable[None]]:
    async def scenario(notifier: EmailNotifier) -> None:
        for event in events:
            await notifier.send(event)
    return scenario


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the message ----------------------------------------------------------------------------


def parts(message: EmailMessage) -> tuple[str, str | None]:
    text = message.get_body(("plain",))
    markup = message.get_body(("html",))
    assert text is not None
    def content(part: object) -> str:
        return str(cast(EmailMessage, part).get_content()).replace("\r\n", "\n")

    return content(text), None if markup is None else content(markup)


def test_message_headers_parts_and_escaping() -> None:
    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port, recipients=[DESK, "ops@example.org"])),
            send_all(NASTY, FILLED))
        nasty, filled = server.mailbox.messages

    assert nasty.mail_from == "alerts@example.com"
    assert nasty.rcpt_tos == [DESK, "ops@example.org"]
    msg = nasty.message
    assert msg["From"] == SENDER and msg["To"] == f"{DESK}, ops@example.org"
    # Broker strings reach the subject flattened to one line: no header can be injected.
    assert msg["Subject"] == ("[poller] tw-main: BUY 2 台積電<script>alert(1)</script> "
                              "Bcc: evil@example.net rejected")
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert msg["X-Poller-Event"] == NASTY.short_id
    assert msg["Message-ID"] == f"<{NASTY.id}@example.com>"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    text, markup = parts(msg)
    assert text.startswith("tw-main: BUY 2 台積電<script>alert(1)</script> Bcc: evil")
    assert "reason: margin & <b>limits</b>\nX-Injected: yes" in text
    assert text.rstrip().endswith(NASTY.short_id)
    assert markup is not None
    assert "<script>" not in markup and "<b>" not in markup
    assert "台積電&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert "margin &amp; &lt;b&gt;limits&lt;/b&gt;" in markup
    assert NASTY.short_id in markup
    # Every part went out 7-bit clean: nothing needs 8BITMIME or SMTPUTF8.
    assert "8bit" not in msg.as_string()

    assert filled.message["Subject"] == "[poller] tw-main: BUY 2 2890 filled @ 27.1"
    text, markup = parts(filled.message)
    assert "filled 2 / 2 (100 %), avg 27.1" in text and markup is not None


@pytest.mark.parametrize(("cfg", "subject", "html"), [
    ({"html": False}, "[poller] tw-main: BUY 2 2890 filled @ 27.1", False),
    ({"subject_prefix": ""}, "tw-main: BUY 2 2890 filled @ 27.1", True),
    ({"subject_prefix": "[desk 1]"}, "[desk 1] tw-main: BUY 2 2890 filled @ 27.1", True),
], ids=["text-only", "no-prefix", "own-prefix"])
def test_message_options(cfg: dict[str, Any], subject: str, html: bool) -> None:
    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port, **cfg)), send_all(FILLED))
        (received,) = server.mailbox.messages
    assert received.message["Subject"] == subject
    assert received.message.is_multipart() is html
    text, markup = parts(received.message)
    assert "filled 2 / 2" in text and (markup is not None) is html


def test_system_event_and_digest() -> None:
    async def scenario(notifier: EmailNotifier) -> None:
        await notifier.send(STALE)
        await notifier.send_digest([FILLED, NASTY], title="held during quiet hours")

    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port)), scenario)
        stale, digest = server.mailbox.messages
    assert stale.message["Subject"] == "[poller] poller: ORDER_STALE (tw-main)"
    assert "order a647f23d no longer reported" in parts(stale.message)[0]
    assert digest.message["Subject"] == "[poller] held during quiet hours"
    assert digest.message["X-Poller-Event"] is None  # a digest is not one event
    assert digest.message["Message-ID"].endswith("@example.com>")
    text, markup = parts(digest.message)
    assert FILLED.short_id in text and NASTY.short_id in text
    assert markup is not None and "<script>" not in markup


# -- transports: plain, STARTTLS, implicit TLS, AUTH ----------------------------------------

TRANSPORTS = [
    # id, server tls, server auth, config
    ("plain", "none", False, {"security": "none"}),
    ("plain-auth-loopback", "none", True,
     {"security": "none", "username": USER, "password": PASSWORD}),
    ("starttls-verified", "starttls", False, {"security": "starttls", "ca_file": "CERT"}),
    ("starttls-auth", "starttls", True,
     {"security": "starttls", "ca_file": "CERT", "username": USER, "password": PASSWORD}),
    ("tls-verified", "implicit", False, {"security": "tls", "ca_file": "CERT"}),
    ("tls-auth-unverified", "implicit", True,
     {"security": "tls", "validate_certs": False, "username": USER, "password": PASSWORD}),
]


@pytest.mark.parametrize(("tls", "auth", "cfg"), [t[1:] for t in TRANSPORTS],
                         ids=[t[0] for t in TRANSPORTS])
def test_transports(cert: Cert, tls: str, auth: bool, cfg: dict[str, Any]) -> None:
    cfg = {k: (str(cert.cert) if v == "CERT" else v) for k, v in cfg.items()}
    with smtp_server(cert, tls=tls, auth=auth) as server:
        notifier = EmailNotifier("mail", config(server.port, **cfg))
        run(notifier, send_all(FILLED, STALE))
        assert [r.message["X-Poller-Event"] for r in server.mailbox.messages] == [
            FILLED.short_id, STALE.short_id]
        assert notifier.connections == 1 and len(server.mailbox.sessions) == 1


# -- connection reuse -----------------------------------------------------------------------


def between(action: Callable[[Server, VirtualClock], None]
            ) -> Callable[[Server, VirtualClock], Callable[[EmailNotifier], Awaitable[None]]]:
    """A scenario: send, do ``action`` to the server or clock, send again, send again."""
    def make(server: Server, clock: VirtualClock
             ) -> Callable[[EmailNotifier], Awaitable[None]]:
        async def scenario(notifier: EmailNotifier) -> None:
            await notifier.send(FILLED)
            action(server, clock)
            await notifier.send(STALE)
            await notifier.send(NASTY)
        return scenario
    return make


def advance(seconds: float) -> Callable[[Server, VirtualClock], None]:
    def act(server: Server, clock: VirtualClock) -> None:
        clock.advance(seconds)
    return act


REUSE = [
    # id, what happens between the first and second message, connections expected
    ("reused", between(lambda server, clock: None), 1),
    ("idle-below-limit", between(advance(MAX_IDLE - 1)), 1),
    ("idle-over-limit", between(advance(MAX_IDLE + 1)), 2),
    ("server-closed-silently", between(lambda server, clock: server.kick()), 2),
    ("server-said-421-and-closed",
     between(lambda server, clock: server.kick(b"421 4.4.2 mx.test idle timeout\r\n")), 2),
]


@pytest.mark.parametrize(("make", "connections"), [r[1:] for r in REUSE],
                         ids=[r[0] for r in REUSE])
def test_connection_reuse_and_reconnect(
        make: Callable[[Server, VirtualClock], Callable[[EmailNotifier], Awaitable[None]]],
        connections: int) -> None:
    clock = virtual_clock()  # the idle limit runs on the loop's clock
    with smtp_server() as server:
        notifier = EmailNotifier("mail", config(server.port, timeout=30.0))
        run(notifier, make(server, clock), clock)
        assert [r.message["X-Poller-Event"] for r in server.mailbox.messages] == [
            FILLED.short_id, STALE.short_id, NASTY.short_id]
        assert notifier.connections == connections
        assert len(server.mailbox.sessions) == connections


def test_a_cancelled_send_drops_the_connection() -> None:
    """The dispatcher's time limit cancels a send mid-DATA: the next one starts afresh."""
    async def scenario(notifier: EmailNotifier) -> None:
        await notifier.send(FILLED)
        box.hang.add("DATA")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await notifier.send(STALE)
        box.hang.clear()
        await notifier.send(NASTY)

    box = Mailbox()
    with smtp_server(mailbox=box) as server:
        notifier = EmailNotifier("mail", config(server.port))
        run(notifier, scenario)
        assert [r.message["X-Poller-Event"] for r in box.messages] == [
            FILLED.short_id, NASTY.short_id]
        assert notifier.connections == 2 and len(box.sessions) == 2


def test_a_retried_digest_keeps_its_message_id() -> None:
    async def scenario(notifier: EmailNotifier) -> None:
        for _ in range(2):  # the same digest, sent again after a failure
            await notifier.send_digest([FILLED, NASTY], title="held during quiet hours")
        await notifier.send_digest([FILLED], title="held during quiet hours")

    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port)), scenario)
        first, retry, other = server.mailbox.messages
    assert first.message["Message-ID"] == retry.message["Message-ID"]
    assert first.message["Message-ID"].startswith("<digest-")
    assert other.message["Message-ID"] != first.message["Message-ID"]


def test_an_encoded_word_in_broker_text_stays_literal_in_the_subject() -> None:
    """Mail clients decode =?charset?b?…?= in a Subject; broker text must not become one."""
    hostile = order_event(OrderStatus.FILLED, 2, symbol="=?utf-8?b?SGFja2Vk?=")  # "Hacked"
    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port)), send_all(hostile))
        [received] = server.mailbox.messages
    # The three parsers a reader may use: none shows "Hacked".
    raw = received.raw
    for shown in (str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]),
                  str(email.header.make_header(email.header.decode_header(
                      email.message_from_bytes(raw)["Subject"]))),
                  received.message["Subject"]):
        assert "Hacked" not in shown and "SGFja2Vk" in shown, shown


def test_same_event_keeps_its_message_id() -> None:
    """Retries of one event carry one Message-ID, so mail systems can drop the copy."""
    with smtp_server() as server:
        run(EmailNotifier("mail", config(server.port)), send_all(FILLED, FILLED))
        first, second = server.mailbox.messages
    assert first.message["Message-ID"] == second.message["Message-ID"] == (
        f"<{FILLED.id}@example.com>")


# -- outcomes -------------------------------------------------------------------------------

OUTCOMES: list[tuple[str, dict[str, Any], dict[str, Any], type[Exception], str]] = [
    # id, server (Mailbox fields / server kwargs), config, error type, text in the error
    ("451-at-DATA", {"replies": {"DATA": "451 4.3.0 try later"}}, {},
     DeliveryRetryable, "DATA: 451 4.3.0 try later"),
    ("554-at-DATA", {"replies": {"DATA": "554 5.6.0 message refused"}}, {},
     DeliveryFailed, "DATA: 554 5.6.0 message refused"),
    ("450-at-MAIL", {"replies": {"MAIL": "450 4.7.1 greylisted"}}, {},
     DeliveryRetryable, "MAIL FROM: 450 4.7.1 greylisted"),
    ("421-at-MAIL-fresh-connection", {"replies": {"MAIL": "421 4.3.2 shutting down"}}, {},
     DeliveryRetryable, "421 4.3.2 shutting down"),
    ("553-at-MAIL", {"replies": {"MAIL": "553 5.7.1 sender not allowed"}}, {},
     DeliveryFailed, "MAIL FROM: 553 5.7.1 sender not allowed"),
    ("550-at-RCPT", {"replies": {f"RCPT {DESK}": "550 5.1.1 no such user"}}, {},
     DeliveryFailed, "every recipient refused at RCPT TO: 550 5.1.1 no such user"),
    ("452-at-RCPT", {"replies": {f"RCPT {DESK}": "452 4.2.2 mailbox full"}}, {},
     DeliveryRetryable, "452 4.2.2 mailbox full"),
    ("535-auth-refused", {"auth": True}, {"username": USER, "password": "wrong-pw"},
     DeliveryFailed, "refused the login: 535 5.7.8 Authentication credentials invalid"),
    ("454-auth-temporary", {"auth": True, "auth_reply": "454 4.7.0 try again later"},
     {"username": USER, "password": "wrong-pw"},
     DeliveryRetryable, "refused the login: 454 4.7.0 try again later"),
    ("no-AUTH-offered", {"auth": True, "tls": "starttls"},
     {"security": "none", "username": USER, "password": PASSWORD},
     DeliveryFailed, "cannot AUTH: The SMTP AUTH extension is not supported"),
    ("no-STARTTLS-offered", {}, {"security": "starttls"},
     DeliveryFailed, "cannot STARTTLS: SMTP STARTTLS extension not supported"),
    ("certificate-not-trusted", {"tls": "implicit"}, {"security": "tls"},
     DeliveryRetryable, "TLS certificate not trusted (self-signed certificate)"),
    ("starttls-certificate-not-trusted", {"tls": "starttls"}, {"security": "starttls"},
     DeliveryRetryable, "TLS certificate not trusted (self-signed certificate)"),
    ("tls-to-a-plain-port", {}, {"security": "tls", "validate_certs": False},
     DeliveryRetryable, "TLS handshake failed"),
    ("connection-refused", {"closed": True}, {},
     DeliveryRetryable, "cannot connect (ConnectionRefusedError)"),
    ("no-answer-to-MAIL", {"hang": {"MAIL"}}, {"timeout": 1.0},
     DeliveryRetryable, "no answer to MAIL FROM (timeout)"),
    ("no-answer-after-DATA", {"hang": {"DATA"}}, {"timeout": 1.0},
     DeliveryUncertain, "no answer after sending the message (timeout)"),
    ("dropped-after-DATA", {"drop_after_data": True}, {},
     DeliveryUncertain, "no answer after sending the message"),
]


@pytest.mark.parametrize(("srv", "cfg", "error", "text"), [o[1:] for o in OUTCOMES],
                         ids=[o[0] for o in OUTCOMES])
def test_outcomes(cert: Cert, srv: dict[str, Any], cfg: dict[str, Any],
                  error: type[Exception], text: str) -> None:
    box = Mailbox(**{k: v for k, v in srv.items()
                     if k in ("replies", "hang", "drop_after_data")})
    server_kw = {k: v for k, v in srv.items() if k in ("tls", "auth", "auth_reply")}
    with smtp_server(cert, mailbox=box, **server_kw) as server:
        port = closed_port() if srv.get("closed") else server.port
        notifier = EmailNotifier("mail", config(port, **cfg))
        with pytest.raises(error) as caught:
            run(notifier, send_all(FILLED))
    assert type(caught.value) is error  # Uncertain is a Retryable: the exact class matters
    assert text in str(caught.value), str(caught.value)
    assert str(caught.value).startswith("email mail: ")
    assert notifier.connections <= 1


def test_partial_refusal_delivers_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Delivered when at least one recipient took it; the refused ones are logged."""
    box = Mailbox(replies={"RCPT gone@example.org": "550 5.1.1 no such user"})
    caplog.set_level(logging.WARNING, logger="poller_plugins.email_smtp")
    with smtp_server(mailbox=box) as server:
        run(EmailNotifier("mail", config(server.port, recipients=["gone@example.org", DESK])),
            send_all(FILLED))
    (received,) = box.messages
    assert received.rcpt_tos == [DESK]
    (record,) = [r for r in caplog.records if r.name == "poller_plugins.email_smtp"]
    assert record.levelno == logging.WARNING
    assert "1 of 2 recipients were refused: gone@example.org (550 5.1.1 no such user)" in (
        record.getMessage())


# -- pacing (virtual clock: no waiting, no timing assertions) -------------------------------


def test_pacing_holds_max_per_minute() -> None:
    clock = virtual_clock()
    events = [FILLED, STALE, NASTY] * 3

    async def scenario(notifier: EmailNotifier) -> None:
        await notifier.send(events[0])
        with pytest.raises(DeliveryRateLimited) as caught:
            await notifier.send(events[1])  # the next slot is 20 s away: handed back, not sent
        assert caught.value.retry_after is not None and 20 <= caught.value.retry_after <= 21
        assert "holding back" in str(caught.value)
        assert "max_per_minute (3 per 60 s)" in str(caught.value)
        assert len(box.messages) == 1
        clock.advance(18.0)  # close to the slot: the short wait left is slept through
        before = clock.now
        await notifier.send(events[1])
        assert 2 < clock.now - before < 3
        for event in events[2:]:  # the rest as the dispatcher delivers: wait, then retry
            try:
                await notifier.send(event)
            except DeliveryRateLimited as err:
                assert err.retry_after is not None and err.retry_after <= 21
                clock.advance(err.retry_after)
                await notifier.send(event)

    box = Mailbox(clock=clock)
    with smtp_server(mailbox=box) as server:
        notifier = EmailNotifier("mail", config(server.port, max_per_minute=3, timeout=30.0))
        run(notifier, scenario, clock)
    assert [r.message["X-Poller-Event"] for r in box.messages] == [e.short_id for e in events]
    window = SlidingWindow(3, 60.0)
    assert all(window.admit(t) for t in box.arrivals) and window.max_seen == 3
    assert notifier.connections == 1  # paced on one connection, never idle for long


# -- configuration --------------------------------------------------------------------------

CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    # id, keys, text in the error ("" means valid)
    ("defaults", {}, ""),
    ("display-name-sender", {"sender": '"Desk, Poller" <alerts@example.com>'}, ""),
    ("bad-sender", {"sender": "not-an-address"}, "not an e-mail address"),
    ("two-senders", {"sender": "a@example.com, b@example.com"}, "not an e-mail address"),
    ("crlf-in-sender", {"sender": "a@example.com\r\nBcc: evil@example.net"}, "line breaks"),
    ("bad-recipient", {"recipients": [DESK, "desk@"]}, "recipients.1"),
    ("no-recipient", {"recipients": []}, "at least 1 item"),
    ("non-ascii-address", {"recipients": ["jörg@example.com"]}, "not an e-mail address"),
    ("password-without-username", {"password": "canary-pw-cfg1"},
     "username and password go together"),
    ("username-without-password", {"username": USER}, "username and password go together"),
    ("unknown-security", {"security": "ssl"}, "'starttls', 'tls' or 'none'"),
    ("password-in-clear-text", {"security": "none", "host": "mail.example.com",
                                "username": USER, "password": "canary-pw-cfg2"},
     "refusing to send the password unencrypted"),
    ("password-in-clear-text-loopback", {"security": "none", "host": "::1",
                                         "username": USER, "password": "canary-pw-cfg3"}, ""),
    ("crlf-in-prefix", {"subject_prefix": "[p]\r\nBcc: x@example.net"}, "line breaks"),
    ("bad-host", {"host": "mail example.com"}, "host name"),
    ("missing-ca-file", {"ca_file": "/nonexistent/ca.pem"}, "file not found"),
    ("zero-per-minute", {"max_per_minute": 0}, "greater than or equal to 1"),
    ("unknown-key", {"smtp_host": "x"}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("keys", "problem"), [c[1:] for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_config(keys: dict[str, Any], problem: str) -> None:
    data = {"kind": "email", "host": "smtp.example.com", "sender": SENDER,
            "recipients": [DESK], **keys}
    if not problem:
        cfg = EmailConfig.model_validate(data)
        assert "canary-pw" not in repr(cfg) + str(cfg) + cfg.model_dump_json()
        return
    with pytest.raises(ValidationError) as caught:
        EmailConfig.model_validate(data)
    assert problem in str(caught.value), str(caught.value)
    assert "canary-pw" not in str(caught.value)


@pytest.mark.parametrize(("keys", "port"), [
    ({}, 587), ({"security": "starttls"}, 587), ({"security": "tls"}, 465),
    ({"security": "none"}, 25), ({"security": "tls", "port": 2465}, 2465),
])
def test_default_port_follows_security(keys: dict[str, Any], port: int) -> None:
    cfg = EmailConfig.model_validate({"kind": "email", "host": "smtp.example.com",
                                      "sender": SENDER, "recipients": [DESK], **keys})
    assert cfg.port == port


def test_registered_and_validated_like_any_notifier(tmp_path: Path) -> None:
    """Through the plugin hook and the app's validation: per-key problems, secrets known."""
    plugins = get_plugin_manager(builtins=(*DEFAULT_PLUGINS, "poller_plugins.email_smtp"))
    registry = plugins.registry()
    assert registry.notifiers["email"] is EmailNotifier and not EmailNotifier.uses_http

    def table(**kw: Any) -> dict[str, Any]:
        return {"daemon": {"database": str(tmp_path / "p.db")}, "brokers": {},
                "notifiers": {"mail": {"kind": "email", "host": "smtp.example.com",
                                       "sender": SENDER, "recipients": [DESK], **kw}}}

    validated = validate(load_settings(data=table(username=USER, password="canary-pw-app")),
                         registry, "<test>")
    assert "canary-pw-app" in validated.secrets()  # so the log redactor masks it too
    for keys, where, problem in [
        ({"sender": "nobody"}, "notifiers.mail.sender", "not an e-mail address"),
        ({"recipients": [DESK, "x@"]}, "notifiers.mail.recipients.1", "not an e-mail address"),
        ({"password": "canary-pw-app2"}, "notifiers.mail", "username and password go together"),
    ]:
        with pytest.raises(ConfigError) as caught:
            validate(load_settings(data=table(**keys)), registry, "<test>")
        (found,) = caught.value.problems
        assert found.key == where and problem in found.message, found
        assert "canary-pw-app2" not in str(caught.value)


# -- the canary password --------------------------------------------------------------------


def test_canary_password_never_in_errors_or_logs(cert: Cert,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    canary = f"canary-pw-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.DEBUG)  # every logger: ours, aiosmtplib's, asyncio's, aiosmtpd's
    texts: list[str] = []

    def attempt(server_kw: dict[str, Any], port: int | None = None, **cfg: Any) -> None:
        with smtp_server(cert, **server_kw) as server:
            notifier = EmailNotifier("mail", config(port or server.port, username=USER,
                                                    password=canary, **cfg))
            texts.append(repr(notifier.config) + str(notifier.config))
            try:
                run(notifier, send_all(FILLED))
            except (DeliveryRetryable, DeliveryFailed) as err:
                texts.append(f"{err!s} {err!r} {err.__cause__!r} {err.__context__!r}")

    # A server that echoes the password in its refusal must not get it into our error.
    echo = f"535 5.7.8 bad password {canary} for {USER}"
    attempt({"auth": True, "auth_reply": echo})
    attempt({"auth": True})  # 535
    attempt({"auth": True, "tls": "starttls"}, security="starttls", ca_file=str(cert.cert))
    attempt({}, port=closed_port())
    attempt({"tls": "implicit"}, security="tls")  # certificate not trusted
    attempt({"auth": True, "password": canary,  # logged in, then refused at DATA
             "mailbox": Mailbox(replies={"DATA": "451 4.3.0 try later"})})
    attempt({"auth": True, "password": canary})  # logged in and delivered
    with pytest.raises(ValidationError) as caught:
        EmailConfig.model_validate({"kind": "email", "host": "h", "sender": SENDER,
                                    "recipients": [DESK], "password": canary})
    texts.append(str(caught.value))

    assert any("535 5.7.8 bad password *** for <username>" in t for t in texts), texts
    # Except the test server logging the reply we scripted it to echo.
    logged = [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
              if not (r.name == "mail.log" and echo in r.getMessage())]
    assert logged  # the server and the notifier did log at DEBUG
    leaks = [t for t in texts + logged if canary in t]
    assert not leaks
