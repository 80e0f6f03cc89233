"""Times for people say their zone; broker text cannot drive a terminal."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from poller.timetext import age_text, printable, shown_time


@pytest.fixture
def new_york(local_zone: Callable[[str], None]) -> None:
    local_zone("America/New_York")


@pytest.mark.parametrize(("text", "utc", "date", "shown"), [
    ("2026-05-20T03:24:31+00:00", False, True, "2026-05-19 23:24:31-04:00"),
    ("2026-01-20T03:24:31Z", False, True, "2026-01-19 22:24:31-05:00"),  # no daylight saving
    ("2026-05-20T03:24:31+00:00", True, True, "2026-05-20 03:24:31Z"),
    ("2026-05-20T11:24:31+08:00", True, False, "03:24:31Z"),
    ("2026-05-20T03:24:31+00:00", False, False, "23:24:31-04:00"),
    (None, False, True, "-"),
    ("", True, True, "-"),
])
def test_local_time_with_its_offset_or_utc_marked_z(new_york: None, text: str | None, utc: bool,
                                                    date: bool, shown: str) -> None:
    assert shown_time(text, utc=utc, date=date) == shown


@pytest.mark.parametrize(("text", "shown"), [
    ("plain 台積電 text", "plain 台積電 text"),
    ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
    ("line\nbreak\r\ttab", "line\\x0abreak\\x0d\\x09tab"),
    ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
])
def test_control_characters_become_visible_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "0 s"), (119.0, "119 s"), (120.0, "2 min"), (38 * 60 + 59, "38 min"),
    (7200.0, "2.0 h"), (5 * 86400, "5.0 d")])
def test_ages_read_as_people_say_them(seconds: float, text: str) -> None:
    assert age_text(seconds) == text
