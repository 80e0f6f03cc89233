"""The daemon's life: start, run until a signal (or a duration), reload on SIGHUP, stop cleanly.

SIGTERM and SIGINT ask for a graceful stop: the poll in progress finishes, deliveries get
``shutdown_grace`` seconds, everything else stays in the outbox for the next start. A second
SIGINT stops waiting for the grace period. SIGHUP re-reads and fully validates the
configuration (and plugin set) before swapping it in; an invalid file keeps the old one.
Under systemd the loop reports READY/RELOADING/STOPPING/STATUS and pings the watchdog, from the
event loop and only while polls complete, so a wedged daemon gets restarted. With
``daemon.heartbeat_url`` each tick also drives the dead-man's switch (:mod:`poller.heartbeat`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from poller.api import ApiServer
from poller.app import App
from poller.compose import Loaded
from poller.errors import ConfigError
from poller.health import HealthServer
from poller.heartbeat import Heartbeat
from poller.logsetup import flush_repeats
from poller.settings import DaemonSettings, parse_listen
from poller.statestore import secret_text
from poller.systemd import Notifier as SystemdNotifier
from poller.systemd import watchdog_interval

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EX_IOERR = 74
STATUS_EVERY = 5.0

Reloader = Callable[[], Loaded]


class Lifecycle:
    """Signal handling for one run: ``should_exit`` on the first signal, ``force_exit`` on a
    second SIGINT, ``reload`` on SIGHUP."""

    def __init__(self) -> None:
        self.should_exit = asyncio.Event()
        self.reload = asyncio.Event()
        self.force_exit = False
        #: What ``poller run`` exits with (74 when the database was taken away under us).
        self.exit_code = 0
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


class Server:
    """One run of the daemon, in uvicorn's shape: :meth:`startup`, :meth:`main_loop` (one
    :meth:`on_tick` every few seconds, reloads on SIGHUP), :meth:`shutdown`."""

    def __init__(self, app: App, *, lifecycle: Lifecycle | None = None,
                 reloader: Reloader | None = None,
                 systemd: SystemdNotifier | None = None) -> None:
        self.app = app
        self.lifecycle = lifecycle or Lifecycle()
        self.reloader = reloader
        self.systemd = systemd or SystemdNotifier()
        self.health: HealthServer | None = None
        self.api: ApiServer | None = None
        #: The dead-man's switch (None without ``daemon.heartbeat_url``).
        self.dead_man: Heartbeat | None = None
        self._watchdog = watchdog_interval()
        self._last_beat = -1
        self._last_status = ""

    async def serve(self, *, duration: float | None = None,
                    on_started: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Start, run until a signal or ``duration`` seconds, then stop."""
        self.lifecycle.install(reload=self.reloader is not None)
        try:
            await self.startup()
            if on_started is not None:
                result = on_started()
                if result is not None:
                    await result
            await self.main_loop(duration)
            await self.shutdown()
        finally:
            if self.dead_man is not None:
                await self.dead_man.aclose()
            if self.health is not None:
                self.health.stop()
            if self.api is not None:
                self.api.stop()
            self.lifecycle.uninstall()
            self.systemd.close()

    async def startup(self) -> None:
        """Start the app and its HTTP servers, tell systemd we are ready, then ping the
        dead-man's switch's ``/start``."""
        app = self.app
        await app.start()
        daemon = app.settings.daemon
        if daemon.health_listen:
            host, port = parse_listen(daemon.health_listen)
            self.health = HealthServer(app, host, port, stale_after=3 * STATUS_EVERY + 5)
            self.health.start()
        if daemon.api_listen and daemon.api_token is not None:
            loop = asyncio.get_running_loop()
            host, port = parse_listen(daemon.api_listen)
            self.api = ApiServer(daemon.database, daemon.api_token.get_secret_value(), host,
                                 port, connections=app.connection_names,
                                 wake=lambda: _call_soon(loop, app.wake_actions),
                                 password=secret_text(daemon.database_password))
            self.api.start()
        # The outbox backlog is read at ticks; without this the first lines would say
        # "0 queued" while hundreds wait from the last run.
        await app.refresh_backlog()
        logger.info("poller running: %s", app.status_line())
        self.systemd.ready(app.status_line())
        self.dead_man = Heartbeat.from_settings(daemon, app, app.redactor)
        if self.dead_man is not None:
            self.dead_man.start()

    async def main_loop(self, duration: float | None) -> None:
        """Tick until a signal (or the duration is over); reload on SIGHUP."""
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        tick = min(STATUS_EVERY, self._watchdog) if self._watchdog else STATUS_EVERY
        lifecycle = self.lifecycle
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
                await self.reload()
            await self.on_tick()

    async def on_tick(self) -> None:
        """Check the database is still ours; ping the watchdog while polls keep completing
        and the dead-man's switch while the daemon is healthy; refresh the status line."""
        problem = await self.app.db(self.app.store.identity_problem)
        if problem is not None:
            logger.error("%s; stopping, since another poller could now start beside this one "
                         "(restore the file, then start poller again)", problem)
            self.lifecycle.exit_code = EX_IOERR
            self.lifecycle.should_exit.set()
            return
        beat = self.app.heartbeat
        if self._watchdog and beat != self._last_beat:
            self.systemd.watchdog()  # only while polls keep completing
            self._last_beat = beat
        if self.dead_man is not None:
            self.dead_man.tick()  # at most starts a request in the background
        flush_repeats()  # a kind of line that fell silent still gets its count told
        await self.app.refresh_backlog()
        status = self.app.status_line()
        if status != self._last_status:
            self.systemd.status(status)
            self._last_status = status

    async def reload(self) -> None:
        """Re-read and fully validate the configuration; keep the running one if it is bad."""
        if self.reloader is None:
            return
        self.systemd.reloading()
        try:
            loaded = await asyncio.to_thread(self.reloader)
        except ConfigError as err:
            for problem in err.problems:
                logger.error("reload refused, keeping the running configuration: %s", problem)
            self.systemd.ready(self.app.status_line())
            return
        before = self.app.settings.daemon
        await self.app.reconfigure(loaded)
        await self._renew_heartbeat(before)
        logger.info("configuration reloaded: %s", self.app.status_line())
        self.systemd.ready(self.app.status_line())

    async def _renew_heartbeat(self, before: DaemonSettings) -> None:
        """A reload changed the dead-man's switch: the old one stops, the new one starts."""
        after = self.app.settings.daemon
        if (before.heartbeat_url, before.heartbeat_interval) == \
                (after.heartbeat_url, after.heartbeat_interval):
            return
        if self.dead_man is not None:
            await self.dead_man.aclose()
        self.dead_man = Heartbeat.from_settings(after, self.app, self.app.redactor)
        if self.dead_man is not None:
            self.dead_man.start()

    async def shutdown(self) -> None:
        """Tell systemd, then stop the app (a second SIGINT stops waiting for deliveries).

        The dead-man's switch just goes quiet: a clean stop must not page anyone.
        """
        self.systemd.stopping()
        if self.dead_man is not None:
            await self.dead_man.aclose()
        self.lifecycle.on_force = self.app.abort
        await self.app.stop(grace=0.0 if self.lifecycle.force_exit else None)
        flush_repeats(every=True)


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
    server = Server(app, lifecycle=lifecycle, reloader=reloader, systemd=systemd)
    await server.serve(duration=duration, on_started=on_started)
    return server.lifecycle


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the loop from another thread (the API server's)."""
    loop.call_soon_threadsafe(callback)
