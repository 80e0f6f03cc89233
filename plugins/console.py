"""The ``console`` notifier: one readable line per event on standard output.

Colour is used only when the stream is a terminal (and ``NO_COLOR`` is not set). Times are
local with their offset (``utc = true`` for UTC marked ``Z``); control characters in a
broker's text are shown as ``\\xNN`` so they cannot drive the terminal. A stream whose reader
went away (``poller demo | head``) is a permanent failure, not one to retry.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import ClassVar, Literal, TextIO

from pydantic import Field

from poller import (
    DeliveryFailed,
    Notifier,
    NotifierConfig,
    OrderEvent,
    hookimpl,
    printable,
    shown_time,
)

_COLOURS = {
    "PLACED": "36", "FILLED": "33", "FINAL_FILLED": "32;1", "PLACE_FAILED": "31;1",
    "MODIFY_SUCCESS": "35", "MODIFY_FAILED": "31", "CANCEL_SUCCESS": "34",
    "CANCEL_FAILED": "31", "EXPIRED": "34",
}


class ConsoleConfig(NotifierConfig):
    """``[notifiers.NAME]`` with ``kind = "console"``."""

    kind: Literal["console"] = "console"
    stream: Literal["stdout", "stderr"] = Field(default="stdout", description="Where to print.")
    colour: Literal["auto", "always", "never"] = Field(
        default="auto", description="auto: colour only on a terminal."
    )
    utc: bool = Field(default=False, description="Times in UTC (marked Z), not local time.")


def format_line(event: OrderEvent, *, utc: bool = False) -> str:
    """The one-line text of an event (without colour, control characters made visible)."""
    line = _line(event, utc=utc)
    return printable(f"[test] {line}" if event.payload.get("test") else line)


def _line(event: OrderEvent, *, utc: bool) -> str:
    p = event.payload
    when = shown_time(p.get("detected_at"), utc=utc, date=False)
    if event.event_type == "SYSTEM":
        return f"{when} {'SYSTEM':<8} {event.scene:<15} {p.get('message', '')}  {event.short_id}"
    qty, filled = p.get("qty") or "?", p.get("filled_qty") or "0"
    price = f" @ {p['price']}" if p.get("price") else ""
    text = f"{when} {p.get('broker', ''):<12} {event.scene:<15} {p.get('symbol', '')} " \
           f"{p.get('side', '')} {qty}{price}"
    if p.get("last_fill_qty"):
        text += f"  fill {p['last_fill_qty']} @ {p.get('last_fill_price') or '?'}"
    text += f"  filled {filled}/{qty}"
    changes = p.get("changes") or {}
    if changes:
        text += "  " + ", ".join(f"{k} {v['old']} → {v['new']}" for k, v in changes.items())
    if p.get("message") and event.scene in ("PLACE_FAILED", "MODIFY_FAILED", "CANCEL_FAILED"):
        text += f"  ({p['message']})"
    pushed = "  (pushed)" if p.get("via") == "push" else ""
    return f"{text}  order {p.get('order_id', '')}{pushed}  {event.short_id}"


class ConsoleNotifier(Notifier[ConsoleConfig]):
    """Prints each event as one line."""

    kind: ClassVar[str] = "console"
    Config: ClassVar[type[NotifierConfig]] = ConsoleConfig
    uses_http: ClassVar[bool] = False

    def _stream(self) -> TextIO:
        return sys.stdout if self.config.stream == "stdout" else sys.stderr

    def _colour(self, stream: TextIO) -> bool:
        if self.config.colour != "auto":
            return self.config.colour == "always"
        return stream.isatty() and not os.environ.get("NO_COLOR")

    def preview(self, event: OrderEvent) -> str:
        """The line this notifier would print."""
        return format_line(event, utc=self.config.utc)

    async def send(self, event: OrderEvent) -> None:
        """Print the event's line and flush."""
        stream = self._stream()
        line = format_line(event, utc=self.config.utc)
        try:
            if self._colour(stream):
                code = _COLOURS.get(event.scene, "1;31" if event.event_type == "SYSTEM" else "0")
                line = f"\x1b[{code}m{line}\x1b[0m"
            stream.write(line + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError) as err:
            # The reader closed the pipe (or stdout itself was closed): no retry will ever
            # succeed, so say so once instead of holding the message for ever.
            raise DeliveryFailed(f"{self.config.stream} is closed ({type(err).__name__}); "
                                 "nobody reads this console any more") from None


@hookimpl
def register_notifiers(register: Callable[[type[Notifier]], None]) -> None:
    """Register the console notifier."""
    register(ConsoleNotifier)
