"""The ``apprise`` notifier: any of Apprise's 100+ services, one URL each (optional extra).

Needs ``pip install '.[apprise]'`` from a checkout; apprise is imported only when an ``apprise``
notifier is configured, so poller runs without it.

* Every URL is a secret (Apprise URLs embed tokens and passwords). Apprise's own privacy
  mode does not cover everything: at DEBUG it logs request URLs with paths (``json://``
  paths, Telegram bot tokens), its "Unsupported URL" error echoes the whole URL, and
  urllib3 logs request paths. A filter on those loggers redacts every part of the
  configured URLs (a few harmless words may be masked along with them).
* Apprise is synchronous: each URL is notified in a worker thread (``asyncio.to_thread``).
  Apprise's ``async_notify`` only runs the same blocking code in its own thread pool.
* Each URL is a separate target, and the targets that accepted a message are remembered
  for the life of the notifier, so a retry after a partial failure only re-sends to the
  others (after a restart, a retried message goes to every URL again).
* Outcomes are sorted like every other notifier's: Apprise's ``notify`` says only True or
  False, but its HTTP plugins log the status of a refusal (``…error=404.``) and Apprise 2
  keeps those lines with each call's result; that line makes a 4xx other than 408/429 a
  permanent refusal (dead-lettered at once, not retried for a day), 429 a rate limit, the
  rest retryable.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import unquote

import httpx
from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from poller import (
    DeliveryFailed,
    DeliveryRateLimited,
    DeliveryRetryable,
    LogScrubber,
    Message,
    Notifier,
    NotifierConfig,
    NotifierConfigError,
    OrderEvent,
    hookimpl,
)

if TYPE_CHECKING:
    import apprise

INSTALL_HINT = ("the apprise notifier needs the apprise package: from the poller checkout run "
                "pip install '.[apprise]' (or pip install apprise into poller's environment)")
#: Loggers that may print an Apprise URL or part of it.
APPRISE_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.connection",
                   "urllib3.util.retry", "urllib3.poolmanager", "requests")
#: Parts of a URL at least this long are redacted wherever they appear in those logs.
FRAGMENT_MIN = 6
#: Partly delivered messages remembered at most (oldest forgotten first).
PENDING_MAX = 1000


def have_apprise() -> None:
    """Raise ``ValueError`` with the install hint when apprise cannot be imported."""
    try:
        import apprise  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None


def url_fragments(url: str) -> list[str]:
    """Every part of an Apprise URL that may be a secret, as it may show up in a log line.

    Apprise puts tokens anywhere: host (``tgram://TOKEN/chat``), user and password, path
    segments, query values. All parts of ``FRAGMENT_MIN`` characters or more, the password
    whatever its length, and their percent-decoded forms.
    """
    found = {url, url.strip()}
    _, sep, rest = url.partition("://")
    rest = rest if sep else url
    found.add(rest)
    for token in re.split(r"[/:@?&=#;,+\s]+", rest):
        if len(token) >= FRAGMENT_MIN:
            found.update({token, unquote(token)})
    userinfo, at, _ = rest.split("/", 1)[0].rpartition("@")
    if at and ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        found.update({password, unquote(password)})
    return sorted(f for f in found if f.strip())



@contextmanager
def scrubbing(secrets: Iterable[str]) -> Iterator[None]:
    """Redact ``secrets`` from Apprise's and urllib3's log records while the block runs."""
    scrubber = LogScrubber(secrets, APPRISE_LOGGERS)
    scrubber.install()
    try:
        yield
    finally:
        scrubber.remove()


def _asset() -> apprise.AppriseAsset:
    import apprise

    # async_mode=False: we already run in a worker thread; no second pool per call.
    return apprise.AppriseAsset(async_mode=False, secure_logging=True)


def _check_url(value: SecretStr) -> SecretStr:
    """Accept a URL only when Apprise can build a service from it (no network involved)."""
    import apprise

    url = value.get_secret_value()
    with scrubbing(url_fragments(url)):  # its "Unsupported URL" error echoes the URL
        plugin = apprise.Apprise.instantiate(url, asset=_asset())
    if plugin is None:
        # Never the URL itself: pydantic reports the entry by index (urls.1).
        raise ValueError("not a URL Apprise can use (unknown service, or a malformed or "
                         "incomplete URL; see apprise's documentation for the service)")
    return value


class AppriseConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "apprise"``."""

    kind: Literal["apprise"] = "apprise"
    urls: list[Annotated[SecretStr, AfterValidator(_check_url)]] = Field(
        min_length=1,
        description="Apprise URLs (secrets), e.g. \"tgram://TOKEN/CHAT\", \"json://host/path\".",
    )

    @model_validator(mode="before")
    @classmethod
    def _installed(cls, data: Any) -> Any:
        have_apprise()
        return data

    @field_validator("urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # A credential file or environment variable holds one string: URLs split by
        # whitespace (a URL never contains a raw space).
        if isinstance(value, str):
            return value.split()
        return value


@dataclass
class _Pending:
    """A message not yet accepted by every URL: the text and which targets took it."""

    message: Message
    done: set[int] = field(default_factory=set)


class AppriseNotifier(Notifier[AppriseConfig]):
    """Sends each message to every configured Apprise URL."""

    kind: ClassVar[str] = "apprise"
    #: A person reads these: partial fills of one order within 10 s are one message.
    coalesce_fills_default: ClassVar[float] = 10.0
    Config: ClassVar[type[NotifierConfig]] = AppriseConfig
    uses_http: ClassVar[bool] = False  # apprise brings its own HTTP stack

    def __init__(self, name: str, config: AppriseConfig,
                 client: httpx.AsyncClient | None = None) -> None:
        super().__init__(name, config, client)
        try:
            import apprise
        except ImportError:
            raise NotifierConfigError(f"notifier {name}: {INSTALL_HINT}") from None
        urls = [u.get_secret_value() for u in config.urls]
        self._scrubber = LogScrubber([f for u in urls for f in url_fragments(u)],
                                     APPRISE_LOGGERS)
        self._scrubber.install()  # before instantiate(): it logs the URL at DEBUG
        self._targets: list[apprise.Apprise] = []
        asset = _asset()
        try:
            for index, url in enumerate(urls):
                plugin = apprise.Apprise.instantiate(url, asset=asset)
                if plugin is None:  # validated already; only if apprise changed underneath
                    raise NotifierConfigError(f"notifier {name}: urls.{index}: not a URL "
                                              "Apprise can use")
                target = apprise.Apprise(asset=asset)
                target.add(plugin)
                self._targets.append(target)
        except BaseException:
            self._scrubber.remove()  # this notifier will never be closed
            raise
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    async def send(self, event: OrderEvent) -> None:
        """Deliver one event to every URL (a retry sends only where it is still missing)."""
        await self._deliver(event.id, lambda: self.render(event))

    async def send_message(self, message: Message) -> None:
        """Deliver a rendered message (digests); remembered by its content."""
        key = "msg:" + hashlib.sha256(
            f"{message.title}\0{message.body}\0{message.short_id}".encode()).hexdigest()
        await self._deliver(key, lambda: message)

    async def _deliver(self, key: str, render: Callable[[], Message]) -> None:
        """Notify every target that has not taken this message yet.

        :raises DeliveryFailed: every target that failed refused for good (an HTTP 4xx
            other than 408/429, read from the status apprise logs: its ``notify`` only says
            True or False).
        :raises DeliveryRateLimited: a target answered 429.
        :raises DeliveryRetryable: anything else (5xx, no answer, no status logged).
        """
        pending = self._pending.get(key)
        if pending is None:
            # Rendered once, so a retry sends the same text (not a new "late by" line).
            pending = self._pending[key] = _Pending(render())
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
        self._pending.move_to_end(key)
        failures: list[str] = []
        statuses: list[int | None] = []
        for index, target in enumerate(self._targets):
            if index in pending.done:
                continue
            try:
                accepted, status = await asyncio.to_thread(_notify, target, pending.message)
            except Exception as err:  # apprise or a plugin bug; its text may hold the URL
                failures.append(f"urls.{index}: apprise raised {type(err).__name__}")
                statuses.append(None)
                continue
            if accepted:
                pending.done.add(index)
            else:
                failures.append(f"urls.{index}: not delivered"
                                + (f" (HTTP {status})" if status is not None else ""))
                statuses.append(status)
        if not failures:
            self._pending.pop(key, None)
            return
        # Raised here, outside any except block: no apprise exception (whose text may
        # contain the URL) rides along as __context__.
        text = f"{self.service}: {'; '.join(failures)}"
        if all(status is not None and permanent(status) for status in statuses):
            self._pending.pop(key, None)
            raise DeliveryFailed(f"{text}: refused for good")
        if any(status == 429 for status in statuses):
            raise DeliveryRateLimited(f"{text}: rate-limited")
        raise DeliveryRetryable(text + ("" if any(s is not None for s in statuses) else
                                        " (apprise gave no status; its log has the reason)"))

    async def aclose(self) -> None:
        """Stop scrubbing apprise's log."""
        self._scrubber.remove()
        await super().aclose()


#: Apprise's HTTP plugins log a refusal as "Failed to send … notification: <reason>,
#: error=<status>." (custom_json, ntfy, discord, …): the only place the status is told.
_STATUS_IN_LOG = re.compile(r"\berror=(\d{3})\b")


def permanent(status: int) -> bool:
    """A refusal no retry will change: a 4xx other than 408 (timeout) and 429 (slow down),
    as for every other notifier."""
    return 400 <= status < 500 and status not in (408, 429)


def logged_status(result: object) -> int | None:
    """The HTTP status of a refusal, from the log entries Apprise (2.x) keeps with the result
    of each ``notify`` call — per call, so notifiers running at the same time never see each
    other's lines. None when it logged none (an outage, an older Apprise)."""
    logs = getattr(result, "logs", None)
    if not callable(logs):
        return None
    status: int | None = None
    for entry in logs():
        found = _STATUS_IN_LOG.findall(str(getattr(entry, "message", "")))
        if found:
            status = int(found[-1])
    return status


def _notify(target: apprise.Apprise, message: Message) -> tuple[bool, int | None]:
    """One blocking apprise call (runs in a worker thread): accepted, and the HTTP status
    apprise logged for a refusal."""
    # Plain text in, so apprise escapes it for services that use markup (HTML, Markdown).
    result = target.notify(body=message.body or message.title, title=message.title,
                           body_format="text")
    return bool(result), None if result else logged_status(result)


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the Apprise notifier."""
    register(AppriseNotifier)
