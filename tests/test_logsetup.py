"""Logging: secrets redacted (plain, URL-encoded, in tracebacks), text and JSON lines,
connection prefixes, and the scrubber that cleans third-party loggers' records."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from poller.logsetup import (
    REDACTED,
    ConnectionLog,
    LogScrubber,
    Redactor,
    flush_repeats,
    on_journald,
    setup_logging,
    url_secrets,
)

SECRET = "tok/12 34+ab=cd&z"  # every character quote() treats specially
ENCODED = quote(SECRET, safe="")  # tok%2F12%2034%2Bab%3Dcd%26z
PATH_ENCODED = quote(SECRET)  # tok/12%2034%2Bab%3Dcd%26z
NOISY = ("httpx", "httpcore", "apprise", "urllib3", "aiosmtplib", "apscheduler")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide state: put the root and noisy loggers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in NOISY}
    yield
    root.handlers = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize(("secrets", "text", "expected"), [
    ([SECRET], f"token {SECRET} sent", f"token {REDACTED} sent"),
    ([SECRET], f"GET https://api/x?t={ENCODED}", f"GET https://api/x?t={REDACTED}"),
    ([SECRET], f"GET https://api/bot{PATH_ENCODED}/send", f"GET https://api/bot{REDACTED}/send"),
    ([SECRET], f"{SECRET}{SECRET}", REDACTED * 2),
    (["abc"], "abc is too short to redact", "abc is too short to redact"),
    (["abcd", "abcdefgh"], "x abcdefgh y abcd", f"x {REDACTED} y {REDACTED}"),
    ([], f"nothing known: {SECRET}", f"nothing known: {SECRET}"),
])
def test_redactor(secrets: list[str], text: str, expected: str) -> None:
    assert Redactor(secrets)(text) == expected


def test_redactor_learns_more_secrets_later() -> None:
    redactor = Redactor(["first-secret"])
    redactor.add(["second-secret", "first-secret"])
    assert redactor("first-secret second-secret") == f"{REDACTED} {REDACTED}"


def run_logging(fmt: str, *, secrets: tuple[str, ...] = ()
                ) -> tuple[logging.Logger, io.StringIO, Redactor]:
    """Our handler on a string stream; returns a logger, the stream and the redactor."""
    stream = io.StringIO()
    redactor = setup_logging(level="INFO", fmt=fmt, stream=stream, redactor=Redactor(secrets))
    return logging.getLogger("poller.test"), stream, redactor


def test_text_lines_are_redacted(restore_logging: None) -> None:
    log, stream, redactor = run_logging("text", secrets=(SECRET,))
    log.info("token %s and %s", SECRET, ENCODED)
    redactor.add(["learned-after-setup"])  # the daemon feeds secrets once the config loaded
    log.warning("later: %s", "learned-after-setup")
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO    poller\.test: "
                        rf"token {re.escape(REDACTED)} and {re.escape(REDACTED)}", first)
    assert second.endswith(f"WARNING poller.test: later: {REDACTED}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_redacted(restore_logging: None, fmt: str) -> None:
    log, stream, _ = run_logging(fmt, secrets=(SECRET,))
    try:
        raise ValueError(f"refused {SECRET} (sent as {ENCODED})")
    except ValueError:
        log.exception("call with %s failed", PATH_ENCODED)
    out = stream.getvalue()
    text = json.loads(out)["traceback"] if fmt == "json" else out
    assert "Traceback (most recent call last)" in text
    assert f"ValueError: refused {REDACTED} (sent as {REDACTED})" in text
    for form in (SECRET, ENCODED, PATH_ENCODED):
        assert form not in out


def test_json_fields(restore_logging: None) -> None:
    log, stream, _ = run_logging("json")
    log.info("成交 %d", 3)
    ConnectionLog(log, {"connection": "tw"}).error("poll failed")
    plain, tagged = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(plain) == {"time", "level", "logger", "message"}
    # ISO 8601 with milliseconds and the zone, readable by datetime.fromisoformat.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", plain["time"])
    assert datetime.fromisoformat(plain["time"]).utcoffset() is not None
    assert (plain["level"], plain["logger"], plain["message"]) == ("INFO", "poller.test",
                                                                   "成交 3")
    assert "成交" in stream.getvalue()  # not \u-escaped
    assert set(tagged) == {"time", "level", "logger", "message", "connection"}
    assert (tagged["level"], tagged["message"], tagged["connection"]) == (
        "ERROR", "tw: poll failed", "tw")


def test_setup_replaces_its_own_handler_only(restore_logging: None) -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    mine = Redactor()
    assert setup_logging(level="INFO", stream=io.StringIO(), redactor=mine) is mine
    second = io.StringIO()
    setup_logging(level="INFO", stream=second)
    ours = [h for h in root.handlers if getattr(h, "_poller", False)]
    assert len(ours) == 1 and foreign in root.handlers
    logging.getLogger("poller.test").info("once")
    assert second.getvalue().count("once") == 1


def test_flush_repeats_tells_what_the_handler_held_back(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(level="INFO", stream=stream, redactor=Redactor([SECRET]))
    log = logging.getLogger("poller.test.flood")
    for _ in range(50):
        log.warning("notifier %s: delivery failed: %s", "hook", SECRET)
    assert stream.getvalue().count("delivery failed") == 1
    flush_repeats(every=True)  # what the daemon does at shutdown
    told = stream.getvalue().splitlines()[-1]
    assert "was repeated 49 times" in told and SECRET not in stream.getvalue()


@pytest.mark.parametrize(("level", "httpx_level", "apscheduler_level"), [
    ("DEBUG", logging.WARNING, logging.ERROR),
    ("INFO", logging.WARNING, logging.ERROR),
    ("ERROR", logging.ERROR, logging.ERROR),
    ("CRITICAL", logging.CRITICAL, logging.CRITICAL),
])
def test_noisy_loggers_are_quieter_than_root(restore_logging: None, level: str,
                                             httpx_level: int, apscheduler_level: int) -> None:
    setup_logging(level=level, stream=io.StringIO())
    assert logging.getLogger().level == logging.getLevelName(level)
    for name in ("httpx", "httpcore", "apprise", "urllib3", "aiosmtplib"):
        assert logging.getLogger(name).level == httpx_level
    assert logging.getLogger("apscheduler").level == apscheduler_level


def test_connection_log_prefixes_and_tags(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poller.test")
    log = ConnectionLog(logging.getLogger("poller.test"), {"connection": "cw-spot"})
    log.info("order %s: %d%% filled", "O1", 40)
    log.warning("with extra", extra={"order": "O2"})
    first, second = caplog.records
    assert first.getMessage() == "cw-spot: order O1: 40% filled"
    assert first.connection == "cw-spot"  # type: ignore[attr-defined]
    assert second.getMessage() == "cw-spot: with extra"
    assert (second.connection, second.order) == ("cw-spot", "O2")  # type: ignore[attr-defined]


def test_log_scrubber_install_and_remove(caplog: pytest.LogCaptureFixture,
                                         restore_logging: None) -> None:
    """Installed on the named loggers themselves, so even pytest's handler sees clean records;
    other loggers and clean records are left alone."""
    # A handler an earlier command's setup_logging left on the root (its redaction would
    # rewrite the records before caplog sees them): only pytest's handler here.
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_poller", False)]
    for name in ("httpx", "apprise", "httpcore.http11"):
        caplog.set_level(logging.INFO, logger=name)  # whatever an earlier setup_logging left
    scrubber = LogScrubber([SECRET], ["httpx", "apprise"])
    httpx_log, apprise_log = logging.getLogger("httpx"), logging.getLogger("apprise")
    scrubber.install()
    try:
        assert scrubber in httpx_log.filters and scrubber in apprise_log.filters
        httpx_log.info('HTTP Request: POST https://api/bot%s/send "%s"', ENCODED, "200 OK")
        apprise_log.info("notify %s", SECRET)
        httpx_log.info("clean %s", "line")
        logging.getLogger("httpcore.http11").info("not scrubbed %s", SECRET)
    finally:
        scrubber.remove()
    httpx_log.info("after removal %s", SECRET)
    assert scrubber not in httpx_log.filters and scrubber not in apprise_log.filters
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f'HTTP Request: POST https://api/bot{REDACTED}/send "200 OK"',
        f"notify {REDACTED}",
        "clean line",
        f"not scrubbed {SECRET}",
        f"after removal {SECRET}",
    ]
    assert caplog.records[0].args is None  # the secret is not kept in the args either
    assert caplog.records[2].args == ("line",)


def test_the_secret_parts_of_a_url_are_secrets_too() -> None:
    url = "https://user:pa55word@hooks.example.com/services/T0001/B0002/xoxb1234abcd?token=tk-987"
    parts = url_secrets(url)
    assert {"/services/T0001/B0002/xoxb1234abcd", "xoxb1234abcd", "token=tk-987", "tk-987",
            "pa55word"} <= set(parts)
    assert "services" not in parts and "T0001" not in parts  # words, not tokens
    assert url_secrets("not a url") == [] and url_secrets("https://example.com/") == []
    assert url_secrets("http://127.0.0.1:8080/hook") == []  # a plain word, not a token
    redact = Redactor([url])
    assert redact("404: Cannot POST /services/T0001/B0002/xoxb1234abcd") == \
        f"404: Cannot POST {REDACTED}"
    assert "tk-987" not in redact("bad token tk-987") and "services" in redact("services")


def test_under_journald_lines_carry_a_priority_and_no_time(
        restore_logging: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w", encoding="utf-8") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert on_journald(stream)
        setup_logging(level="DEBUG", stream=stream)
        log = logging.getLogger("poller.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
    lines = (tmp_path / "journal").read_text(encoding="utf-8").splitlines()
    assert lines == ["<7>DEBUG   poller.test: d", "<6>INFO    poller.test: i",
                     "<4>WARNING poller.test: w", "<3>ERROR   poller.test: e",
                     "<2>CRITICAL poller.test: c"]


@pytest.mark.parametrize("value", ["", "garbage", "1:2", "1:2:3"])
def test_journald_is_only_the_stream_it_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             value: str) -> None:
    # Under systemd with stderr redirected to a file, JOURNAL_STREAM names another stream.
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with (tmp_path / "log").open("w", encoding="utf-8") as stream:
        assert not on_journald(stream)
    assert not on_journald(io.StringIO())  # no file descriptor at all
