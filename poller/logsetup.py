"""Logging: readable text or JSON lines on stderr, with every known secret redacted.

The redaction is a filter on the handler, so it covers every logger, third-party ones
included (httpx logs full URLs at INFO, and a Telegram bot token is part of the URL).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, unquote, urlsplit

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ connection, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
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


def setup_logging(
    *, level: str = "INFO", fmt: str = "text", redactor: Redactor | None = None,
    stream: TextIO | None = None,
) -> Redactor:
    """Configure the root logger once; returns the redactor to feed secrets to."""
    redactor = redactor or Redactor()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter(redactor))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
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
