"""The daemon's life: start, run until a signal (or a duration), stop cleanly (uvicorn-style).

SIGTERM and SIGINT ask for a graceful stop: the poll in progress finishes, deliveries get
``shutdown_grace`` seconds, everything else stays in the outbox for the next start. A second
SIGINT stops waiting for the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from poller.app import App

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Lifecycle:
    """Signal handling for one run: ``should_exit`` on the first signal, ``force_exit`` on a
    second SIGINT."""

    def __init__(self) -> None:
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.signals: list[int] = []
        self.on_force: Callable[[], None] | None = None

    def handle(self, sig: int) -> None:
        """Record a signal (installed with ``loop.add_signal_handler``)."""
        self.signals.append(sig)
        if self.should_exit.is_set() and sig == signal.SIGINT:
            self.force_exit = True
            logger.warning("second interrupt: stopping without waiting for deliveries")
            if self.on_force is not None:
                self.on_force()
        else:
            logger.info("received %s; stopping after the poll in progress",
                        signal.Signals(sig).name)
        self.should_exit.set()

    def install(self) -> None:
        """Route SIGINT/SIGTERM to :meth:`handle` on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle, sig)

    def uninstall(self) -> None:
        """Restore default handling."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)


async def serve(
    app: App,
    *,
    duration: float | None = None,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    lifecycle: Lifecycle | None = None,
) -> Lifecycle:
    """Start ``app``, run until a signal or ``duration`` seconds, then stop it."""
    lifecycle = lifecycle or Lifecycle()
    lifecycle.install()
    try:
        await app.start()
        logger.info("poller running: %s", app.status_line())
        if on_started is not None:
            result = on_started()
            if result is not None:
                await result
        try:
            await asyncio.wait_for(lifecycle.should_exit.wait(), timeout=duration)
        except TimeoutError:
            pass
        lifecycle.on_force = app.abort
        await app.stop(grace=0.0 if lifecycle.force_exit else None)
    finally:
        lifecycle.uninstall()
    return lifecycle
