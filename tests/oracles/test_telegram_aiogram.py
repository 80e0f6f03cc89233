"""The Telegram notifier's markup against aiogram (a widely used Bot API framework, a test
extra; poller never imports it): the same escaping for HTML and MarkdownV2, every part
exactly what aiogram renders for the same plain text and bold run, and every part within
Telegram's 4096 as aiogram measures the parsed text (UTF-16 offsets of its entities).

python-telegram-bot would be the other oracle, but it pins ``httpx<0.29`` and poller needs
0.29, so it cannot share the test environment (see the README's conformance notes).
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from aiogram.utils.formatting import Bold, Text
from aiogram.utils.text_decorations import html_decoration, markdown_decoration
from hypothesis import given, settings
from hypothesis import strategies as st

from poller_plugins.telegram import MAX_LENGTH, escape_html, escape_markdown_v2, render_parts

Run = tuple[str, bool]
#: Characters special to one mode or the other, wide ones, and plain ones.
ALPHABET = list("_*[]()~`>#+-=|{}.!\\<&;/\"' \n") + ["a", "b", "1", "é", "😀", "台"]
TEXT = st.text(alphabet=st.sampled_from(ALPHABET), max_size=300)


class _Runs(HTMLParser):
    """Telegram-HTML (only <b>) to runs of (plain text, bold), with entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.runs: list[Run] = []
        self.bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag == "b" and not self.bold, f"unexpected <{tag}>"
        self.bold = True

    def handle_endtag(self, tag: str) -> None:
        assert tag == "b" and self.bold, f"unexpected </{tag}>"
        self.bold = False

    def handle_data(self, data: str) -> None:
        self.runs.append((data, self.bold))


def runs_of(part: str, mode: str) -> list[Run]:
    """The plain runs a part shows; a parser per mode, kept minimal on purpose."""
    if mode == "HTML":
        parser = _Runs()
        parser.feed(part)
        parser.close()
        return parser.runs
    runs: list[Run] = []
    bold, text, escaped = False, [], False
    for char in part:
        if escaped:
            text.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            runs.append(("".join(text), bold))
            text, bold = [], not bold
        else:
            text.append(char)
    assert not escaped and not bold, "unbalanced MarkdownV2"
    runs.append(("".join(text), bold))
    return [run for run in runs if run[0]]


def aiogram_text(runs: list[Run]) -> Text:
    return Text(*[Bold(text) if bold else text for text, bold in runs])


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_parts(title: str, body: str, mode: str, *, limit: int = MAX_LENGTH) -> list[str]:
    parts = render_parts(title, body, mode, limit=limit, max_parts=50)
    for part in parts:
        text = aiogram_text(runs_of(part, mode))
        rendered = text.as_html() if mode == "HTML" else text.as_markdown()
        assert rendered == part, "aiogram renders the same plain text differently"
        kwargs = text.as_kwargs()
        shown = kwargs["text"]
        assert utf16(shown) <= limit, f"{utf16(shown)} > {limit} after parsing"
        for entity in kwargs["entities"]:
            assert entity.offset + entity.length <= utf16(shown)
    return parts


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.text(max_size=200) | TEXT)
def test_escaping_is_aiograms(text: str) -> None:
    assert escape_html(text) == html_decoration.quote(text)
    assert escape_markdown_v2(text) == markdown_decoration.quote(text)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(title=TEXT, chunk=TEXT, repeat=st.integers(1, 40),
       limit=st.sampled_from([64, 500, MAX_LENGTH]), mode=st.sampled_from(["HTML", "MarkdownV2"]))
def test_every_part_is_what_aiogram_renders_and_within_the_limit(
        title: str, chunk: str, repeat: int, limit: int, mode: str) -> None:
    check_parts(title, chunk * repeat, mode, limit=limit)


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_a_4090_character_body_of_escaped_characters_is_one_part(mode: str) -> None:
    """The defect the audit found: escaped length counted, so six parts where Telegram takes one."""
    body = ("&" if mode == "HTML" else ".") * 4090
    parts = check_parts("", body, mode)
    assert len(parts) == 1
    assert aiogram_text(runs_of(parts[0], mode)).as_kwargs()["text"] == body


@pytest.mark.parametrize("mode", ["HTML", "MarkdownV2"])
def test_emoji_count_twice_as_aiogram_counts_them(mode: str) -> None:
    """Telegram counts UTF-16 units: 2 100 emoji are 4 200 units, so two parts."""
    parts = check_parts("T", "😀" * 2100, mode)
    assert len(parts) == 2
