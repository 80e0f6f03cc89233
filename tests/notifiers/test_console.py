"""The console notifier: one readable line per event, colour only on a terminal."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal

import pytest

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
    assert "\n" not in line and line.startswith("03:24:31 ")
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
