"""The ``slack`` notifier: Block Kit messages to a Slack incoming webhook.

The webhook URL is the credential (anyone holding it can post to the channel), so it is a
secret: it never appears in errors, and the records httpx logs about it are scrubbed.
Slack allows about one message per second per webhook: the notifier declares that pace
(``per_second``), the base keeps it, and a 429's ``Retry-After`` pauses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from poller import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    LogScrubber,
    Message,
    Notifier,
    NotifierConfig,
    OrderEvent,
    Pace,
    Redactor,
    hookimpl,
    is_loopback,
    post,
)

#: Hosts that serve Slack incoming webhooks (commercial and GovSlack).
SLACK_HOSTS = frozenset({"hooks.slack.com", "hooks.slack-gov.com"})
#: Block Kit limits (api.slack.com/reference/block-kit/blocks): header text, section text,
#: blocks per message; and where we cut the plain-text fallback (notifications, previews).
HEADER_MAX = 150
SECTION_MAX = 3000
MAX_BLOCKS = 50
FALLBACK_MAX = 3000
#: A 429 without Retry-After (Slack always sends one): pause this long to be safe.
DEFAULT_PAUSE = 30.0
#: Loggers that print request URLs: httpx logs every request URL at INFO.
URL_LOGGERS = ("httpx",)


class SlackConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "slack"``."""

    kind: Literal["slack"] = "slack"
    webhook_url: SecretStr = Field(
        description="The incoming-webhook URL, https://hooks.slack.com/services/… (a secret)."
    )
    username: str | None = Field(
        default=None, description="Sender name override (legacy webhooks only)."
    )
    icon_emoji: str | None = Field(
        default=None, description='Sender icon override, e.g. ":chart:" (legacy webhooks only).'
    )
    per_second: float = Field(
        default=1.0, gt=0, le=1.0,
        description="Messages per second to this webhook (Slack allows about 1).",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr) -> SecretStr:
        # The messages never echo the value: a webhook URL is a credential.
        try:
            url = httpx.URL(value.get_secret_value())
        except httpx.InvalidURL:
            raise ValueError("not a URL") from None
        if is_loopback(url.host):
            # A local relay or test receiver; plain http is fine on the loopback interface.
            if url.scheme not in ("http", "https"):
                raise ValueError("must be an http:// or https:// URL")
            return value
        if url.scheme != "https" or url.host not in SLACK_HOSTS:
            raise ValueError("must be a Slack incoming-webhook URL "
                             "(https://hooks.slack.com/services/…)")
        if not url.path.startswith("/services/") or url.path.rstrip("/") == "/services":
            raise ValueError("must be an incoming-webhook URL (path /services/…); workflow "
                             "webhooks take a different payload")
        return value

    @field_validator("icon_emoji")
    @classmethod
    def _emoji(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) > 2 and value[0] == value[-1] == ":"):
            raise ValueError('must look like ":chart_with_upwards_trend:"')
        return value



