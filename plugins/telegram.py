"""The ``telegram`` notifier: Bot API ``sendMessage`` to one or several chats.

* **Markup.** Templates render plain text; here every character is escaped for the chosen
  ``parse_mode`` (HTML or MarkdownV2) and only the title is made bold, so nothing a broker
  sends can inject markup or break parsing.
* **Length.** Telegram refuses texts over 4096 characters after entity parsing (the text
  the reader sees, counted in UTF-16 units; markup and escapes do not count). Longer
  messages are split into
  numbered parts (``(1/3)``), each valid markup on its own: a cut never falls inside an
  escape, an entity or a tag, and a bold run cut in two is closed and reopened.
* **Pacing.** Telegram's limits are unpublished but widely documented: about 30 messages/s
  per bot, about 1/s per chat and 20/min per group. They are declared on the class (the
  figures come from the config); every chat has its own buckets, and a 429's
  ``retry_after`` pauses the chat's buckets and the bot-wide one.
* **Several chats.** Parts already accepted by a chat are remembered (in memory, for the
  life of the notifier), so when chat 2 fails after chat 1 succeeded, the retry sends only
  what is missing. Residual duplicates: after a restart that memory is gone and a retried
  event goes to every chat again; an uncertain send (no answer after sending) is re-sent.
  Each message carries the event's short id (``#7F3A``) so people can spot a duplicate.
* **Token secrecy.** The bot token is part of the URL path. Errors never contain the URL
  or anything httpx says about it, and httpx's own request log lines are scrubbed.

Over 400 lines: a whole service client: markup escaping and splitting that stays valid in
both parse modes, per-chat delivery memory, and the Bot API's outcome table belong together.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from poller import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    DeliveryUncertain,
    LogScrubber,
    Message,
    Notifier,
    NotifierConfig,
    NotifierError,
    OrderEvent,
    Pace,
    Redactor,
    classify,
    hookimpl,
    retry_after_seconds,
)

#: Telegram's limit on a message text (core.telegram.org/bots/api#sendmessage).
MAX_LENGTH = 4096
#: Characters MarkdownV2 requires escaping outside code (core.telegram.org/bots/api
#: #markdownv2-style), plus the backslash itself.
MARKDOWN_V2_SPECIAL = frozenset("_*[]()~`>#+-=|{}.!\\")
#: Partly delivered messages remembered at most (oldest forgotten first).
PENDING_MAX = 1000
#: A 429 without retry_after (Telegram always says one): pause this long to be safe.
DEFAULT_PAUSE = 30.0
#: Loggers that print request URLs (httpx at INFO); httpcore logs no paths.
URL_LOGGERS = ("httpx",)

_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_CHAT = re.compile(r"^(-?\d+|@[A-Za-z][A-Za-z0-9_]{4,})$")


class TelegramConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "telegram"``."""

    kind: Literal["telegram"] = "telegram"
    bot_token: SecretStr = Field(description='The bot token from @BotFather, "123456:ABC-…".')
    chat_ids: list[str] = Field(
        min_length=1,
        description='Chats to send to: ids ("-100…" for groups) or "@channelname".',
    )
    api_base: str = Field(default="https://api.telegram.org",
                          description="Bot API server (a local telegram-bot-api server).")
    parse_mode: Literal["HTML", "MarkdownV2"] = Field(
        default="HTML", description="Markup used to make the title bold.")
    disable_notification: bool = Field(default=False,
                                       description="Deliver silently (no sound).")
    per_chat_per_second: float = Field(
        default=1.0, gt=0, le=1.0, description="Messages per second to one chat (Telegram: ~1).")
    group_per_minute: int = Field(
        default=20, ge=1, le=20, description="Messages per minute to one group or channel.")
    global_per_second: int = Field(
        default=30, ge=1, le=30, description="Messages per second over all chats (Telegram: 30).")
    max_parts: int = Field(
        default=10, ge=1, le=50, description="Longest message, in 4096-character parts.")

    @field_validator("bot_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        # Never echo the value: it is the bot's password.
        if not _TOKEN.match(value.get_secret_value()):
            raise ValueError('not a bot token (expected "<digits>:<letters>", without "bot")')
        return value

    @field_validator("chat_ids", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # An environment variable or credential file gives one string: "1234, -100567".
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("chat_ids")
    @classmethod
    def _chats(cls, value: list[str]) -> list[str]:
        for index, chat in enumerate(value):
            if not _CHAT.match(chat):
                raise ValueError(f"entry {index} ({chat!r}) is not a chat id or @channelname")
        if len(set(value)) != len(value):
            raise ValueError("a chat is listed twice")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("not a URL") from None
        if url.scheme not in ("http", "https") or not url.host or url.query:
            raise ValueError("must be an http:// or https:// URL without a query")
        return value.rstrip("/")


# --- markup -----------------------------------------------------------------------------


def escape_html(text: str) -> str:
    """Escape text for Telegram's HTML mode (``&``, ``<``, ``>``)."""
    return html.escape(text, quote=False)


def escape_markdown_v2(text: str) -> str:
    """Escape text for MarkdownV2: a backslash before every special character."""
    return "".join(f"\\{c}" if c in MARKDOWN_V2_SPECIAL else c for c in text)


@dataclass(frozen=True)
class Markup:
    """How one parse mode escapes text and writes bold."""

    escape: Callable[[str], str]
    bold_open: str
    bold_close: str


MARKUPS: dict[str, Markup] = {
    "HTML": Markup(escape_html, "<b>", "</b>"),
    "MarkdownV2": Markup(escape_markdown_v2, "*", "*"),
}


def units(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts in.

    The Bot API limit is 4096 characters *after entity parsing*: the text the reader sees,
    not the markup sent. So a part is measured by its plain characters (``&amp;`` is one,
    ``<b>`` none); measuring the escaped text split a 4 090-character body of ``&`` into six
    parts where Telegram takes one.
    """
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class _Atom:
    """One plain character with its escaped form: the smallest thing a cut may separate."""

    plain: str
    escaped: str
    size: int
    bold: bool


def _render(atoms: Sequence[_Atom], markup: Markup) -> str:
    out: list[str] = []
    bold = False
    for atom in atoms:
        if atom.bold != bold:
            out.append(markup.bold_open if atom.bold else markup.bold_close)
            bold = atom.bold
        out.append(atom.escaped)
    if bold:
        out.append(markup.bold_close)
    return "".join(out)


def _suffix_plain(index: int, count: int, truncated: bool) -> str:
    return f"\n({index}/{count}{', truncated' if truncated else ''})"


def _suffix(index: int, count: int, truncated: bool, markup: Markup) -> str:
    return markup.escape(_suffix_plain(index, count, truncated))


def _parsed(atoms: Sequence[_Atom]) -> int:
    """The length Telegram counts for these atoms: their plain characters."""
    return sum(atom.size for atom in atoms)


def render_parts(title: str, body: str, parse_mode: str, *, limit: int = MAX_LENGTH,
                 max_parts: int = 10) -> list[str]:
    """The texts to send for one message: the title in bold, then the body, all escaped.

    A text longer than ``limit`` (UTF-16 units of the parsed text) is split into parts that
    end in ``(i/n)``; each is valid markup on its own and at most ``limit`` long. Cuts
    prefer the end of a line, then a space. Beyond ``max_parts`` the rest is dropped and
    the last part says ``truncated``.
    """
    markup = MARKUPS[parse_mode]
    if limit < 64:
        raise ValueError("limit too small to hold a part")
    atoms: list[_Atom] = []
    for text, bold in ((title, True), (f"\n{body}" if title and body else body, False)):
        for char in text:
            escaped = markup.escape(char)
            atoms.append(_Atom(char, escaped, units(char), bold))
    if not atoms:
        atoms = [_Atom(char, markup.escape(char), 1, False) for char in "(empty message)"]
    if _parsed(atoms) <= limit:
        return [_render(atoms, markup)]

    budget = limit - units(_suffix_plain(99, 99, True))
    bold_size = 0  # markup is not counted: Telegram measures the parsed text
    lookback = max(1, budget // 8)
    parts: list[list[_Atom]] = []
    current: list[_Atom] = []
    size = 0  # rendered size of ``current``, a bold run counted as closed

    def cost(atom: _Atom, after: _Atom | None) -> int:
        opens = atom.bold and not (after is not None and after.bold)
        return atom.size + (bold_size if opens else 0)

    for atom in atoms:
        step = cost(atom, current[-1] if current else None)
        if size + step > budget and current:
            cut = _soft_cut(current, lookback)
            carry = current[cut:]
            if _parsed(carry) + cost(atom, carry[-1] if carry else None) > budget:
                cut, carry = len(current), []
            parts.append(current[:cut])
            current = carry
            size = _parsed(current)
            step = cost(atom, current[-1] if current else None)
        current.append(atom)
        size += step
    parts.append(current)

    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    count = len(parts)
    return [_render(part, markup) + _suffix(i, count, truncated and i == count, markup)
            for i, part in enumerate(parts, 1)]


def _soft_cut(atoms: list[_Atom], lookback: int) -> int:
    """Where to cut a full part: after its last newline, else its last space, if near the end."""
    start = max(1, len(atoms) - lookback)
    for wanted in ("\n", " "):
        for index in range(len(atoms) - 1, start - 1, -1):
            if atoms[index].plain == wanted:
                return index + 1
    return len(atoms)


# --- delivery ---------------------------------------------------------------------------


@dataclass
class _Pending:
    """A message not yet accepted by every chat: its parts and what went through."""

    parts: list[str]
    done: set[tuple[str, int]] = field(default_factory=set)



def is_group(chat_id: str) -> bool:
    """Groups, supergroups and channels: negative ids or ``@channelname``."""
    return chat_id.startswith(("-", "@"))


class TelegramNotifier(Notifier[TelegramConfig]):
    """Sends each message to every configured chat, split and paced as Telegram requires."""

    kind: ClassVar[str] = "telegram"
    #: A person reads these: partial fills of one order within 10 s are one message.
    coalesce_fills_default: ClassVar[float] = 10.0
    Config: ClassVar[type[NotifierConfig]] = TelegramConfig
    pacing: ClassVar[tuple[Pace, ...]] = (
        Pace("global_per_second"),  # the bot, over all chats
        Pace("per_chat_per_second", per_target=True),  # each chat
        Pace("group_per_minute", per=60.0, per_target=True, applies_to=is_group),
    )

    def __init__(
        self, name: str, config: TelegramConfig, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__(name, config, client)
        self._token = config.bot_token.get_secret_value()
        self._redact = Redactor([self._token])
        self._scrubber = LogScrubber([self._token], URL_LOGGERS)
        self._scrubber.install()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def preview(self, event: OrderEvent) -> str:
        """The texts (with markup) this notifier would send to each chat for ``event``."""
        message = self.render(event)
        parts = render_parts(message.title, message.body, self.config.parse_mode,
                             max_parts=self.config.max_parts)
        return "\n\n".join(parts)

    async def send(self, event: OrderEvent) -> None:
        """Deliver one event to every chat (a retry sends only what is still missing)."""
        await self._deliver(event.id, lambda: self.render(event))

    async def send_message(self, message: Message) -> None:
        """Deliver a rendered message (digests); remembered by its content."""
        key = "msg:" + hashlib.sha256(
            f"{message.title}\0{message.body}\0{message.short_id}".encode()).hexdigest()
        await self._deliver(key, lambda: message)

    async def _deliver(self, key: str, message: Callable[[], Message]) -> None:
        """Send every part to every chat; raise the most useful error at the end.

        Chats are independent: a chat that fails does not keep the others from getting the
        message. A 429 stops at once (sending more would only prolong the flood wait).
        """
        if self.client is None:
            raise DeliveryFailed(f"{self.service}: no HTTP client")
        pending = self._pending.get(key)
        if pending is None:
            # Rendered once: a retry re-sends exactly the same parts (not a new "late" text).
            msg = message()
            pending = _Pending(render_parts(msg.title, msg.body, self.config.parse_mode,
                                            max_parts=self.config.max_parts))
            self._pending[key] = pending
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
        self._pending.move_to_end(key)
        failures: list[NotifierError] = []
        for chat in self.config.chat_ids:
            try:
                for index, text in enumerate(pending.parts):
                    if (chat, index) in pending.done:
                        continue
                    await self._send_part(chat, text)
                    pending.done.add((chat, index))
            except DeliveryRateLimited:
                raise
            except (DeliveryRetryable, DeliveryFailed) as err:
                failures.append(err)
        if not failures:
            self._pending.pop(key, None)
            return
        retryable = [f for f in failures if isinstance(f, DeliveryRetryable)]
        if retryable:
            raise retryable[0]
        raise DeliveryFailed("; ".join(str(f) for f in failures))

    async def _send_part(self, chat: str, text: str) -> None:
        """One ``sendMessage`` call, paced and classified.

        A long pacing wait is handed back to the dispatcher as ``retry_after``; the parts
        already sent are remembered, so the retry repeats nothing. A flood wait raised by
        :meth:`_classify` pauses the chat's buckets and the bot-wide one.
        """
        assert self.client is not None
        request = self.client.build_request(
            "POST", f"{self.config.api_base}/bot{self._token}/sendMessage",
            json={
                "chat_id": chat,
                "text": text,
                "parse_mode": self.config.parse_mode,
                "disable_notification": self.config.disable_notification,
                # Broker text is not ours to preview; links stay plain.
                "link_preview_options": {"is_disabled": True},
            },
        )
        async with self.pace(chat):
            status, body, text_answer, header = await self._exchange(request, chat)
            self._classify(chat, status, body, text_answer, header)

    async def _exchange(self, request: httpx.Request, chat: str
                        ) -> tuple[int, Any, str, str | None]:
        """Send the request; status, parsed JSON body, text and Retry-After header.

        The same outcome table as :func:`poller.notifiers.post` for network errors, but the
        error is raised *outside* the ``except`` block: an httpx exception carries the
        request, whose URL holds the token, and must not even be our error's ``__context__``.
        """
        assert self.client is not None
        failure: NotifierError | None = None
        try:
            response = await self.client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            failure = DeliveryRetryable(
                f"{self.service}: chat {chat}: cannot connect ({type(err).__name__})")
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError,
                httpx.ReadError, httpx.WriteError) as err:
            failure = DeliveryUncertain(
                f"{self.service}: chat {chat}: no answer after sending ({type(err).__name__})")
        except httpx.HTTPError as err:
            failure = DeliveryRetryable(
                f"{self.service}: chat {chat}: request failed ({type(err).__name__})")
        if failure is not None:
            raise failure
        text = response.text
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        return response.status_code, body, text, response.headers.get("retry-after")

    def _classify(self, chat: str, status: int, body: Any, text: str,
                  header: str | None) -> None:
        """Raise what a Bot API answer means; return when the chat accepted the part."""
        ok = isinstance(body, dict) and body.get("ok") is True
        if 200 <= status < 300 and ok:
            return
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        code = data.get("error_code") if isinstance(data.get("error_code"), int) else status
        # Redact before cutting: a cut through the token would hide it from the redactor.
        description = self._redact(str(data.get("description") or text))[:200].strip()
        raw_parameters = data.get("parameters")
        parameters: dict[str, Any] = raw_parameters if isinstance(raw_parameters, dict) else {}
        where = f"{self.service}: chat {chat}"
        if 200 <= status < 300:
            raise DeliveryUncertain(f"{where}: unexpected answer (HTTP {status}, not ok)")
        if code == 429 or status == 429:
            retry_after = _seconds(parameters.get("retry_after"))
            if retry_after is None:
                retry_after = retry_after_seconds(header)
            # The flood wait applies to the bot: pace() pauses the chat and the bot-wide
            # bucket for this long.
            pause = retry_after if retry_after is not None else DEFAULT_PAUSE
            raise DeliveryRateLimited(f"{where}: {description or 'Too Many Requests'}",
                                      retry_after=pause)
        if status in (401, 404):
            raise DeliveryFailed(f"{where}: Telegram refused the bot token (HTTP {status}"
                                 f"{': ' + description if description else ''}); "
                                 "check bot_token")
        migrated = parameters.get("migrate_to_chat_id")
        if migrated is not None:
            raise DeliveryFailed(f"{where}: {description}; the group is now a supergroup, "
                                 f"use chat id {migrated}")
        if status in (400, 403):
            raise DeliveryFailed(f"{where}: {description or f'HTTP {status}'}")
        classify(status, service=where, retry_after=retry_after_seconds(header),
                 detail=description)
        raise DeliveryUncertain(f"{where}: unexpected answer (HTTP {status})")

    async def aclose(self) -> None:
        """Stop scrubbing the httpx log and close the HTTP client."""
        self._scrubber.remove()
        await super().aclose()


def _seconds(value: Any) -> float | None:
    """A JSON ``retry_after``: a finite number of seconds, clamped like a Retry-After
    header (an infinite or absurd value must not park the chat for ever)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return retry_after_seconds(str(value))


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the Telegram notifier."""
    register(TelegramNotifier)
