"""Connection leases for instances sharing a PostgreSQL database (issue 16).

Each broker connection (one API key, one rate budget) is polled by one instance at a time:
the one holding its lease row. Why lease rows with an expiry rather than advisory locks: a
session lock lives as long as the TCP session, so a paused process (SIGSTOP, a long GC) or a
half-open connection behind a partition keeps it for minutes and no one takes over; a lease
renewed every third of ``daemon.lease_seconds`` and judged by the database's clock ends
within a stated bound, and its epoch fences the old holder's late commits (the store
refuses them) and its budget (no request starts after the lease's end as this process can
be sure of it: the renewal's send time plus the lease length, less a guard).

The keeper runs one round per period on the store's thread: renew what it holds, take free
or expired leases up to ⌈C / I⌉, hand back extras one per round when another instance joins.
A taken connection is started only after a second write stored this instance's own budget
state, so a third instance taking over after a crash counts every request it made.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from poller.errors import StoreError
from poller.models import iso, utcnow
from poller.ratelimit import LeaseGrant, RateBudget
from poller.records import InstanceInfo, Lease, LeaseRound

logger = logging.getLogger(__name__)

#: Seconds cut from the lease's end when deciding locally that it still holds (clock drift,
#: the time between the database's renewal and our reading the answer).
GUARD = 1.0

DbCall = Callable[..., Awaitable[Any]]


def this_instance() -> InstanceInfo:
    """Who this process is among the instances: host, pid and a random tag (a pid can be
    reused after a restart; the tag keeps two lives of one pid apart)."""
    host = socket.gethostname()
    return InstanceInfo(f"{host}-{os.getpid()}-{secrets.token_hex(2)}", host, os.getpid(),
                        iso(utcnow()) or "")


class LeaseKeeper:
    """Keeps this instance's leases and starts/stops its connections to match.

    :param db: runs a store call on the store's thread (``App.db``).
    :param lease_round: the store's ``lease_round``.
    :param connections: names of the enabled connections of the config.
    :param budget_of: the rate budget of a connection.
    :param start: start polling a connection this instance now holds.
    :param stop: stop polling a connection (lost or handed back).
    """

    def __init__(self, *, db: DbCall, lease_round: Callable[..., LeaseRound],
                 leave: Callable[[str], None], instance: InstanceInfo, ttl: float,
                 connections: Callable[[], Sequence[str]],
                 budget_of: Callable[[str], RateBudget],
                 start: Callable[[str], Awaitable[None]],
                 stop: Callable[[str], Awaitable[None]]) -> None:
        self._db = db
        self._round = lease_round
        self._leave = leave
        self.instance = instance
        self.ttl = ttl
        self.every = ttl / 3
        self._connections = connections
        self._budget_of = budget_of
        self._start = start
        self._stop = stop
        #: connection → epoch of the leases this instance holds and polls.
        self.held: dict[str, int] = {}
        #: connections taken but not started yet (their first own budget write pending).
        self._pending: dict[str, int] = {}
        self._release: list[str] = []
        self.instances = 1
        self.target = 0
        self.last_round: float | None = None
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """The first round now (so the instance knows what it holds before it serves),
        then one every third of the lease."""
        await self.run_round()
        self._task = asyncio.create_task(self._loop(), name="leases")

    async def stop(self) -> None:
        """Stop renewing, stop every held connection, hand all leases back at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self.held):
            await self._stop(name)
            self._budget_of(name).shut_lease()
        self.held.clear()
        try:
            await self._db(self._leave, self.instance.id)
        except StoreError as err:  # the leases expire by themselves
            logger.warning("could not hand the leases back (they expire in %g s): %s",
                           self.ttl, err)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.every)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.run_round()
            except Exception:  # one bad round must never end the leases
                logger.exception("lease round failed unexpectedly")

    async def run_round(self) -> LeaseRound | None:
        """One round: renew, hand back, take; start and stop connections to match."""
        sent = time.monotonic()
        mine = {**self.held, **self._pending}
        grants: dict[str, LeaseGrant] = {
            name: self._budget_of(name).prepare_lease(self.every) for name in mine}
        budgets = {name: json.dumps(g.state, separators=(",", ":"))
                   for name, g in grants.items()}
        release = [n for n in self._release if n in mine]
        try:
            result: LeaseRound = await self._db(
                self._round, self.instance, list(self._connections()), ttl=self.ttl,
                mine=mine, budgets=budgets, release=release)
        except StoreError as err:
            self.failures += 1
            logger.warning("cannot renew the connection leases: %s; polling stops when they "
                           "end (in under %g s) unless the database answers", err, self.ttl)
            return None
        self.failures = 0
        self.last_round = time.monotonic()
        self.instances, self.target = result.instances, result.target
        deadline = sent + self.ttl - GUARD
        for name in result.released:
            self._pending.pop(name, None)
            self.held.pop(name, None)
            logger.info("handed connection %s back (%d instances share %d connections)",
                        name, result.instances, len(self._connections()))
        self._release = [n for n in self._release if n not in result.released]
        for name in result.lost:
            await self._lose(name, result)
        for name, lease in result.held.items():
            if name in self.held:
                self.held[name] = lease.epoch
                self._budget_of(name).apply_lease(grants[name], deadline)
            elif name in self._pending:
                # Our own budget state is stored now: start polling.
                self._pending.pop(name)
                self.held[name] = lease.epoch
                self._budget_of(name).apply_lease(grants[name], deadline)
                await self._start(name)
                logger.info("polling connection %s (lease epoch %d)", name, lease.epoch)
        for name in result.taken:
            lease = result.held[name]
            self._resume_budget(name, lease, result.now)
            self._pending[name] = lease.epoch
        if result.taken:
            self._wake.set()  # store our own budget state now, then start
        await self._plan_release(result)
        return result

    def _resume_budget(self, name: str, lease: Lease, now: float) -> None:
        budget = self._budget_of(name)
        budget.shut_lease()
        try:
            state = json.loads(lease.budget or "{}")
        except ValueError:
            state = {}
        seeded = budget.resume(state if isinstance(state, dict) else {},
                               max(0.0, now - lease.budget_at) if lease.budget_at else 0.0)
        logger.info("took over connection %s (epoch %d); %d recent request(s) of the previous "
                    "holder count against its budget", name, lease.epoch, seeded)

    async def _lose(self, name: str, result: LeaseRound) -> None:
        self._pending.pop(name, None)
        if self.held.pop(name, None) is not None:
            self._budget_of(name).shut_lease()
            await self._stop(name)
            logger.warning("lost the lease of connection %s (another instance holds it now); "
                           "stopped polling it here", name)

    async def _plan_release(self, result: LeaseRound) -> None:
        """Hand back one connection per round while holding more than ⌈C / I⌉ (someone
        joined): stop polling it first, release it in the next round (its lease is still
        ours until then, so nobody polls it while we finish)."""
        if self._release or len(self.held) <= result.target:
            return
        name = sorted(self.held)[-1]
        await self._stop(name)
        self._budget_of(name).shut_lease()
        self._release.append(name)
        self._wake.set()

    def wake(self) -> None:
        """Run a round now."""
        self._wake.set()

    def drop(self, name: str) -> None:
        """A connection left the config (SIGHUP): hand its lease back in the next round
        (the caller stops its polling)."""
        self._pending.pop(name, None)
        if name in self.held and name not in self._release:
            self._release.append(name)
            self._wake.set()

    def view(self) -> dict[str, Any]:
        """For /healthz and status: who we are and what we hold."""
        return {"instance": self.instance.id, "host": self.instance.host,
                "held": dict(sorted(self.held.items())), "instances": self.instances,
                "target": self.target, "lease_seconds": self.ttl,
                "renewal_failures": self.failures}