def escape_mrkdwn(text: str) -> str:
    """Escape text for Slack ``mrkdwn``: only ``&``, ``<`` and ``>`` have escapes.

    ``<…>`` is Slack's syntax for links and mentions (``<!channel>``), so escaping these
    three keeps anything a broker sends from pinging a channel or forging a link.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escaped_chunks(text: str, limit: int) -> list[str]:
    """``escape_mrkdwn(text)`` cut into pieces of at most ``limit`` characters.

    Cuts fall between escaped characters, never inside an ``&amp;`` entity; a cut prefers
    the last newline of the piece's final quarter so lines stay whole.
    """
    chunks: list[str] = []
    piece: list[str] = []
    size = 0
    for char in text:
        escaped = escape_mrkdwn(char)
        if size + len(escaped) > limit and piece:
            cut = len(piece)
            # Look back over the final quarter *in characters*: pieces are escaped forms
            # (``&amp;`` is five), so counting pieces would look back too far.
            seen = 0
            for index in range(len(piece) - 1, 0, -1):
                seen += len(piece[index])
                if seen > limit // 4:
                    break
                if piece[index] == "\n":
                    cut = index + 1
                    break
            chunks.append("".join(piece[:cut]))
            piece = piece[cut:]
            size = sum(len(p) for p in piece)
        piece.append(escaped)
        size += len(escaped)
    if piece:
        chunks.append("".join(piece))
    # Slack refuses a section whose text is only whitespace (a run of blank lines cut off).
    return [chunk for chunk in chunks if chunk.strip()]


def cut_escaped(text: str, size: int) -> str:
    """The first ``size`` characters of escaped text, backing off an entity cut in half."""
    head = text[:size]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head


def blocks_for(message: Message) -> list[dict[str, Any]]:
    """The Block Kit blocks of a message: header (title), body sections, context (short id)."""
    title = message.title or message.scene or "poller"
    if len(title) > HEADER_MAX:
        title = title[:HEADER_MAX - 1] + "…"
    # plain_text is never parsed as markup, so the title needs no escaping.
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
    ]
    room = MAX_BLOCKS - 1 - (1 if message.short_id else 0)
    sections = escaped_chunks(message.body, SECTION_MAX) if message.body.strip() else []
    if len(sections) > room:
        marker = "\n… (truncated)"
        sections = sections[:room]
        sections[-1] = cut_escaped(sections[-1], SECTION_MAX - len(marker)) + marker
    for text in sections:
        # verbatim: no automatic linking of URLs, channel names or @mentions in broker text.
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": text, "verbatim": True}})
    if message.short_id:
        blocks.append({"type": "context",
                       "elements": [{"type": "mrkdwn", "text": escape_mrkdwn(message.short_id),
                                     "verbatim": True}]})
    return blocks


def payload_for(message: Message, config: SlackConfig) -> dict[str, Any]:
    """The JSON body POSTed to the webhook: blocks plus a plain-text ``text`` fallback."""
    fallback = escaped_chunks(message.text, FALLBACK_MAX)
    payload: dict[str, Any] = {
        # Shown in notifications and by clients that cannot render blocks.
        "text": fallback[0] if fallback else escape_mrkdwn(message.scene),
        "blocks": blocks_for(message),
    }
    if config.username:
        payload["username"] = config.username
    if config.icon_emoji:
        payload["icon_emoji"] = config.icon_emoji
    return payload



def url_secrets(url: str) -> list[str]:
    """The forms a webhook URL can take in a log line: as written, as httpx prints it, path."""
    parsed = httpx.URL(url)
    forms = [url, str(parsed), parsed.path, parsed.raw_path.decode("ascii", "replace")]
    return [form for form in forms if form.strip("/")]


class SlackNotifier(Notifier[SlackConfig]):
    """Posts each message to a Slack incoming webhook, paced to one per second or slower."""

    kind: ClassVar[str] = "slack"
    #: A person reads these: partial fills of one order within 10 s are one message.
    coalesce_fills_default: ClassVar[float] = 10.0
    Config: ClassVar[type[NotifierConfig]] = SlackConfig
    #: One webhook, one bucket: ``per_second`` messages a second (Slack: about 1).
    pacing: ClassVar[tuple[Pace, ...]] = (Pace("per_second"),)

    def __init__(
        self, name: str, config: SlackConfig, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__(name, config, client)
        self._secrets = url_secrets(config.webhook_url.get_secret_value())
        self._redact = Redactor(self._secrets)
        self._scrubber = LogScrubber(self._secrets, URL_LOGGERS)
        self._scrubber.install()

    def preview(self, event: OrderEvent) -> str:
        """The JSON body this notifier would POST for ``event``."""
        return json.dumps(payload_for(self.render(event), self.config), indent=2,
                          ensure_ascii=False)

    async def send_message(self, message: Message) -> None:
        """POST the message's blocks; return once Slack answered 2xx.

        :raises DeliveryRateLimited: Slack's 429 (Retry-After honoured, pacing paused), or the
            declared pacing would make this call wait longer than half the delivery timeout.
        :raises DeliveryRetryable: 5xx, 408, timeouts, connection errors.
        :raises DeliveryFailed: other 4xx (``invalid_payload``, ``no_service``,
            ``channel_is_archived``…), with Slack's answer in the text.
        """
        if self.client is None:
            raise DeliveryFailed(f"{self.service}: no HTTP client")
        request = self.client.build_request(
            "POST", self.config.webhook_url.get_secret_value(),
            json=payload_for(message, self.config),
        )
        async with self.pace():
            try:
                await post(self.client, request, service=self.service)
            except DeliveryRateLimited as err:
                # Raised inside pace(): it pauses the webhook's bucket for retry_after.
                pause = err.retry_after if err.retry_after is not None else DEFAULT_PAUSE
                raise DeliveryRateLimited(self._redact(str(err)), retry_after=pause) from None
            except DeliveryRetryable as err:
                # Keep the subclass (DeliveryUncertain) the dispatcher may care about.
                raise type(err)(self._redact(str(err)), retry_after=err.retry_after) from None
            except DeliveryFailed as err:
                # Slack's answer is a short code (invalid_payload); scrub in case a proxy
                # echoes the URL.
                raise DeliveryFailed(self._redact(str(err))) from None

    async def aclose(self) -> None:
        """Stop scrubbing the httpx log and close the HTTP client."""
        self._scrubber.remove()
        await super().aclose()


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the Slack notifier."""
    register(SlackNotifier)
