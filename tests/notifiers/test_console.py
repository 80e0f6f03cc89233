"""The console notifier: one readable line per event, colour only on a terminal."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

import pytest

from poller.errors import DeliveryFailed
from poller.events import OrderEvent, system_event
from poller.models import OrderStatus, SystemScene
from poller_plugins.console import ConsoleConfig, ConsoleNotifier, format_line
from tests.notifiers.helpers import NOW, order_event


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


CASES = [
    (order_event(OrderStatus.FILLED, 2),
     ["FINAL_FILLED", "2890 BUY 2 @ 27.1", "fill 2 @ 27.1", "filled 2/2", "order a647f23d"]),
    (order_event(OrderStatus.PARTIAL_FILLED, 1), ["FILLED", "fill 1 @ 27.1", "filled 1/2"]),
    (order_event(OrderStatus.SUBMITTED, 0, price=Decimal("27.0")),
     ["MODIFY_SUCCESS", "price 27.1 → 27", "2890 BUY 2 @ 27"]),
    (order_event(OrderStatus.FAILED, 0, message="insufficient margin"),
     ["PLACE_FAILED", "(insufficient margin)"]),
    (system_event(SystemScene.BROKER_AUTH_FAILED, broker="tw-main", detected_at=NOW,
                  discriminator="x", message="tw-main: the broker refused the credentials"),
     ["SYSTEM", "BROKER_AUTH_FAILED", "refused the credentials"]),
]


@pytest.mark.parametrize(("event", "parts"), CASES, ids=[c[0].scene for c in CASES])
def test_format(event: OrderEvent, parts: list[str]) -> None:
    line = format_line(event)
    assert "\n" not in line and line.startswith("03:24:31+00:00 ")  # TZ=UTC in conftest
    for part in parts:
        assert part in line, (part, line)
    assert line.endswith(event.short_id)


@pytest.mark.parametrize(("stream", "colour", "env", "coloured"), [
    (Tty(), "auto", {}, True),
    (Tty(), "auto", {"NO_COLOR": "1"}, False),
    (io.StringIO(), "auto", {}, False),
    (io.StringIO(), "always", {}, True),
    (Tty(), "never", {}, False),
])
def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO,
                                   colour: str, env: dict[str, str], coloured: bool) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdout", stream)
    notifier = ConsoleNotifier("console", ConsoleConfig(kind="console", colour=colour))
    asyncio.run(notifier.send(order_event(OrderStatus.FILLED, 2)))
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert ("\x1b[" in text) is coloured


def test_times_are_local_with_their_offset_or_utc_marked_z(
        local_zone: Callable[[str], None]) -> None:
    local_zone("Asia/Taipei")
    event = order_event(OrderStatus.FILLED, 2)
    assert format_line(event).startswith("11:24:31+08:00 ")
    assert format_line(event, utc=True).startswith("03:24:31Z ")
    notifier = ConsoleNotifier("console", ConsoleConfig(kind="console", utc=True))
    assert notifier.preview(event).startswith("03:24:31Z ")


def test_control_characters_from_a_broker_cannot_drive_the_terminal() -> None:
    event = order_event(OrderStatus.FAILED, 0, message="no\x1b]0;pwned\x07 \x1b[2Jmargin\r")
    line = format_line(replace(event, payload={**event.payload, "symbol": "28\x1b[31m90"}))
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert "(no\\x1b]0;pwned\\x07 \\x1b[2Jmargin\\x0d)" in line
    assert "28\\x1b[31m90" in line


class Closed(io.StringIO):
    """A stdout whose reader went away (``poller demo | head`` after ten lines)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("stream", [Closed(), io.StringIO()], ids=["broken-pipe", "closed"])
def test_a_closed_stream_is_a_permanent_failure(monkeypatch: pytest.MonkeyPatch,
                                                stream: io.StringIO) -> None:
    if not isinstance(stream, Closed):
        stream.close()  # writing to it raises ValueError, as on a closed sys.stdout
    monkeypatch.setattr("sys.stdout", stream)
    notifier = ConsoleNotifier("console", ConsoleConfig(kind="console"))
    with pytest.raises(DeliveryFailed, match="stdout is closed"):
        asyncio.run(notifier.send(order_event(OrderStatus.FILLED, 2)))


def test_an_event_a_push_reported_first_is_marked() -> None:
    event = order_event(OrderStatus.PARTIAL_FILLED, 1)
    pushed = replace(event, payload={**event.payload, "via": "push"})
    assert "(pushed)" in format_line(pushed) and "(pushed)" not in format_line(event)
