"""Helpers shared by the notifier test files: send and collect outcomes, look for leaks."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from poller.diff import diff
from poller.events import OrderEvent
from poller.models import OrderSnapshot, OrderStatus
from poller.notifiers import Notifier
from poller.templates import Message
from tests.notifiers.virtualtime import VirtualClock, run

NOW = datetime(2026, 5, 20, 3, 24, 31, tzinfo=UTC)


def order_event(status: OrderStatus = OrderStatus.FILLED, filled: int = 2, *,
                symbol: str = "2890", **changes: Any) -> OrderEvent:
    """A real event from diff() on two snapshots of a BUY 2 @ 27.1 order (the last event the
    change implies: FINAL_FILLED by default)."""
    before = OrderSnapshot(broker="tw-main", broker_kind="shioaji", account_id="A",
                           order_id="a647f23d", status=OrderStatus.SUBMITTED,
                           broker_status="Submitted", symbol=symbol, side="BUY",
                           qty=Decimal(2), price=Decimal("27.1"))
    after = OrderSnapshot(**{**before.__dict__, "status": status, "broker_status": status.value,
                             "filled_qty": Decimal(filled), "avg_fill_price": Decimal("27.1"),
                             **changes})
    return diff(before, after, detected_at=NOW).events[-1]


def deliver(notifier: Notifier, *items: OrderEvent | Message,
            clock: VirtualClock | None = None) -> list[Exception | None]:
    """Send each item in order (events or messages); close the notifier whatever happens.

    Runs on a virtual-time loop (``clock``, else a fresh one): pacing waits take no real
    time, so every time limit on real I/O must be at least ``clock.jump_below``.
    """
    async def main() -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        try:
            for item in items:
                try:
                    if isinstance(item, Message):
                        await notifier.send_message(item)
                    else:
                        await notifier.send(item)
                    outcomes.append(None)
                except Exception as err:  # collected, asserted by the test
                    outcomes.append(err)
        finally:
            await notifier.aclose()
        return outcomes

    return run(main(), clock)


def reveals(err: BaseException, secret: str) -> bool:
    """Whether an error's text, repr, chained errors or formatted traceback hold ``secret``."""
    seen: BaseException | None = err
    while seen is not None:
        if secret in str(seen) or secret in repr(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return secret in "".join(traceback.format_exception(err))


def leaked(caplog: pytest.LogCaptureFixture, secret: str) -> list[str]:
    """Log lines holding ``secret`` (the simulator's own access log is the service's side)."""
    return [r.getMessage() for r in caplog.records
            if secret in r.getMessage() and not r.name.startswith("poller.simulator")]
