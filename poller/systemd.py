"""systemd's notify protocol (sd_notify) with the standard library only.

A small datagram message to ``$NOTIFY_SOCKET``: ``READY=1`` once configuration, credentials and
database are loaded, ``STATUS=…`` one-line summaries, ``WATCHDOG=1`` pings, ``RELOADING=1`` and
``STOPPING=1``. Without ``NOTIFY_SOCKET`` (not under systemd) every call does nothing. Failures
are logged, never raised: the daemon must not die because systemd went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


class Notifier:
    """A connection to systemd's notify socket (a no-op when there is none)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        #: Messages dropped because the socket was full.
        self.dropped = 0
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        elif not address.startswith("/"):
            logger.warning("NOTIFY_SOCKET is neither a path nor an abstract socket; ignoring it")
            return
        self._address = address
        # Non-blocking: a notify socket nobody reads (a stuck or absent systemd) fills up
        # after a few datagrams, and a blocking send would then freeze the event loop.
        self._socket = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)


    @property
    def enabled(self) -> bool:
        """True when running under systemd's notify protocol."""
        return self._socket is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram."""
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("the systemd notify socket is full (nobody reads it); status "
                               "messages are dropped until it drains")
        except OSError as err:
            logger.debug("sd_notify failed: %s", err)

    def ready(self, status: str = "") -> None:
        """Startup (or a reload) finished."""
        self.send("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """A reload started (``Type=notify-reload`` wants the monotonic timestamp)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status``."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Tell systemd we are alive."""
        self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, or None when not asked.

    ``WATCHDOG_PID``, when set, must be our pid (systemd sets it for the main process only).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
