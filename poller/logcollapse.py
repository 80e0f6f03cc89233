"""Repeated log lines collapsed: the first of a kind, then a count.

A receiver that is down makes every queued message fail, and each failure is a line: 2 359
lines in 45 s hid the one that said why. Lines of one kind — the same logger, level and
message template, about the same subject (the first argument: a notifier or connection
name) — pass once per window; the rest are counted, and the next line of that kind after
the window says ``(… repeated 120 times in 60 s)``. A kind that falls silent has its count
written out by the next line of any kind, or by :meth:`RepeatCollapser.flush`, which the
daemon calls on every tick and at shutdown: no repetition goes unreported, even when nothing
else is logged.
Warnings about different subjects never hide each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, int, str, str]


@dataclass
class _Seen:
    """One kind of line: when it last passed, and how many were held back since."""

    passed: float
    held: int = 0


class RepeatCollapser(logging.Filter):
    """A handler filter that lets one line of a kind through per ``window`` seconds."""

    def __init__(self, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_kinds: int = 10_000) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.max_kinds = max_kinds
        self._seen: dict[Key, _Seen] = {}
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None

    def attach(self, handler: logging.Handler) -> None:
        """Filter ``handler``'s records (and write held-back counts through it)."""
        self._handler = handler
        handler.addFilter(self)

    @staticmethod
    def key(record: logging.LogRecord) -> Key:
        """What makes two records the same kind of line."""
        args = record.args if isinstance(record.args, tuple) else ()
        subject = str(args[0]) if args else ""
        return (record.name, record.levelno, str(record.msg), subject)

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the record through, or count it; a summary of a kind since fallen silent
        goes out first."""
        if getattr(record, "_collapse_summary", False):
            return True
        now = self.clock()
        key = self.key(record)
        with self._lock:
            silent = self._silent(now, key)
            seen = self._seen.get(key)
            if seen is not None and now - seen.passed < self.window:
                seen.held += 1
                passes = False
            else:
                if seen is not None and seen.held:
                    record.msg = f"{record.msg} (… repeated %d times in %.0f s)"
                    record.args = (*(record.args if isinstance(record.args, tuple) else ()),
                                   seen.held, now - seen.passed)
                if len(self._seen) >= self.max_kinds:
                    self._seen.clear()  # a flood of distinct lines: forget, never grow
                self._seen[key] = _Seen(now)
                passes = True
        for summary in silent:
            self._emit(summary)
        return passes

    def flush(self, *, every: bool = False) -> None:
        """Write out the held-back counts of kinds whose window passed (or, with ``every``,
        of all kinds: at exit nothing may stay untold)."""
        with self._lock:
            summaries = self._silent(self.clock(), None, every=every)
        for summary in summaries:
            self._emit(summary)

    def _silent(self, now: float, current: Key | None, *,
                every: bool = False) -> list[logging.LogRecord]:
        """Counts of kinds whose window passed without another line (under the lock)."""
        summaries = []
        for key, seen in self._seen.items():
            if key != current and seen.held and (every or now - seen.passed >= self.window):
                name, level, msg, subject = key
                record = logging.LogRecord(
                    name, level, "", 0, "%s: the line %r was repeated %d times in %.0f s",
                    (subject or name, msg, seen.held, now - seen.passed), None)
                record._collapse_summary = True
                summaries.append(record)
                seen.held = 0
                seen.passed = now
        return summaries

    def _emit(self, record: logging.LogRecord) -> None:
        if self._handler is not None:
            self._handler.handle(record)
