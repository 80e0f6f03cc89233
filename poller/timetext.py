"""Text for people: times that say their zone, and broker text that cannot drive a terminal.

Shared by the command-line tables and the console notifier (plugins import it from
``poller``)."""

from __future__ import annotations

import re
from datetime import UTC

from poller.models import parse_iso

# Every C0 and C1 control and DEL (tabs and newlines too: a console line is one line): a
# broker's symbol or message that carries an escape sequence must not recolour, clear or
# retitle the operator's terminal.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character shown as a visible ``\\xNN`` escape."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shown_time(text: str | None, *, utc: bool = False, date: bool = True) -> str:
    """An ISO time for people: local time with its offset (``+08:00``), or UTC marked ``Z``;
    ``-`` for none. ``date=False`` leaves out the day (the console's live lines)."""
    moment = parse_iso(text) if text else None
    if moment is None:
        return "-"
    pattern = "%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S"
    if utc:
        return moment.astimezone(UTC).strftime(pattern) + "Z"
    local = moment.astimezone()
    offset = local.strftime("%z") or "+0000"
    return local.strftime(pattern) + offset[:3] + ":" + offset[3:]


def age_text(seconds: float) -> str:
    """A duration as people say it: ``45 s``, ``38 min``, ``5.2 h``, ``3.0 d``."""
    if seconds < 120:
        return f"{max(0, int(seconds))} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
