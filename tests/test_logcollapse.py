"""Repeated log lines: one per kind per window, then the count."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from poller.logcollapse import RepeatCollapser


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def collapsed_logger(collapser: RepeatCollapser,
                     name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose lines pass ``collapser`` into a string buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    collapser.attach(handler)
    log = logging.getLogger(name)
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        yield log, out
    finally:
        log.removeHandler(handler)


def test_a_flood_of_one_kind_is_one_line_per_window_and_a_count() -> None:
    clock = Clock()
    with collapsed_logger(RepeatCollapser(60, clock=clock), "test.collapse.flood") as (log, out):
        for n in range(2359):  # the 45 s outage: a line per attempt
            clock.now += 45 / 2359
            log.info("notifier %s: delivery of %s failed (attempt %d)", "hook", f"#{n:04X}", n)
        clock.now += 60
        log.info("notifier %s: delivery of %s failed (attempt %d)", "hook", "#FFFF", 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == "INFO notifier hook: delivery of #0000 failed (attempt 0)"
    assert "(… repeated 2358 times in 105 s)" in lines[1]


def test_different_subjects_and_levels_never_hide_each_other() -> None:
    clock = Clock()
    with collapsed_logger(RepeatCollapser(60, clock=clock), "test.collapse.subjects") as (log, out):
        for _ in range(3):
            log.warning("notifier %s failing", "hook")
            log.warning("notifier %s failing", "mail")
            log.error("notifier %s failing", "hook")
    assert out.getvalue().splitlines() == [
        "WARNING notifier hook failing", "WARNING notifier mail failing",
        "ERROR notifier hook failing"]


def test_a_kind_fallen_silent_has_its_count_written_by_the_next_line() -> None:
    clock = Clock()
    with collapsed_logger(RepeatCollapser(60, clock=clock), "test.collapse.silent") as (log, out):
        for _ in range(5):
            log.warning("connection %s: timeout", "tw-main")
        clock.now += 61
        log.info("something else entirely")
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING connection tw-main: timeout"
    assert lines[1] == ("WARNING tw-main: the line 'connection %s: timeout' was repeated "
                        "4 times in 61 s")
    assert lines[2] == "INFO something else entirely"


def test_distinct_kinds_are_bounded() -> None:
    collapser = RepeatCollapser(60, clock=Clock(), max_kinds=10)
    with collapsed_logger(collapser, "test.collapse.bound") as (log, out):
        for n in range(100):
            log.info(f"line {n}")
    assert len(out.getvalue().splitlines()) == 100
    assert len(collapser._seen) <= 10


def test_flush_tells_the_counts_of_kinds_that_fell_silent_and_all_of_them_at_exit() -> None:
    """The issue's outage ended with nothing more logged: the count must still be told —
    by the daemon's tick once the window passed, and by the last flush at shutdown."""
    clock = Clock()
    collapser = RepeatCollapser(60, clock=clock)
    with collapsed_logger(collapser, "test.collapse.flush") as (log, out):
        for _ in range(120):
            log.warning("notifier %s: delivery failed", "hook")
        for _ in range(5):
            log.warning("connection %s: no answer", "tw")
        collapser.flush()  # inside the window: nothing yet
        assert len(out.getvalue().splitlines()) == 2
        clock.now += 61
        collapser.flush()  # the window passed: both counts
        told = out.getvalue().splitlines()[2:]
        assert len(told) == 2
        assert "'notifier %s: delivery failed' was repeated 119 times in 61 s" in told[0]
        assert "tw: the line 'connection %s: no answer' was repeated 4 times" in told[1]
        collapser.flush()
        assert len(out.getvalue().splitlines()) == 4  # told once
        # The told count opened a new window: these two are held.
        log.warning("notifier %s: delivery failed", "hook")
        log.warning("notifier %s: delivery failed", "hook")
        collapser.flush(every=True)  # at exit: whatever the window
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "was repeated 2 times in 0 s" in lines[-1]
