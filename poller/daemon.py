"""The daemon's life: start, run until a signal (or a duration), reload on SIGHUP, stop cleanly.

SIGTERM and SIGINT ask for a graceful stop: the poll in progress finishes, deliveries get
``shutdown_grace`` seconds, everything else stays in the outbox for the next start. A second
SIGINT stops waiting for the grace period. SIGHUP re-reads and fully validates the
configuration (and plugin set) before swapping it in; an invalid file keeps the old one.
Under systemd the loop reports READY/RELOADING/STOPPING/STATUS and pings the watchdog, from the
event loop and only while polls complete, so a wedged daemon gets restarted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from poller.api import ApiServer
from poller.app import App, Loaded
from poller.errors import ConfigError
from poller.health import HealthServer
from poller.settings import parse_listen
from poller.systemd import Notifier as SystemdNotifier
from poller.systemd import watchdog_interval

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STATUS_EVERY = 5.0

Reloader = Callable[[], Loaded]


class Lifecycle:
    """Signal handling for one run: ``should_exit`` on the first signal, ``force_exit`` on a
    second SIGINT, ``reload`` on SIGHUP."""

    def __init__(self) -> None:
        self.should_exit = asyncio.Event()
        self.reload = asyncio.Event()
        self.force_exit = False
        self.signals: list[int] = []
        self.on_force: Callable[[], None] | None = None

    def handle(self, sig: int) -> None:
        """Record a signal (installed with ``loop.add_signal_handler``)."""
        self.signals.append(sig)
        if sig == signal.SIGHUP:
            logger.info("received SIGHUP; reloading the configuration")
            self.reload.set()
            return
        if self.should_exit.is_set() and sig == signal.SIGINT:
            self.force_exit = True
            logger.warning("second interrupt: stopping without waiting for deliveries")
            if self.on_force is not None:
                self.on_force()
        else:
            logger.info("received %s; stopping after the poll in progress",
                        signal.Signals(sig).name)
        self.should_exit.set()

    def install(self, *, reload: bool) -> None:
        """Route SIGINT/SIGTERM (and SIGHUP when reloading is possible) to :meth:`handle`."""
        loop = asyncio.get_running_loop()
        for sig in (*HANDLED_SIGNALS, *((signal.SIGHUP,) if reload else ())):
            loop.add_signal_handler(sig, self.handle, sig)

    def uninstall(self) -> None:
        """Restore default handling."""
        loop = asyncio.get_running_loop()
        for sig in (*HANDLED_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def serve(
    app: App,
    *,
    duration: float | None = None,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    lifecycle: Lifecycle | None = None,
    reloader: Reloader | None = None,
    systemd: SystemdNotifier | None = None,
) -> Lifecycle:
    """Start ``app``, run until a signal or ``duration`` seconds, then stop it."""
    lifecycle = lifecycle or Lifecycle()
    systemd = systemd or SystemdNotifier()
    lifecycle.install(reload=reloader is not None)
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    health: HealthServer | None = None
    api: ApiServer | None = None
    try:
        await app.start()
        if app.settings.daemon.health_listen:
            host, port = parse_listen(app.settings.daemon.health_listen)
            health = HealthServer(app, host, port, stale_after=3 * STATUS_EVERY + 5)
            health.start()
            app.health_port = health.port
        daemon = app.settings.daemon
        if daemon.api_listen and daemon.api_token is not None:
            host, port = parse_listen(daemon.api_listen)
            api = ApiServer(daemon.database, daemon.api_token.get_secret_value(), host, port,
                            connections=lambda: set(app.trackers),
                            wake=lambda: _call_soon(loop, app.wake_actions))
            api.start()
            app.api_port = api.port
        logger.info("poller running: %s", app.status_line())
        systemd.ready(app.status_line())
        if on_started is not None:
            result = on_started()
            if result is not None:
                await result
        watchdog = watchdog_interval()
        tick = min(STATUS_EVERY, watchdog) if watchdog else STATUS_EVERY
        last_beat, last_status = -1, ""
        while not lifecycle.should_exit.is_set():
            timeout = tick if deadline is None else min(tick, deadline - loop.time())
            if timeout <= 0:
                break
            waiters = [asyncio.ensure_future(lifecycle.should_exit.wait()),
                       asyncio.ensure_future(lifecycle.reload.wait())]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            if lifecycle.reload.is_set() and not lifecycle.should_exit.is_set():
                lifecycle.reload.clear()
                await _reload(app, reloader, systemd)
            beat = app.heartbeat
            if watchdog and beat != last_beat:
                systemd.watchdog()  # only while polls keep completing
                last_beat = beat
            await app.refresh_backlog()
            status = app.status_line()
            if status != last_status:
                systemd.status(status)
                last_status = status
        systemd.stopping()
        lifecycle.on_force = app.abort
        await app.stop(grace=0.0 if lifecycle.force_exit else None)
    finally:
        if health is not None:
            health.stop()
        if api is not None:
            api.stop()
        lifecycle.uninstall()
        systemd.close()
    return lifecycle


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the loop from another thread (the API server's)."""
    loop.call_soon_threadsafe(callback)


async def _reload(app: App, reloader: Reloader | None, systemd: SystemdNotifier) -> None:
    if reloader is None:
        return
    systemd.reloading()
    try:
        loaded = await asyncio.to_thread(reloader)
    except ConfigError as err:
        for problem in err.problems:
            logger.error("reload refused, keeping the running configuration: %s", problem)
        systemd.ready(app.status_line())
        return
    await app.reconfigure(loaded)
    logger.info("configuration reloaded: %s", app.status_line())
    systemd.ready(app.status_line())
