"""``poller demo``: the daemon against in-process broker simulators, printing events live.

No accounts and no setup: the simulators listen on loopback, their autopilots place and move
orders, the daemon polls them with a temporary database (or ``--keep-db PATH``, to explore
afterwards with ``poller orders``/``events``) and the console notifier. The demo stops on
Ctrl-C, after ``--duration``, or quietly when the reader of its output goes away
(``poller demo | head``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

from poller.app import App
from poller.compose import validate
from poller.daemon import Lifecycle, serve
from poller.logsetup import Redactor
from poller.plugins import get_plugin_manager
from poller.settings import load_settings
from poller.simulator.base import BrokerSim
from poller.simulator.catalog import SIMULATORS, push_options
from poller.statestore import open_configured

logger = logging.getLogger(__name__)


def demo_config(sims: dict[str, BrokerSim], database: Path) -> dict[str, Any]:
    """The configuration the demo runs with."""
    return {
        "daemon": {"database": str(database), "announce_existing": True},
        "brokers": {f"{kind}-demo": sim.broker_config(f"{kind}-demo")
                    for kind, sim in sims.items()},
        "notifiers": {"console": {"kind": "console"}},
    }


@contextlib.contextmanager
def _database(keep: Path | None) -> Iterator[Path]:
    """The demo's database: ``keep`` (its folder created) or a file in a temporary folder."""
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="poller-demo-") as folder:
        yield Path(folder) / "demo.db"


def reader_gone(fd: int) -> bool:
    """Whether the read end of the pipe on ``fd`` was closed (``| head`` finished).

    ``poll`` reports ``POLLERR`` on a pipe's write end once it has no reader, without writing
    anything; a terminal or a file never reports it."""
    poller = select.poll()
    poller.register(fd, select.POLLERR)
    return any(mask & select.POLLERR for _, mask in poller.poll(0))


class ReaderWatch(logging.Filter):
    """Stops the demo once nobody reads its output (``poller demo | head``), quietly.

    Two ways to notice: a write to stdout fails with a broken pipe (stdout is wrapped), or
    ``poll`` sees the pipe's reader gone while nothing is written. From then on the
    dispatcher's complaints about the closed console are noise nobody asked for, so this
    filter drops them."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        super().__init__()
        self.lifecycle = lifecycle
        self.gone = False

    def left(self) -> None:
        """The reader went away: stop the daemon."""
        self.gone = True
        self.lifecycle.should_exit.set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.gone and record.name.startswith("poller.dispatch"))

    async def poll(self, every: float = 0.25) -> None:
        """Check the pipe every ``every`` seconds until the daemon stops."""
        try:
            fd = sys.stdout.fileno()
        except (OSError, ValueError, AttributeError):  # no real file behind stdout
            return
        while not self.lifecycle.should_exit.is_set():
            if reader_gone(fd):
                self.left()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lifecycle.should_exit.wait(), every)


class _WatchedStdout:
    """``sys.stdout`` that tells the watch when a write finds the reader gone."""

    def __init__(self, stream: TextIO, watch: ReaderWatch) -> None:
        self._stream = stream
        self._watch = watch

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._watch.left()
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._watch.left()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _watching(lifecycle: Lifecycle) -> Iterator[ReaderWatch]:
    """Install the watch on stdout and on the log handlers for the demo's run."""
    watch = ReaderWatch(lifecycle)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(watch)
    original = sys.stdout
    sys.stdout = cast(TextIO, _WatchedStdout(original, watch))
    try:
        yield watch
    finally:
        sys.stdout = original
        for handler in handlers:
            handler.removeFilter(watch)


async def run_demo(*, duration: float | None, seed: int | None, kinds: list[str],
                   redactor: Redactor, every: float = 0.7, keep_db: Path | None = None
                   ) -> int:
    """Start the simulators and the daemon; return the number of events delivered."""
    sims: dict[str, BrokerSim] = {}
    try:
        for index, kind in enumerate(kinds):
            # Each simulator gets its own sequence, so the four do not move in lockstep.
            sim = SIMULATORS[kind](seed=None if seed is None else seed + index,
                                   **push_options(kind))
            sim.start()
            sim.autopilot(every=every)
            sims[kind] = sim
        with _database(keep_db) as database:
            data = demo_config(sims, database)
            settings = load_settings(data=data)
            plugins = get_plugin_manager()
            validated = validate(settings, plugins.registry(), "<demo>")
            redactor.add(validated.secrets())
            store = open_configured(settings.daemon, lock=True)
            try:
                app = App.create(settings, plugins, validated, redactor=redactor, store=store)
                names = ", ".join(f"{kind} at {sim.url}" + (" (pushes)" if push_options(kind)
                                                            else "")
                                  for kind, sim in sims.items())
                print(f"poller demo: simulators {names}; Ctrl-C to stop", flush=True)
                lifecycle = Lifecycle()
                with _watching(lifecycle) as watch:
                    watcher = asyncio.create_task(watch.poll())
                    try:
                        await serve(app, duration=duration, lifecycle=lifecycle)
                    finally:
                        watcher.cancel()
                        await asyncio.gather(watcher, return_exceptions=True)
                delivered = sum(s.delivered for s in app.dispatcher.stats.values()) \
                    if app.dispatcher else 0
            finally:
                store.close()
        kept = f"; database kept at {keep_db} (try: poller orders --database {keep_db})" \
            if keep_db is not None else ""
        print(f"poller demo: {delivered} event(s) delivered{kept}", flush=True)
        return delivered
    finally:
        for sim in sims.values():
            sim.stop()
