"""Logging: readable text or JSON lines on stderr, with every known secret redacted.

Times carry milliseconds and their zone (ISO 8601). Under journald (``JOURNAL_STREAM`` names
our stderr) text lines start with a syslog priority (``<4>``) so ``journalctl -p warning``
works, and leave the time out since the journal records its own.

Repeated lines of one kind are collapsed into a count (:mod:`poller.logcollapse`).
The redaction is a filter on the handler, so it covers every logger, third-party ones
included (httpx logs full URLs at INFO, and a Telegram bot token is part of the URL).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, MutableMapping
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from poller.logcollapse import RepeatCollapser

REDACTED = "**********"


class Redactor:
    """Replaces every known secret (and its URL-encoded form) in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Learn more secrets (e.g. after a reload).

        A secret that is a URL (a webhook's) brings its secret parts too: a server's error
        page echoing only the path, or only a query value, must not reveal them.
        """
        found = set(self._secrets)
        for secret in (part for value in secrets for part in (value, *url_secrets(value))):
            if len(secret) < 4:
                continue  # too short to redact without mangling ordinary text
            found.update({secret, quote(secret, safe=""), quote(secret)})
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def url_secrets(value: str) -> list[str]:
    """The parts of a URL that may be secrets: its path (whole, and every segment that
    looks like a token: 8 characters or more, with a digit) unless it is a short path of
    plain words, its query and each query value, and the password in it. Nothing for a text
    that is not an http(s) URL."""
    try:
        url = urlsplit(value.strip())
    except ValueError:
        return []
    if url.scheme not in ("http", "https") or not url.netloc:
        return []
    parts: list[str] = []
    tokens = [seg for seg in url.path.split("/")
              if len(seg) >= 8 and any(ch.isdigit() for ch in seg)]
    # A short path of plain words ("/hook") is no secret, and redacting it would mangle
    # every line that says "hook".
    if tokens or len(url.path) >= 12:
        parts += [url.path, url.path.lstrip("/"), unquote(url.path), *tokens]
    if url.query:
        parts.append(url.query)
        parts += [v for _, v in parse_qsl(url.query, keep_blank_values=False)]
    if url.password:
        parts.append(url.password)
    return parts


class RedactingFilter(logging.Filter):
    """Formats each record's message and traceback, then redacts secrets from both."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        record.exc_info = None if record.exc_text else record.exc_info
        return True


class LogScrubber(logging.Filter):
    """Redacts given secrets from the records of loggers that print URLs (httpx).

    Installed on the loggers themselves, so the records are clean for every handler —
    including ones poller did not set up (a test's caplog, a user's own logging config).
    """

    def __init__(self, secrets: Iterable[str], loggers: Iterable[str]) -> None:
        super().__init__()
        self.redactor = Redactor(secrets)
        self.loggers = tuple(loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redactor(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

    def install(self) -> None:
        """Start scrubbing."""
        for name in self.loggers:
            logging.getLogger(name).addFilter(self)

    def remove(self) -> None:
        """Stop scrubbing (the notifier is closed)."""
        for name in self.loggers:
            logging.getLogger(name).removeFilter(self)


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the connection's name and tags it for JSON logs."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        name = (self.extra or {}).get("connection", "")
        kwargs.setdefault("extra", {})["connection"] = name
        return f"{name}: {msg}", kwargs


#: syslog priorities (sd-daemon(3)) for the ``<N>`` prefix journald reads.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}


def iso_time(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601, local, with milliseconds and the offset."""
    moment = datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels in between round to the lower one)."""
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


def on_journald(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM`` holds
    its ``device:inode``; a redirected stderr under systemd is not)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in expected.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class TextFormatter(logging.Formatter):
    """``time level logger: message`` for a terminal or a file; ``<priority>level logger:
    message`` for journald."""

    def __init__(self, *, journald: bool = False) -> None:
        super().__init__("%(levelname)-7s %(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journald:
            return f"<{priority(record.levelno)}>{text}"
        return f"{iso_time(record)} {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ connection, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        connection = getattr(record, "connection", None)
        if connection:
            data["connection"] = connection
        if record.exc_text:
            data["traceback"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def flush_repeats(*, every: bool = False) -> None:
    """Write out the counts of collapsed lines held back by poller's log handler (see
    :meth:`RepeatCollapser.flush`); nothing when logging was not set up by
    :func:`setup_logging`."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_poller", False):
            for found in handler.filters:
                if isinstance(found, RepeatCollapser):
                    found.flush(every=every)


def setup_logging(
    *, level: str = "INFO", fmt: str = "text", redactor: Redactor | None = None,
    stream: TextIO | None = None,
) -> Redactor:
    """Configure the root logger once; returns the redactor to feed secrets to."""
    redactor = redactor or Redactor()
    target = stream or sys.stderr
    handler = logging.StreamHandler(target)
    # Collapse first, so a held-back count is written through the redaction too.
    RepeatCollapser().attach(handler)
    handler.addFilter(RedactingFilter(redactor))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journald=on_journald(target)))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_poller", False):
            root.removeHandler(old)
    handler._poller = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; URLs can carry tokens and are noise anyway.
    for noisy in ("httpx", "httpcore", "apprise", "urllib3", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # APScheduler warns whenever a run is skipped because the previous one still runs: with
    # max_instances=1 that is the design (a poll waiting for its budget), not a problem.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))
    return redactor
