"""The ``email`` notifier: each event as one mail through an SMTP submission server.

The mail has a plain-text part and (unless ``html = false``) an HTML alternative in which
every character of the rendered message is escaped, so nothing a broker sends can inject
markup. Broker strings never reach a header unfiltered: the subject is the notifier's prefix
plus the rendered title with line breaks and control characters flattened to spaces (an
``EmailMessage`` refuses CR/LF outright; flattening keeps the message deliverable).

Headers: ``Message-ID`` is derived from the event id (``<evt_…@sender-domain>``), so every
retry of one event carries the same id and mail systems that deduplicate on it drop a second
copy after an uncertain send; ``X-Poller-Event`` carries the short id (``#7F3A``) people can
quote; ``Auto-Submitted: auto-generated`` (RFC 3834) keeps vacation responders quiet.

One SMTP connection is kept open and reused for the following messages (design.md §6:
providers throttle or block clients that log in once per message). It is opened lazily
inside the running loop; closed after :data:`MAX_IDLE` seconds without use (servers and NAT
boxes drop idle sessions, and a write into a silently dropped one only fails at the
timeout); replaced by a fresh one, once and at once, when the server turns out to have
closed it (silently, or with a 421 reply) before the message was handed over; dropped after
any failure or cancellation; and closed with ``QUIT`` in :meth:`EmailNotifier.aclose`.

Pacing: at most ``max_per_minute`` messages in any 60 s, one every ``60 / max_per_minute``
seconds (declared on the class, see :mod:`poller.pacing`). A wait of up to
:data:`MAX_PACING_SLEEP` seconds is slept through; a longer one raises
``DeliveryRateLimited`` with ``retry_after``, and the dispatcher keeps the message queued
until then.

How each outcome is reported (reliability.md §1, G1.2)::

    250 after the message was sent ....................... delivered
    some recipients refused, at least one accepted ....... delivered; the refused ones are
                                                           logged (WARNING) — retrying would
                                                           send the others a duplicate
    every recipient refused .............................. DeliveryRetryable if any refusal
                                                           is 4xx, else DeliveryFailed
    4xx reply anywhere (421, 450, 451, 452, 454 ...) ..... DeliveryRetryable
    cannot connect, timeout or connection lost before
      the message was sent, TLS failure .................. DeliveryRetryable
    connection lost or timeout after DATA without a reply  DeliveryUncertain (retried)
    5xx reply anywhere (530, 535, 550, 553, 554 ...) ..... DeliveryFailed
    server offers no STARTTLS / no AUTH .................. DeliveryFailed
    over max_per_minute for longer than a few seconds .... DeliveryRateLimited(retry_after)

A TLS certificate the notifier cannot verify is retried rather than dead-lettered: it is
usually fixed on the server side (a renewed certificate) and the queued fills then go out.
Error texts name the step and the server's reply, never the password; the username is
masked in server replies.

Over 400 lines: a whole SMTP client: the message (plain text, HTML, headers), the one
reused connection's life, and the table of every SMTP outcome belong together.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import html
import logging
import re
import ssl
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import aiosmtplib
import httpx
from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from poller import (
    DeliveryFailed,
    DeliveryRetryable,
    DeliveryUncertain,
    Message,
    Notifier,
    NotifierConfig,
    NotifierError,
    OrderEvent,
    Pace,
    hookimpl,
    is_loopback,
    utcnow,
)

logger = logging.getLogger(__name__)

#: The port each ``security`` mode uses unless ``port`` is set (RFC 8314, RFC 6409).
DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "tls": 465, "none": 25}

#: A connection unused this long is closed and a fresh one opened (seconds). RFC 5321 lets
#: servers drop idle clients after 5 minutes; many (and NAT boxes) do it sooner.
MAX_IDLE = 60.0

#: Longest pause spent waiting for the pacing budget inside one delivery (seconds). Longer
#: waits are handed back to the dispatcher as DeliveryRateLimited(retry_after=...) so the
#: delivery never runs into the dispatcher's time limit (``timeout`` + 5 s).
MAX_PACING_SLEEP = 5.0

# RFC 5322 dot-atom local part and an LDH domain; addresses must be ASCII, because the
# envelope is sent without SMTPUTF8 (display names may be any text: they are encoded).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")

# Folds at 78, CRLF line ends, and 7-bit transfer encodings (quoted-printable/base64 for
# non-ASCII text): the message bytes are plain ASCII, so any server takes them without the
# 8BITMIME or SMTPUTF8 extensions.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")

_ACCENTS = {
    "PLACED": "#0969da", "FILLED": "#9a6700", "FINAL_FILLED": "#1a7f37",
    "PLACE_FAILED": "#cf222e", "MODIFY_SUCCESS": "#8250df", "MODIFY_FAILED": "#cf222e",
    "CANCEL_SUCCESS": "#57606a", "CANCEL_FAILED": "#cf222e", "EXPIRED": "#57606a",
}


def parse_address(text: str) -> Address:
    """One mailbox, ``alerts@example.com`` or ``Poller <alerts@example.com>``.

    :raises ValueError: not exactly one well-formed ASCII address, or a control character.
    """
    if _CONTROL.search(text) or "\n" in text:
        raise ValueError("an e-mail address cannot contain line breaks or control characters")
    try:
        header = email.policy.default.header_factory("To", text)
        addresses = header.addresses
        defects = header.defects
    except Exception:  # the header parser raises IndexError & co. on some malformed input
        addresses, defects = (), (True,)
    if len(addresses) != 1 or defects or not _ADDR_SPEC.match(addresses[0].addr_spec):
        raise ValueError(f"not an e-mail address like alerts@example.com: {text!r}")
    address: Address = addresses[0]
    return address


def _address(text: str) -> str:
    return str(parse_address(text.strip()))


EmailAddress = Annotated[str, AfterValidator(_address)]


class EmailConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "email"``."""

    kind: Literal["email"] = "email"
    host: str = Field(description="The SMTP submission server (name or IP address).")
    port: int = Field(default=587, ge=1, le=65535,
                      description="Default by security: 587 starttls, 465 tls, 25 none.")
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls (upgrade, required), tls (implicit TLS), none (plain text).",
    )
    username: str | None = Field(default=None, description="Login name (with password).")
    password: SecretStr | None = Field(default=None, description="Login password (a secret).")
    sender: EmailAddress = Field(description='From address, e.g. "poller <alerts@example.com>".')
    recipients: list[EmailAddress] = Field(min_length=1, description="To addresses.")
    subject_prefix: str = Field(default="[poller]", description="Put before every subject.")
    html: bool = Field(default=True, description="Add an HTML alternative to the plain text.")
    validate_certs: bool = Field(default=True,
                                 description="Verify the server's TLS certificate and name.")
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of CA certificates to trust besides the system ones "
                    "(a private CA, or the server's own self-signed certificate).",
    )
    max_per_minute: int = Field(
        default=30, ge=1, le=10_000,
        description="Send at most this many messages in any 60 s (Microsoft 365: 30/min).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        # The port follows the security mode unless it was given.
        if isinstance(data, dict) and data.get("port") is None:
            security = data.get("security", "starttls")
            port = DEFAULT_PORTS.get(security) if isinstance(security, str) else None
            if port is not None:
                return {**data, "port": port}
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not value or _CONTROL.search(value) or any(c.isspace() for c in value):
            raise ValueError("must be a host name or IP address")
        return value

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if _CONTROL.search(value) or _LINE_BREAKS.search(value):
            raise ValueError("cannot contain line breaks or control characters")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("file not found")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")
        if self.username is not None and self.security == "none" and not is_loopback(self.host):
            raise ValueError('refusing to send the password unencrypted: use security = '
                             '"starttls" or "tls" ("none" is allowed only to a loopback host)')
        return self




def one_line(text: str) -> str:
    """``text`` with line breaks and control characters flattened to single spaces."""
    return " ".join(_CONTROL.sub(" ", _LINE_BREAKS.sub(" ", text)).split())


#: U+2060 WORD JOINER: invisible, and it keeps "=?" in broker text from being read as the
#: start of an RFC 2047 encoded-word.
_WORD_JOINER = "\u2060"


def subject(prefix: str, title: str) -> str:
    """The Subject header: prefix and title on one line (no header injection).

    Broker text such as ``=?utf-8?b?SGFja2Vk?=`` would be decoded as an encoded-word — by
    Python's own header parser when the header is set, and by every mail client when it is
    read — so the Subject would say something the broker never sent. A word joiner after
    each ``=`` of ``=?`` breaks the syntax; the word is then sent encoded and reads as the
    literal text."""
    return one_line(f"{prefix} {title}").replace("=?", f"={_WORD_JOINER}?")


def _lines(text: str) -> list[str]:
    # Normalise every kind of line break and drop control characters (keep tabs).
    return [_CONTROL.sub("", line).rstrip() for line in _LINE_BREAKS.split(text)]


def plain_text(message: Message) -> str:
    """The text/plain part: the title, a blank line, the body."""
    return "\n".join([one_line(message.title), "", *_lines(message.body)]).rstrip() + "\n"


def html_text(message: Message) -> str:
    """The text/html part: a small readable layout, every rendered character escaped."""
    title = html.escape(one_line(message.title))
    accent = "#cf222e" if message.event_type == "SYSTEM" else _ACCENTS.get(message.scene,
                                                                            "#57606a")
    paragraphs = "\n".join(f'<p style="margin:0 0 6px">{html.escape(line)}</p>'
                           for line in _lines(message.body) if line.strip())
    return (
        "<!DOCTYPE html>\n"
        f'<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        '<body style="margin:0;padding:16px;font-family:-apple-system,\'Segoe UI\','
        'Helvetica,Arial,sans-serif;font-size:14px;line-height:1.45;color:#1f2328">\n'
        f'<div style="border-left:4px solid {accent};padding:2px 0 2px 12px">\n'
        f'<h1 style="margin:0 0 10px;font-size:16px;font-weight:600">{title}</h1>\n'
        f"{paragraphs}\n"
        "</div>\n"
        '<p style="margin:14px 0 0;font-size:12px;color:#57606a">Sent by poller.</p>\n'
        "</body></html>\n"
    )


class _AllRecipientsRefused(Exception):
    """Every RCPT TO was refused (carries the refusals)."""

    def __init__(self, refused: dict[str, aiosmtplib.SMTPRecipientRefused]) -> None:
        super().__init__("all recipients refused")
        self.refused = refused


class EmailNotifier(Notifier[EmailConfig]):
    """Sends each event as one mail over a reused SMTP connection (see the module doc).

    Pacing and the idle limit both run on the event loop's clock, so tests drive them with
    a loop whose clock they control.
    """

    kind: ClassVar[str] = "email"
    #: A person reads these: partial fills of one order within 10 s are one message.
    coalesce_fills_default: ClassVar[float] = 10.0
    Config: ClassVar[type[NotifierConfig]] = EmailConfig
    uses_http: ClassVar[bool] = False
    #: max_per_minute is the operator's own figure, already below the provider's limit.
    pacing: ClassVar[tuple[Pace, ...]] = (Pace("max_per_minute", per=60.0),)
    max_pacing_sleep: ClassVar[float | None] = MAX_PACING_SLEEP

    def __init__(
        self, name: str, config: EmailConfig, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__(name, config, client)
        self._domain = parse_address(config.sender).domain
        self._envelope_from = parse_address(config.sender).addr_spec
        self._envelope_to = [parse_address(r).addr_spec for r in config.recipients]
        self._smtp: aiosmtplib.SMTP | None = None
        self._transport: asyncio.BaseTransport | None = None  # outermost (TLS) transport
        self._last_used = 0.0
        self._lock = asyncio.Lock()  # one SMTP transaction at a time on the connection
        #: SMTP connections opened so far (status output and tests).
        self.connections = 0

    # -- the message --------------------------------------------------------------------

    def build(self, message: Message, *, message_id: str | None = None) -> EmailMessage:
        """The mail for ``message``; ``message_id`` defaults to a fresh unique one."""
        cfg = self.config
        mail = EmailMessage(policy=_POLICY)
        mail["Subject"] = subject(cfg.subject_prefix, message.title)
        mail["From"] = cfg.sender
        mail["To"] = ", ".join(cfg.recipients)
        mail["Date"] = email.utils.format_datetime(utcnow())
        mail["Message-ID"] = message_id or email.utils.make_msgid("poller", domain=self._domain)
        mail["Auto-Submitted"] = "auto-generated"
        if message.short_id:
            mail["X-Poller-Event"] = message.short_id
        mail.set_content(plain_text(message))
        if cfg.html:
            mail.add_alternative(html_text(message), subtype="html")
        return mail

    async def send(self, event: OrderEvent) -> None:
        """Mail one event, with a Message-ID stable across retries of that event."""
        await self._deliver(self.render(event), message_id=f"<{event.id}@{self._domain}>")

    async def send_message(self, message: Message) -> None:
        """Mail one rendered message (digests); see the module doc for the outcomes.

        Its Message-ID is derived from the message itself, so a retry of the same digest
        keeps it (a mail client then shows one mail, not one per attempt)."""
        digest = hashlib.sha256(f"{message.scene}\0{message.title}\0{message.body}"
                                .encode()).hexdigest()[:32]
        await self._deliver(message, message_id=f"<digest-{digest}@{self._domain}>")

    async def _deliver(self, message: Message, *, message_id: str | None) -> None:
        payload = self.build(message, message_id=message_id).as_bytes()
        async with self._lock, self.pace():
            refused = await self._transmit(payload)
        if refused:
            logger.warning(
                "%s: %s delivered, but %d of %d recipients were refused: %s", self.service,
                message.short_id or message.title[:60], len(refused), len(self._envelope_to),
                "; ".join(f"{rcpt} ({self._reply(err)})" for rcpt, err in refused.items()))

    # -- the SMTP conversation ----------------------------------------------------------

    async def _transmit(self, payload: bytes) -> dict[str, aiosmtplib.SMTPRecipientRefused]:
        """Run one mail transaction; returns the refused recipients (some were accepted)."""
        failure: NotifierError | None = None
        for attempt in (1, 2):
            smtp, reused = await self._connection()
            step = "MAIL FROM"
            try:
                options = [f"SIZE={len(payload)}"] if smtp.supports_extension("size") else []
                await smtp.mail(self._envelope_from, options=options)
                step = "RCPT TO"
                refused = await self._recipients(smtp)
                step = "DATA"
                await smtp.data(payload)
            except Exception as err:
                self._drop()  # a failed transaction leaves the session in an unknown state
                if attempt == 1 and reused and step != "DATA" and _stale(err):
                    # The server closed our idle session (silently, or with 421 to the next
                    # command) before the message was handed over: one fresh connection.
                    logger.debug("%s: the server closed the reused connection; reconnecting",
                                 self.service)
                    continue
                failure = self._error(err, step)
                break
            except BaseException:
                self._drop()  # cancelled (the dispatcher's time limit): mid-transaction
                raise
            self._last_used = asyncio.get_running_loop().time()
            return refused
        # Raised outside the except block, so neither __cause__ nor __context__ carries the
        # library's exception (whose text may hold a server reply echoing credentials).
        assert failure is not None
        raise failure

    async def _recipients(self, smtp: aiosmtplib.SMTP
                          ) -> dict[str, aiosmtplib.SMTPRecipientRefused]:
        refused: dict[str, aiosmtplib.SMTPRecipientRefused] = {}
        for rcpt in self._envelope_to:
            try:
                await smtp.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as err:
                if err.code == 421:
                    raise  # the server is closing the session: not about this recipient
                refused[rcpt] = err
        if len(refused) == len(self._envelope_to):
            raise _AllRecipientsRefused(refused)
        return refused

    async def _connection(self) -> tuple[aiosmtplib.SMTP, bool]:
        """The open connection and True, or a new one (connected, TLS, logged in) and False."""
        smtp = self._smtp
        if smtp is not None:
            now = asyncio.get_running_loop().time()
            if smtp.is_connected and now - self._last_used <= MAX_IDLE:
                return smtp, True
            await self._close()
        cfg = self.config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, timeout=cfg.timeout,
            use_tls=cfg.security == "tls",
            start_tls=False,  # done explicitly below, so a missing STARTTLS is an error
            validate_certs=cfg.validate_certs,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
        )
        step = "connect"
        failure: NotifierError | None = None
        # Held here as well: aiosmtplib forgets the transport when it closes it itself.
        self._smtp = smtp
        try:
            await smtp.connect()
            self._transport = smtp.transport
            if cfg.security == "starttls":
                step = "STARTTLS"
                await smtp.starttls()
                self._transport = smtp.transport
            if cfg.username is not None and cfg.password is not None:
                step = "AUTH"
                await smtp.login(cfg.username, cfg.password.get_secret_value())
        except Exception as err:
            self._drop()
            failure = self._error(err, step)
        except BaseException:
            self._drop()
            raise
        if failure is not None:
            raise failure  # outside the except block: no library exception chained
        self.connections += 1
        self._last_used = asyncio.get_running_loop().time()
        logger.debug("%s: opened SMTP connection %d (%s)", self.service, self.connections,
                     cfg.security)
        return smtp, False

    def _drop(self) -> None:
        """Close the connection at once (after a failure: no QUIT into an unknown state).

        The transport is aborted rather than closed: a TLS close would wait for the
        server's close_notify, up to 30 s, from a server that may be hung; abort closes
        the socket on the loop's next iteration.
        """
        smtp, self._smtp = self._smtp, None
        transport, self._transport = self._transport, None
        if smtp is not None:
            smtp.close()
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    async def _close(self) -> None:
        """Close the connection politely: QUIT, then close whatever the answer."""
        if self._smtp is None:
            return
        smtp = self._smtp
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=min(5.0, self.config.timeout))
        except (aiosmtplib.SMTPException, OSError):
            pass  # the server may have gone already; we are closing anyway
        finally:
            self._drop()  # the session is over after QUIT: nothing left to flush
        await asyncio.sleep(0)  # one loop iteration: the socket is closed when we return

    async def aclose(self) -> None:
        """Say QUIT on the open SMTP connection and close it."""
        async with self._lock:
            await self._close()
        await super().aclose()

    # -- outcomes -----------------------------------------------------------------------

    def _reply(self, err: aiosmtplib.SMTPResponseException) -> str:
        """``550 5.1.1 no such user``: the server's reply, short, on one line, masked."""
        text = one_line(err.message)
        if self.config.password is not None:
            secret = self.config.password.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        if self.config.username and len(self.config.username) >= 3:
            text = text.replace(self.config.username, "<username>")
        return f"{err.code} {text[:200]}".strip()

    def _error(self, err: Exception, step: str) -> NotifierError:
        """The poller delivery error ``err`` (raised during ``step``) means."""
        service = self.service
        if isinstance(err, _AllRecipientsRefused):
            replies = "; ".join(self._reply(e) for e in err.refused.values())
            text = f"{service}: every recipient refused at RCPT TO: {replies}"
            if any(400 <= e.code < 500 for e in err.refused.values()):
                return DeliveryRetryable(text)
            return DeliveryFailed(text)
        if isinstance(err, aiosmtplib.SMTPResponseException):
            what = {"connect": "the connection", "AUTH": "the login"}.get(step, step)
            text = f"{service}: the server refused {what}: {self._reply(err)}"
            if 500 <= err.code < 600:
                return DeliveryFailed(text)
            return DeliveryRetryable(text)  # 4xx, and anything unexpected: try again later
        if step == "DATA" and isinstance(err, aiosmtplib.SMTPTimeoutError | ConnectionError):
            return DeliveryUncertain(
                f"{service}: no answer after sending the message ({_kind(err)}); "
                "it may have been delivered")
        if isinstance(err, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPConnectTimeoutError):
            cause = err.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                return DeliveryRetryable(f"{service}: TLS certificate not trusted "
                                         f"({cause.verify_message})")
            if isinstance(cause, ssl.SSLError):
                return DeliveryRetryable(f"{service}: TLS handshake failed ({cause.reason})")
            return DeliveryRetryable(f"{service}: cannot connect ({_kind(err)})")
        if isinstance(err, ssl.SSLCertVerificationError):  # raised by STARTTLS
            return DeliveryRetryable(f"{service}: TLS certificate not trusted "
                                     f"({err.verify_message})")
        if isinstance(err, ssl.SSLError):
            return DeliveryRetryable(f"{service}: TLS handshake failed ({err.reason})")
        if isinstance(err, aiosmtplib.SMTPTimeoutError):
            return DeliveryRetryable(f"{service}: no answer to {step} (timeout)")
        if isinstance(err, aiosmtplib.SMTPServerDisconnected | OSError):
            return DeliveryRetryable(f"{service}: connection lost at {step} ({_kind(err)})")
        if isinstance(err, aiosmtplib.SMTPException):
            # Raised without a reply: the server lacks STARTTLS or AUTH (or an extension we
            # need). Trying again will not change its capabilities.
            return DeliveryFailed(f"{service}: cannot {step}: {one_line(err.message)[:200]}")
        return DeliveryFailed(f"{service}: {step} failed ({type(err).__name__})")


def _stale(err: BaseException) -> bool:
    """Whether ``err`` says the server had closed the session (idle timeout, restart)."""
    if isinstance(err, aiosmtplib.SMTPServerDisconnected):
        return True
    return isinstance(err, aiosmtplib.SMTPResponseException) and err.code == 421


def _kind(err: BaseException) -> str:
    """``timeout``, or the innermost cause's class name (``ConnectionRefusedError``)."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    if any(isinstance(e, TimeoutError) for e in chain):
        return "timeout"  # asyncio timeouts chain a CancelledError underneath: not the story
    return type(chain[-1]).__name__


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the email notifier."""
    register(EmailNotifier)
